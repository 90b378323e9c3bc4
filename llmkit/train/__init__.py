"""Stage 2b, training: a QLoRA/LoRA adapter (or a full fine-tune) with transformers' Trainer, rerunnable.

Public entry: `train(cfg)`; `summary_table(output_dir)` is what `llmkit train` prints at the end.
"""

from llmkit.train.report import summary_table
from llmkit.train.run import train

__all__ = ["summary_table", "train"]
