"""Files the tool ships (package data), found the same way in a checkout and in an installed copy.

axolotl_configs/ and docker/ are the packages `llmkit.axolotl_configs` and `llmkit.docker` (see pyproject.toml),
so importlib.resources finds them wherever llmkit is installed, and commands work from any folder.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _package_dir(package: str) -> Path:
    return Path(str(files(package)))  # a folder on disk: neither package is ever zipped


CONFIGS_DIR = _package_dir("llmkit.axolotl_configs")
DOCKER_DIR = _package_dir("llmkit.docker")
DEFAULT_CONFIG = CONFIGS_DIR / "smollm2-135m-qlora.yml"  # the embedded default: what `make submission` trains
