"""Stage 3, merging: adapters folded into 16-bit base weights shard by shard, verified, optionally published.

Public entry: `merge_command(...)` (what `llmkit merge` runs); `report_table` is what it prints.
"""

from llmkit.merge.command import merge_command, report_table

__all__ = ["merge_command", "report_table"]
