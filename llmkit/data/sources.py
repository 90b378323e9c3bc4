"""Reading a dataset spec's rows (local json/jsonl/parquet/csv/arrow, a local folder, or a hub dataset) through
`datasets`, with errors that name the file, the row and the field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset

from llmkit.data.prompts import FieldError

_BUILDER_BY_SUFFIX = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


class DataError(ValueError):
    """Bad training data; the message names the file (or hub dataset), the row (counted from 1) and the field."""


def source_name(spec: Any) -> str:
    """How errors and stats name a dataset: its local path, or 'hub dataset <id>'."""
    local = Path(spec.path).expanduser()
    return str(local) if local.exists() else f"hub dataset {spec.path}"


def load_rows(spec: Any, build: Callable[[dict, Any], Any] | None = None) -> Dataset:
    """Read one dataset spec's rows; `build` (the type's prompt builder) locates bad rows when a JSON file fails."""
    local = Path(spec.path).expanduser()
    data_files = getattr(spec, "data_files", None)
    split = getattr(spec, "split", None) or "train"
    ds_type = getattr(spec, "ds_type", None)
    ds_type = getattr(ds_type, "value", ds_type)  # the config's enum, or a plain string
    if not local.exists() and (spec.path.startswith((".", "/", "~")) or local.suffix.lower() in _BUILDER_BY_SUFFIX):
        raise DataError(f"{spec.path}: no such file or folder")  # a local path, not a hub id: don't ask the hub
    try:
        if local.is_file():
            builder = ds_type or _BUILDER_BY_SUFFIX.get(local.suffix.lower())
            if builder is None:
                raise DataError(f"{local}: unknown file type {local.suffix!r}; set ds_type (json, parquet, csv)")
            rows = load_dataset(builder, data_files=str(local), split="train")
        elif local.is_dir() and ds_type:
            rows = load_dataset(ds_type, data_dir=str(local), data_files=data_files, split=split)
        elif local.is_dir():
            rows = load_dataset(str(local), data_files=data_files, split=split)
        else:
            rows = load_dataset(spec.path, name=getattr(spec, "name", None), data_files=data_files, split=split)
    except DataError:
        raise
    except Exception as err:  # datasets wraps parse errors of every format in its own exception types
        if local.is_file() and local.suffix.lower() in (".json", ".jsonl"):
            find_bad_json_row(local, spec, build)
        raise DataError(f"{source_name(spec)}: cannot be read: {type(err).__name__}: {err}") from err
    if len(rows) == 0:
        raise DataError(f"{source_name(spec)}: the dataset is empty (no rows)")
    return rows


def _json_rows(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
        return rows if isinstance(rows, list) else [rows]
    except json.JSONDecodeError:
        pass
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: row {len(rows) + 1} (line {number}): not valid JSON: {err}") from None
    return rows


def find_bad_json_row(path: Path, spec: Any, build: Callable[[dict, Any], Any] | None) -> None:
    """Arrow's JSON reader fails on rows of another shape without saying which; find the row and raise for it."""
    rows = _json_rows(path)
    if not rows:
        raise DataError(f"{path}: the dataset is empty (no rows)")
    kinds: dict[str, str] = {}  # field -> JSON type of the first row that set it
    for index, row in enumerate(rows):
        where = f"{path}: row {index + 1}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: must be an object, got {type(row).__name__}")
        if build is not None:
            try:
                build(row, spec)
            except FieldError as err:
                raise DataError(f"{where}: {err}") from None
        for key, value in row.items():
            if value is None:
                continue
            kind = type(value).__name__
            if kinds.setdefault(key, kind) != kind:
                raise DataError(f"{where}: field '{key}' is a {kind}; earlier rows hold a {kinds[key]} there")
