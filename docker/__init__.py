"""Makes docker/ the package data `llmkit.docker`: the installed tool reads its Dockerfile template from here."""
