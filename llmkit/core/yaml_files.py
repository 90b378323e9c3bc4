"""The YAML files a user writes (a config, a weighted-merge file, a task list), read one way: the same words for a
file that is empty, a list or not YAML, whichever command reads it."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmkit.core.errors import key_path

# How deep a file's mappings and lists may nest: a config nests five levels at most. PyYAML reads nesting by
# recursion, so thousands of levels stopped every command on a RecursionError traceback.
MAX_NESTING = 100
# The values walked to look for a cycle; past them an alias bomb is left to its reader's count (see load_config).
_WALKED = 200_000


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
    except RecursionError:
        raise YamlFileError(f"nested too deeply: more than {MAX_NESTING} levels of mappings or lists") from None
    if raw is None:
        raise YamlFileError(f"the file is empty: {what} is a mapping of keys to values ({example})")
    if not isinstance(raw, dict):
        found = {"str": "a single word or text", "list": "a list"}.get(type(raw).__name__, type(raw).__name__)
        raise YamlFileError(f"expected a mapping of keys to values ({example}), got {found}")
    if problem := _nesting_problem(raw):
        raise YamlFileError(problem)
    return raw, text


def _nesting_problem(raw: object) -> str | None:
    """Why `raw` cannot be walked as a tree: a list or mapping that holds itself (`loop: &l [*l]`, which validation
    expanded without end), or nesting deeper than MAX_NESTING; None when it can."""
    pending: list[tuple[object, tuple[str | int, ...], frozenset[int]]] = [(raw, (), frozenset())]
    walked = 0
    while pending and walked < _WALKED:
        value, where, above = pending.pop()
        walked += 1
        if not isinstance(value, dict | list):
            continue
        if id(value) in above:
            return f"{key_path(where)}: a YAML alias inside its own anchor (a cycle), which holds itself without end"
        if len(above) > MAX_NESTING:
            return f"{key_path(where[:1])}: nested too deeply: more than {MAX_NESTING} levels of mappings or lists"
        inside = above | {id(value)}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        pending.extend((item, (*where, key), inside) for key, item in items)
    return None
