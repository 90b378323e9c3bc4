"""Stage 2a, the data: a config's datasets as prompts, tokens, masks and packed sequences (cached).

Public entry: `build_datasets(cfg, tokenizer)`, with the tokenizer of `llmkit.data.tokenizer.load_tokenizer(cfg)`.
The pipeline (and with it datasets, pandas and pyarrow, ~130 MB) is imported on first use, so that
`llmkit.data.prompts` alone (the merge's verification prompt) stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["DataError", "build_datasets", "epoch_tokens", "row_texts", "spec_problems", "stats_table"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("llmkit.data.pipeline"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
