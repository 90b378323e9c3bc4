"""The common base every stage stands on: the challenge's facts, model shapes and memory, the dtype/device rule,
where models come from, files and processes. It imports no stage, and the submission image ships the parts the
server uses, so it stays light."""
