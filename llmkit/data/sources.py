"""Reading a dataset spec's rows (local json/jsonl/parquet/csv/arrow, a local folder, or a hub dataset) through
`datasets`, with errors that name the file, the row and the field."""

from __future__ import annotations

import codecs
import csv
import glob
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import (
    Dataset,
    DatasetDict,
    Features,
    ReadInstruction,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)
from datasets.data_files import EmptyDatasetError, get_data_patterns
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from llmkit.config.sections import (
    COMPRESSIONS,
    UNREADABLE,
    DatasetSpec,
    DsType,
    data_file_builder,
    data_files_pattern,
    local_data_files,
)
from llmkit.core.files import user_path
from llmkit.data.fields import IS_NULL, FieldError, RowError
from llmkit.data.rows import RawColumns, RawRow

if TYPE_CHECKING:
    from llmkit.config.schema import AxolotlConfig

RowCheck = Callable[[RawRow], object]  # raises RowError for a row its dataset type cannot use

LOG = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad training data; the message names the file (or hub dataset), the row (counted from 1) and the field."""


def split_held_out(rows: Dataset, cfg: AxolotlConfig, what: str = "rows") -> tuple[Dataset, Dataset | None]:
    """(training rows, held-out rows or None): the last val_set_size rows (a count above 1, else a fraction),
    as axolotl holds them out: the rows come here already shuffled with the seed (unless shuffle_merged_datasets
    is false), and are not shuffled again."""
    if not cfg.val_set_size:
        return rows, None
    try:
        parts = rows.train_test_split(test_size=cfg.eval_split_size, shuffle=False)
    except ValueError:  # datasets refuses a split whose training side would be empty
        raise DataError(f"val_set_size {cfg.val_set_size} leaves no training {what} out of {len(rows)}") from None
    return parts["train"], parts["test"]


def source_name(spec: DatasetSpec) -> str:
    """How errors and stats name a dataset: its local path, or 'hub dataset <id>'; with the split when it selects
    rows (`train[:100]`), since row numbers then count within the selection."""
    local = user_path(spec.path)
    name = str(local) if local.exists() else f"hub dataset {spec.path}"
    if any(c in spec.split for c in "[+"):
        name = f"{name} (split {spec.split})"
    return f"{name} (shard {spec.shards_idx} of {spec.shards})" if spec.shards else name


def load_rows(spec: DatasetSpec, check: RowCheck, seed: int, entry: str) -> Dataset:
    """Read one dataset spec's rows (each a `RawRow`), the spec's `split` only, and of those its shard (as axolotl
    takes it: the rows shuffled with `seed`, then datasets' `shard`); `check` (what the type does with a row) finds
    the bad row in a JSON file that `datasets` cannot read. `entry`: where the config lists the spec
    (`datasets[0]`), which an error in one of its keys names.

    Local files are read as axolotl reads them: a file by its suffix (or ds_type), whose one split is "train"
    (slices such as `train[:100]` select from it); a folder written by `save_to_disk` by `load_from_disk`; any
    other folder as `datasets` reads folders.
    """
    local = user_path(spec.path)
    if spec.missing_local_path:
        raise DataError(f"{spec.path}: no such file or folder")
    if problem := _local_key_problem(spec, local):
        raise DataError(f"{entry}.{problem}")
    try:
        rows = _load(spec, local)
    except DataError:
        raise
    except EmptyDatasetError as err:  # the only case of it here: a local folder (a hub dataset's is a hub id)
        raise DataError(f"{entry}.path: {local}: holds no data file datasets reads ({err})") from None
    except Exception as err:  # datasets wraps parse errors of every format in its own exception types
        if local.is_file() and _builder(spec, local) == "json":
            find_bad_json_row(local, check)
        # `path: json` with local data_files, as axolotl's examples write: their rows are checked as path's would
        # be, and the files named; the error named only "hub dataset json", and datasets' wrapper without its cause
        files = [] if local.exists() else [user_path(f) for f in spec.data_files or [] if user_path(f).is_file()]
        for file in files:
            if (spec.ds_type.value if spec.ds_type else spec.path) == "json":
                find_bad_json_row(file, check)
        name = f"{source_name(spec)} data_files {', '.join(map(str, files))}" if files else source_name(spec)
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        why = f" ({type(cause).__name__}: {cause})" if cause is not err else ""
        raise DataError(f"{name}: cannot be read: {type(err).__name__}: {err}{why}") from err
    if not len(rows):  # a slice past the end (datasets refuses a file with no rows itself)
        raise DataError(f"{source_name(spec)}: the dataset is empty (no rows)")
    if len(rows) == 1 and local.is_file() and _builder(spec, local) == "json":
        _refuse_wrapped_rows(local, rows[0], check)
    if spec.shards:
        if spec.shards_idx >= len(rows):  # more shards than rows: shard i holds row i, the later ones nothing
            raise DataError(f"{source_name(spec)}: the shard is empty ({len(rows)} rows in {spec.shards} shards)")
        rows = rows.shuffle(seed=seed).shard(num_shards=spec.shards, index=spec.shards_idx)
    return rows


def _local_key_problem(spec: DatasetSpec, local: Path) -> str | None:
    """A local dataset's `split` or `data_files` entry that selects nothing there (`split: <problem>`), said by its
    key before datasets is asked: its errors named the file alone (or "hub dataset json"). None for a hub dataset,
    and where the keys select something."""
    if local.is_file() and spec.split != "train":
        try:  # a local file's one split is train; the row count does not matter to the split's names
            ReadInstruction.from_spec(spec.split).to_absolute({"train": 1})
        except (ValueError, KeyError, AssertionError) as err:
            why = "a local file has one split, train (train[:100] or train[:10%] select rows of it)"
            if spec.split == "test":  # what a test_datasets entry naming no split asks for: it is easily missed
                why += "; a test_datasets entry that names no split asks for test, as in axolotl: write split: train"
            return f"split: {spec.split}: {why}: {err}"
    if local.is_file() or not spec.read_here:
        return None  # a local file's data_files are not read; a hub dataset's name files in its repository
    folder = local if local.is_dir() else None
    for index, entry in enumerate(spec.data_files or []):
        if "://" not in entry and not local_data_files([entry], folder):
            where = f" in {folder}" if folder else ""
            return f"data_files[{index}]: {entry}: no such file{where}"
    return None


def _builder(spec: DatasetSpec, local: Path) -> str | None:
    """The `datasets` builder of a local file: ds_type, else the suffix's."""
    return spec.ds_type.value if spec.ds_type else data_file_builder(local.name)


@contextmanager
def open_data_file(path: Path, mode: str = "rb", **text: Any) -> Iterator[Any]:
    """A data file, decompressed where its suffix names a compression (its text is checked and read as datasets
    reads it); `text`: open()'s encoding, errors... A file that cannot be read or decompressed, at opening or while
    it is read, is a DataError naming it (the exception escaped as a traceback, or as click's bare "Aborted.").
    """
    try:
        with COMPRESSIONS.get(path.suffix.lower(), open)(path, mode, **text) as file:
            yield file
    except UNREADABLE as err:
        raise DataError(f"{path}: cannot be read: {type(err).__name__}: {err}") from None


def _load(spec: DatasetSpec, local: Path) -> Dataset:
    ds_type = spec.ds_type.value if spec.ds_type else None
    split = spec.split
    if local.exists() and not (local.is_file() or local.is_dir()):  # /dev/zero would be read forever
        raise DataError(f"{spec.path}: not a file or folder (a device, a pipe or a socket)")
    if local.is_file():
        builder = _builder(spec, local)
        if builder is None:
            kinds = ", ".join(kind.value for kind in DsType)
            raise DataError(f"{local}: unknown file type {local.suffix!r}; set ds_type ({kinds})")
        if builder in ("json", "csv", "text"):
            _check_utf8(local)  # Arrow reads other bytes into its strings; reading a row then fails mid-training
        features = _csv_text_features(local) if builder == "csv" else None
        with _json_failure_unlogged():
            return load_dataset(builder, data_files=_literal(local), split=split, features=features)
    if local.is_dir() and not spec.data_files and (saved := _saved_dataset(local)) is not None:
        return _select_split(saved, split)
    if local.is_dir() and ds_type:
        files = _folder_files(local, spec.data_files)
        return load_dataset(ds_type, data_dir=_literal(local), data_files=files, split=split)
    if local.is_dir():
        return load_dataset(str(local), data_files=_folder_files(local, spec.data_files), split=split)
    files = [data_files_pattern(f) for f in spec.data_files] if spec.data_files else None
    with _json_failure_unlogged():  # path: json with data_files: load_rows names the bad row
        return load_dataset(spec.path, name=spec.name, data_files=files, split=split, revision=spec.revision)


@contextmanager
def _json_failure_unlogged() -> Iterator[None]:
    """Without datasets' "Failed to load JSON from file ... in row 10" (Arrow's row, counted from 0), logged as it
    raises: `load_rows` says the error itself, naming the row as the file numbers it (`find_bad_json_row`), or with
    datasets' own words where no row is to blame. Printed first, the line named another row than ours."""
    library = logging.getLogger("datasets.packaged_modules.json.json")  # the JSON builder's module logger

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load JSON from file")

    library.addFilter(drop)
    try:
        yield
    finally:
        library.removeFilter(drop)


def _literal(path: Path) -> str:
    """`path` as a `datasets` data-files pattern that matches it alone: datasets globs data_files and a folder's
    path, so `data[v2].jsonl` would read `datav.jsonl` (or nothing)."""
    return glob.escape(str(path))


def _folder_files(folder: Path, data_files: list[str] | None) -> list[str] | dict[str, list[str]] | None:
    """A folder's data_files as patterns under its literal path (`data_files_pattern`); without data_files, None
    (datasets' own reading of the folder, a README's configs included), unless the folder's path holds glob
    characters: then the files datasets' default split patterns find in it."""
    if data_files:
        return [data_files_pattern(f, folder) for f in data_files]
    if not glob.has_magic(str(folder)):
        return None
    found = get_data_patterns(_literal(folder))
    return {str(split): [f"{_literal(folder)}/{pattern}" for pattern in patterns] for split, patterns in found.items()}


def _check_utf8(path: Path) -> None:
    """A text file is UTF-8 throughout, read in 1 MiB pieces; else a DataError naming the line."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with open_data_file(path) as file:
        for piece in iter(lambda: file.read(1 << 20), b""):
            try:
                decoder.decode(piece)
            except UnicodeDecodeError as err:
                line += piece.count(b"\n", 0, max(0, err.start))
                raise DataError(f"{path}: line {line}: not UTF-8 text (byte {err.object[err.start]:#04x})") from None
            line += piece.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}: line {line}: not UTF-8 text (the file ends inside a character)") from None


def _saved_dataset(folder: Path) -> Dataset | DatasetDict | None:
    """The Dataset or DatasetDict that `save_to_disk` wrote in `folder` (axolotl tries this first for a folder);
    None when the folder holds something else (data files for `load_dataset`)."""
    try:
        return load_from_disk(str(folder))
    except FileNotFoundError:  # no state.json / dataset_dict.json: not written by save_to_disk
        return None


def _select_split(saved: Dataset | DatasetDict, split: str) -> Dataset:
    """The rows of `split` (datasets' syntax: `validation`, `train[:100]`, `train[:10%]+test[-5:]`) in what
    `load_from_disk` returned, which has no `split` argument. A lone Dataset is the split "train" (the default)
    and the split it was saved as."""
    if isinstance(saved, DatasetDict):
        splits = dict(saved)
    else:
        splits = {"train": saved, **({str(saved.split): saved} if saved.split else {})}
    wanted = ReadInstruction.from_spec(split).to_absolute({name: len(rows) for name, rows in splits.items()})
    parts = [splits[part.splitname].select(range(part.from_, part.to)) for part in wanted]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _csv_text_features(path: Path) -> Features | None:
    """Every column of a CSV as text: datasets (through pandas) would read a column of numbers as int64, or as
    float64 when a cell is empty, and the prompt would say "1.0" or "7" where the file says "1" or "007"."""
    # utf-8-sig: pandas drops a BOM too
    with open_data_file(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as file:
        header = next(csv.reader(file), [])
    if not header or len(set(header)) < len(header):  # no header row, or repeated names: datasets' own reading
        return None
    return Features({name: Value("string") for name in header})


def _refuse_wrapped_rows(path: Path, row: RawRow, check: RowCheck) -> None:
    """A JSON file that is one object holding the rows (`{"data": [{...}, ...]}`) reads as a single row, whose
    field errors would not say why; when that row is unusable and a list in it holds a usable row, name the
    object's keys and the list instead. (axolotl's `field` key names completion's text column, not this list.)"""
    try:
        check(row)
    except RowError as err:
        for key, value in row.items():
            if isinstance(value, list) and value and isinstance(value[0], dict) and _usable(value[0], check):
                raise DataError(
                    f"{path}: the file holds one JSON object with keys {list(row)}, read as a single row ({err}); "
                    f"the rows look to be the list under '{key}': write that list as the file (a JSON array of "
                    f"rows, or one row per line), e.g. jq '.{key}' {path.name} > rows.json"
                ) from None


def _usable(row: RawRow, check: RowCheck) -> bool:
    try:
        check(row)
    except RowError:
        return False
    return True


def _json_rows(path: Path) -> tuple[list[Any], list[int] | None]:
    """The file's top-level values, one per row (any JSON: a row that is no object is what the caller reports), and
    each row's line in a JSON-lines file, whose blank lines are no rows (None for one JSON document)."""
    with open_data_file(path, "rt", encoding="utf-8") as file:
        text = file.read()
    try:
        rows = json.loads(text)
        return (rows if isinstance(rows, list) else [rows]), None
    except json.JSONDecodeError:
        pass
    rows, lines = [], []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 and U+0085 are text inside a row
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: row {len(rows) + 1} (line {number}): not valid JSON: {err}") from None
            lines.append(number)
    return rows, lines


def _row_place(index: int, lines: list[int] | None) -> str:
    """How errors name row `index` (from 0): `row 3`, or `row 3 (line 4)` where blank lines make the two differ."""
    line = lines[index] if lines else index + 1
    return f"row {index + 1}" + (f" (line {line})" if line != index + 1 else "")


def _file_row_place(source: str, index: int) -> str:
    """`_row_place` for a row of `source`: lines only count in a local JSON file (a selecting split or a shard's
    source is no file, nor are its row numbers the file's)."""
    path = Path(source)
    is_json = path.is_file() and data_file_builder(path.name) == "json"  # rows.jsonl.gz too
    return _row_place(index, _json_rows(path)[1] if is_json else None)


def find_bad_json_row(path: Path, check: RowCheck) -> None:
    """Arrow's JSON reader fails on a row that is no object without saying which; find the row and raise for it.

    Rows are checked in order, with the type's own check too, so the first bad row is the one reported. Returns
    when no row is bad by these rules (e.g. a key repeated in one object): the caller reports datasets' error.
    """
    rows, lines = _json_rows(path)
    if not rows:
        raise DataError(f"{path}: the dataset is empty (no rows)")
    for index, row in enumerate(rows):
        where = f"{path}: {_row_place(index, lines)}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: must be an object, got {type(row).__name__}")
        try:
            check(row)
        except RowError as err:
            raise DataError(f"{where}: {err}") from None


_steps_unsaid = False  # set by `steps_said(False)`: a process that is not the run's main one


@contextmanager
def steps_said(said: bool) -> Iterator[None]:
    """Data preparation's steps (datasets' bars, the lines `say_step_when_piped` writes) said or not while inside:
    under DDP every process prepares the same data, and only the main one says so (one line for the run)."""
    global _steps_unsaid
    bars_were_off, unsaid_before = are_progress_bars_disabled(), _steps_unsaid
    if not said:
        disable_progress_bars()
        _steps_unsaid = True
    try:
        yield
    finally:
        _steps_unsaid = unsaid_before
        if not said and not bars_were_off:
            enable_progress_bars()


def say_step_when_piped(desc: str, rows: int) -> None:
    """A step over every row, as one plain line where datasets draws no bar (stderr piped: CI, `| tee`, a file;
    core.processes.no_bars_when_piped): 20,000 rows took half a minute with nothing said until the table."""
    if are_progress_bars_disabled() and not _steps_unsaid:
        LOG.info("%s: %s rows", desc, f"{rows:,}")


# datasets refuses a fingerprint longer than this (validate_fingerprint)
_FINGERPRINT_CHARS = 64


def step_fingerprint(name: str) -> str:
    """`name` as the fingerprint of a datasets map (which names its result without hashing the function, whose
    closure may hold every row): as it is where datasets takes it, else its head and a hash of the whole, so a
    long name (a long sequence_len's packing after a long chain of steps) is no error."""
    if len(name) <= _FINGERPRINT_CHARS:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return f"{name[: _FINGERPRINT_CHARS - len(digest) - 1]}-{digest}"


def convert_rows(
    rows: Dataset,
    source: str,
    convert: Callable[[RawRow], list[dict[str, Any]]],
    columns: tuple[str, ...],
    desc: str,
    fingerprint: str | None = None,
    original_types: bool = True,
) -> Dataset:
    """Each raw row through `convert` (one row in, any number of rows with `columns` out), batched through
    `datasets`; a row `convert` cannot use is a DataError naming the source and the row (counted from 1, with its
    line where they differ). `original_types`: an output column named as an input one is cast to its type where it
    can be (datasets' default; off where a column of messages becomes their text: a JSON-typed list of mixed
    messages takes a string as its characters)."""

    def convert_batch(batch: RawColumns, indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {column: [] for column in columns}
        for index, values in zip(indices, zip(*batch.values(), strict=True), strict=True):
            try:
                made = convert(dict(zip(batch, values, strict=True)))
            except RowError as err:
                problem = _file_row_error(source, index, convert, err)
                raise DataError(f"{source}: {_file_row_place(source, index)}: {problem}") from None
            for row in made:
                for column in columns:
                    out[column].append(row[column])
        return out

    say_step_when_piped(desc, len(rows))
    return rows.map(
        convert_batch,
        batched=True,
        with_indices=True,
        remove_columns=rows.column_names,
        desc=desc,
        load_from_cache_file=False,
        new_fingerprint=None if fingerprint is None else step_fingerprint(fingerprint),
        try_original_type=original_types,
    )


def _file_row_error(source: str, index: int, convert: Callable[[RawRow], object], err: RowError) -> RowError:
    """A null field's error as the file holds the row: Arrow gives a key absent from one JSON row (and present in
    others) as null, and a CSV's empty cell too; the user is told the key is missing, or the cell empty."""
    path = Path(source)  # a local file's source is its path (with a selecting split it is not, nor are row numbers)
    if not (isinstance(err, FieldError) and err.problem == IS_NULL and path.is_file()):
        return err
    kind = data_file_builder(path.name)  # rows.csv.gz is a CSV too
    if kind == "csv":
        return FieldError(err.field, "is empty")
    if kind != "json":
        return err
    try:
        convert(_json_rows(path)[0][index])
    except RowError as raw_err:
        return raw_err
    return err


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
    from rich.markup import escape
    from rich.progress import track

    for position, spec in enumerate(cfg.datasets):
        source = source_name(spec)
        rows = load_rows(spec, lambda row: None, cfg.seed, f"datasets[{position}]")  # any row: only its strings
        for index, row in enumerate(track(rows, description=f"Reading {escape(Path(source).name)}", transient=True)):
            yield source, index, " ".join(_strings(row))
