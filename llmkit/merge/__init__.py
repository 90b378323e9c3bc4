"""Stage 3, merging: adapters folded into 16-bit base weights shard by shard, verified, optionally published.

Public entry: `merge_command(...)` (what `llmkit merge` runs); `print_report` is what it prints.
"""

from llmkit.merge.command import merge_command, print_report

__all__ = ["merge_command", "print_report"]
