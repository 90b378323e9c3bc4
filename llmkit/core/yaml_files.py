"""The YAML files a user writes (a config, a weighted-merge file, a task list), read one way: the same words for a
file that is empty, a list or not YAML, whichever command reads it."""

from __future__ import annotations

from pathlib import Path

import yaml


class YamlFileError(ValueError):
    """A YAML file that holds no mapping: `problem` says why. `unreadable`: the file itself could not be read (missing,
    a folder, no permission), which its keys cannot fix; otherwise what it holds is wrong."""

    def __init__(self, problem: str, *, unreadable: bool = False):
        self.problem, self.unreadable = problem, unreadable
        super().__init__(problem)


def read_mapping(path: Path, what: str, example: str) -> tuple[dict, str]:
    """The mapping a YAML file holds, and its text; `what` names the file's kind ("a config") and `example` one of
    its keys ("base_model: ..."), for the messages.

    Raises:
        YamlFileError: the file cannot be read, is not UTF-8 or YAML, is empty, or holds something else (a list).
    """
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except OSError as err:
        raise YamlFileError(
            "it is a folder, not a file" if path.is_dir() else str(err.strerror or err), unreadable=True
        ) from None
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise YamlFileError(f"not UTF-8 text (byte {byte:#04x} at offset {err.start})") from None
    except yaml.YAMLError as err:
        raise YamlFileError(f"not valid YAML: {err}") from None
    if raw is None:
        raise YamlFileError(f"the file is empty: {what} is a mapping of keys to values ({example})")
    if not isinstance(raw, dict):
        found = {"str": "a single word or text", "list": "a list"}.get(type(raw).__name__, type(raw).__name__)
        raise YamlFileError(f"expected a mapping of keys to values ({example}), got {found}")
    return raw, text
