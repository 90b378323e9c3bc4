"""Makes axolotl_configs/ the package data `llmkit.axolotl_configs`: the embedded default config and its data ship
with the installed tool (read with importlib.resources), so `llmkit` works from any folder."""
