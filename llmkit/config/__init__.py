"""Stage 1, the config: an axolotl YAML file as one typed `AxolotlConfig`, its keys meaning what they mean in axolotl.

Public entry: `load_config(path)`; `plan(cfg)` (plan.py) is what `llmkit validate` prints (llmkit/train/validate.py).
"""

from llmkit.config.schema import AxolotlConfig, ConfigError, load_config

__all__ = ["AxolotlConfig", "ConfigError", "load_config"]
