"""Reading a dataset spec's rows (local json/jsonl/parquet/csv/arrow, a local folder, or a hub dataset) through
`datasets`, with errors that name the file, the row and the field."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset, load_dataset

from llmkit.config.sections import LOCAL_DATA_SUFFIXES, DatasetSpec
from llmkit.data.fields import RowError
from llmkit.data.rows import RawColumns, RawRow

if TYPE_CHECKING:
    from llmkit.config.schema import AxolotlConfig

RowCheck = Callable[[RawRow], object]  # raises RowError for a row its dataset type cannot use


class DataError(ValueError):
    """Bad training data; the message names the file (or hub dataset), the row (counted from 1) and the field."""


def source_name(spec: DatasetSpec) -> str:
    """How errors and stats name a dataset: its local path, or 'hub dataset <id>'."""
    local = Path(spec.path).expanduser()
    return str(local) if local.exists() else f"hub dataset {spec.path}"


def load_rows(spec: DatasetSpec, check: RowCheck) -> Dataset:
    """Read one dataset spec's rows (each a `RawRow`); `check` (what the type does with a row) finds the bad row in
    a JSON file that `datasets` cannot read."""
    local = Path(spec.path).expanduser()
    if spec.missing_local_path:
        raise DataError(f"{spec.path}: no such file or folder")
    try:
        rows = _load(spec, local)
    except DataError:
        raise
    except Exception as err:  # datasets wraps parse errors of every format in its own exception types
        if local.is_file() and local.suffix.lower() in (".json", ".jsonl"):
            find_bad_json_row(local, check)
        raise DataError(f"{source_name(spec)}: cannot be read: {type(err).__name__}: {err}") from err
    return rows  # never empty: datasets raises for a split with no rows (caught above)


def _load(spec: DatasetSpec, local: Path) -> Dataset:
    ds_type = spec.ds_type.value if spec.ds_type else None
    split = spec.split or "train"
    if local.is_file():
        builder = ds_type or LOCAL_DATA_SUFFIXES.get(local.suffix.lower())
        if builder is None:
            raise DataError(f"{local}: unknown file type {local.suffix!r}; set ds_type (json, parquet, csv)")
        return load_dataset(builder, data_files=str(local), split="train")
    if local.is_dir() and ds_type:
        return load_dataset(ds_type, data_dir=str(local), data_files=spec.data_files, split=split)
    if local.is_dir():
        return load_dataset(str(local), data_files=spec.data_files, split=split)
    return load_dataset(spec.path, name=spec.name, data_files=spec.data_files, split=split)


def _json_rows(path: Path) -> list[Any]:
    """The file's top-level values, one per row: any JSON (a row that is no object is what the caller reports)."""
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


def find_bad_json_row(path: Path, check: RowCheck) -> None:
    """Arrow's JSON reader fails on a row that is no object without saying which; find the row and raise for it.

    Rows are checked in order, with the type's own check too, so the first bad row is the one reported. Returns
    when no row is bad by these rules (e.g. a key repeated in one object): the caller reports datasets' error.
    """
    rows = _json_rows(path)
    if not rows:
        raise DataError(f"{path}: the dataset is empty (no rows)")
    for index, row in enumerate(rows):
        where = f"{path}: row {index + 1}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: must be an object, got {type(row).__name__}")
        try:
            check(row)
        except RowError as err:
            raise DataError(f"{where}: {err}") from None


def convert_rows(
    rows: Dataset,
    source: str,
    convert: Callable[[RawRow], list[dict[str, Any]]],
    columns: tuple[str, ...],
    desc: str,
    fingerprint: str | None = None,
) -> Dataset:
    """Each raw row through `convert` (one row in, any number of rows with `columns` out), batched through
    `datasets`; a row `convert` cannot use is a DataError naming the source and the row (counted from 1)."""

    def convert_batch(batch: RawColumns, indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {column: [] for column in columns}
        for index, values in zip(indices, zip(*batch.values(), strict=True), strict=True):
            try:
                made = convert(dict(zip(batch, values, strict=True)))
            except RowError as err:
                raise DataError(f"{source}: row {index + 1}: {err}") from None
            for row in made:
                for column in columns:
                    out[column].append(row[column])
        return out

    return rows.map(
        convert_batch,
        batched=True,
        with_indices=True,
        remove_columns=rows.column_names,
        desc=desc,
        load_from_cache_file=False,
        new_fingerprint=fingerprint,
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def row_texts(cfg: AxolotlConfig) -> Iterator[tuple[str, int, str]]:
    """(dataset, row number from 0, every string of the row joined) for every row of every configured dataset, as
    the files hold them (what `llmkit decontaminate` compares with HELM's instances)."""
    from rich.progress import track

    for spec in cfg.datasets:
        source = source_name(spec)
        rows = load_rows(spec, check=lambda row: None)  # any row shape: only its strings are read
        for index, row in enumerate(track(rows, description=f"Reading {Path(source).name}", transient=True)):
            yield source, index, " ".join(_strings(row))
