"""Reading a row's fields for a prompt builder, with errors that name the field."""

from __future__ import annotations

import math
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
        self.problem = problem


IS_NULL = "is null"  # the problem of a field that is there with no value (JSON null, a CSV's empty cell)


def absent(row: RawRow, field: str, where: str = "") -> FieldError:
    """The error for a field with no value: missing from the row, or there and null (told apart: the fix differs)."""
    return FieldError(where + field, IS_NULL if field in row else "is missing")


def text_field(row: RawRow, field: str, *, optional: bool = False, where: str = "") -> str:
    """The string in `row[field]`; a missing field (or null) is an error unless optional, then it is "".

    A number is taken as its text, as axolotl formats it into the prompt: parquet and JSON files hold answers
    like 1 or 2.5 as numbers (CSV columns are read as text, `sources`). A bool, list or object is an error.
    `where` prefixes the field's name in errors for nested fields (e.g. "messages[2].").
    """
    value = row.get(field)
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' empty number cell
        if optional:
            return ""
        raise absent(row, field, where)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise FieldError(where + field, f"must be a string, got {type(value).__name__} {str(value)[:60]!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON's "\ud800": no tokenizer can read it
        raise FieldError(where + field, f"is not valid text: an unpaired surrogate at character {err.start}") from None
    return value
