"""Stage 2a, the data: a config's datasets as prompts, tokens, masks and packed sequences (cached).

Public entry: `build_datasets(cfg, tokenizer)`.
"""

from llmkit.data.pipeline import DataError, build_datasets, stats_table

__all__ = ["DataError", "build_datasets", "stats_table"]
