"""Stage 1, the config: an axolotl YAML file as one typed `AxolotlConfig`, its keys meaning what they mean in axolotl.

Public entry: `load_config(path)`; `validate(path)` prints the plan for `llmkit validate`.
"""

from llmkit.config.schema import AxolotlConfig, ConfigError, load_config
from llmkit.config.validate import validate

__all__ = ["AxolotlConfig", "ConfigError", "load_config", "validate"]
