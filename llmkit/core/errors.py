"""pydantic's validation errors as people read them: the key path they wrote, what is wrong, what they gave.

One reading for every file and request the project validates: configs, task lists, weighted-merge files, the
server's flags and its wire models.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable
from enum import Enum

from pydantic import ValidationError
from pydantic_core import ErrorDetails


class UsageError(ValueError):
    """Command-line input a command cannot take, found past click's parsing: a flag's value, flags that do not go
    together, nothing to work on. The CLI says it in one `Error:` line and exits 2, as click does for its own usage
    errors and the server for a flag it cannot take; what a command cannot read, load, write or do exits 1. A stage's
    own error class joins it as a second base where its callers catch that class."""


# pydantic puts the branch of a union it tried into `loc` (`str`, `list[int]`, `function-after[...]`, a model's
# class name such as `TextPart`): not a key anyone wrote. Keys and wire fields are lower-case words.
_UNION_BRANCH = re.compile(r"^(bool|int|float|str|bytes|none|list|dict|[a-z-]+\[.*\]|[A-Z]\w*)$")


def headline(err: BaseException) -> str:
    """An exception's first line (huggingface_hub's messages run to several), or its type where it says nothing."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_union_branch(part: str | int) -> bool:
    return isinstance(part, str) and bool(_UNION_BRANCH.match(part))


def error_message(error: ErrorDetails) -> str:
    """pydantic's message for one error, without the "Value error, " it puts before a validator's own words."""
    return error["msg"].removeprefix("Value error, ")


def key_path(loc: tuple[str | int, ...]) -> str:
    """`('datasets', 0, 'str', 'type')` as `datasets[0].type`; empty for the whole document."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not is_union_branch(part):
            path += f".{part}" if path else part
    return path


def problems(err: ValidationError, key: Callable[[str], str] = str) -> list[str]:
    """One line per key path, `key(path): message (got value)`; the branches of a union are joined with "; or".

    A rule across keys (an empty path) names its keys itself; a mapping's value is not repeated back.
    """
    messages: dict[str, list[str]] = {}
    inputs: dict[str, object] = {}
    for error in err.errors(include_url=False):
        path = key_path(error["loc"])
        messages.setdefault(path, []).append(error_message(error) + _list_hint(error))
        inputs.setdefault(path, error.get("input"))
    lines = []
    for path, said in messages.items():
        text = "; or ".join(dict.fromkeys(said))
        if not path:
            lines.append(text)
            continue
        given = inputs[path]
        got = "" if isinstance(given, dict) else f" (got {short_repr(given)})"
        lines.append(f"{key(path)}: {text}{got}")
    return lines


def _list_hint(error: ErrorDetails) -> str:
    """How to write a list where a mapping was given: YAML's `- ` before each entry is what is missing (`datasets:`
    with its one entry's keys indented under it, no dash, is a common slip)."""
    given = error.get("input")
    if error["type"] != "list_type" or not isinstance(given, dict) or not given:
        return ""
    first = next(iter(given))
    return f", not a mapping: write `- ` before each entry (`- {first}: ...` where this mapping is one entry)"


def shorten(text: str, limit: int = 120) -> str:
    """A value's text as an error repeats it: at most `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: object, limit: int = 120) -> str:
    """`repr(value)` in at most `limit` characters, without walking all of a huge value: a YAML alias bomb's
    billion nested items would take minutes and gigabytes to repr in full. An enum member as the user wrote it,
    its value (a rule checked after parsing sees `Quantization.int8`, where `int8` was typed)."""
    value = value.value if isinstance(value, Enum) else value
    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxlist, bounded.maxdict, bounded.maxtuple, bounded.maxset = 3, 8, 8, 8, 8
    bounded.maxstring = bounded.maxother = 2 * limit  # its cut is mid-string; `shorten` cuts the end
    return shorten(bounded.repr(value), limit)
