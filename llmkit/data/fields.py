"""Reading a row's fields for a prompt builder, with errors that name the field."""

from __future__ import annotations

from collections.abc import Callable

from llmkit.config.sections import DatasetSpec
from llmkit.data.rows import Parts, RawRow

Builder = Callable[[RawRow, DatasetSpec], Parts]


class RowError(ValueError):
    """A row its dataset type cannot use; the loader adds the file and the row to the message."""


class FieldError(RowError):
    """A row lacks a field or holds the wrong type there."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}' {problem}")
        self.field = field


def text_field(row: RawRow, field: str, *, optional: bool = False, where: str = "") -> str:
    """The string in `row[field]`; a missing field (or null) is an error unless optional, then it is "".

    `where` prefixes the field's name in errors for nested fields (e.g. "messages[2].").
    """
    value = row.get(field)
    if value is None:
        if optional:
            return ""
        raise FieldError(where + field, "is missing")
    if not isinstance(value, str):
        raise FieldError(where + field, f"must be a string, got {type(value).__name__} {str(value)[:60]!r}")
    return value
