"""llmkit: fine-tune with QLoRA from axolotl configs, merge, serve HELM's API, package challenge submissions.

The stages, in order: llmkit.config, llmkit.data, llmkit.train, llmkit.merge, llmkit.server, llmkit.submit,
llmkit.helm_eval, on the common base llmkit.core; llmkit.cli is the command line (`llmkit`).
"""
