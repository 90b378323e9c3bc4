"""`python -m llmkit`: the `llmkit` command (what accelerate launches under DDP)."""

from llmkit.entry import main

main()
