"""Stage 2b, training: a QLoRA/LoRA adapter (or a full fine-tune) with transformers' Trainer, rerunnable.

Public entry: `train(cfg)`; `print_summary(output_dir, console)` is what `llmkit train` prints at the end.
"""

from llmkit.train.report import print_summary
from llmkit.train.run import train

__all__ = ["print_summary", "train"]
