"""Where rows come from and what a file's values may be, as axolotl reads them: folders written by save_to_disk,
the spec's split on local files, numbers in text fields; and the errors for files that leave nothing to train on
or hold their rows otherwise than as rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from llmkit.config.plan import plan
from llmkit.data.pipeline import DataError, build_datasets
from llmkit.data.rows import IGNORE_INDEX


def _rows(n: int, answer: str = "Answer") -> list[dict[str, str]]:
    return [{"instruction": f"Say {i}.", "input": "", "output": f"{answer} {i}."} for i in range(n)]


def _answers(data, tokenizer) -> list[str]:
    """Each training row's trained text (its answer), without the EOS after it, in file order."""
    texts = []
    for ids, labels in zip(data.train["input_ids"], data.train["labels"], strict=True):
        trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        texts.append(tokenizer.decode(trained, skip_special_tokens=True))
    return texts


def _alpaca(make_cfg, path: Path, **spec: str):
    return make_cfg([{"path": str(path), "type": "alpaca", **spec}], shuffle_merged_datasets=False)


def _fails(make_cfg, tokenizer, path: Path, expected: str, kind: str = "alpaca", **spec: str) -> None:
    cfg = make_cfg([{"path": str(path), "type": kind, **spec}])
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + expected):
        build_datasets(cfg, tokenizer)


@pytest.mark.parametrize("ds_type", [None, "arrow"])
def test_a_folder_written_by_save_to_disk_loads(make_cfg, tokenizer, tmp_path, ds_type):
    Dataset.from_list(_rows(4)).save_to_disk(tmp_path / "saved")
    spec = {"ds_type": ds_type} if ds_type else {}
    data = build_datasets(_alpaca(make_cfg, tmp_path / "saved", **spec), tokenizer)
    assert _answers(data, tokenizer) == ["Answer 0.", "Answer 1.", "Answer 2.", "Answer 3."]


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("train", ["Train 0.", "Train 1.", "Train 2."]),
        ("validation", ["Valid 0.", "Valid 1."]),
        ("validation[1:]", ["Valid 1."]),
        ("train[:1]+validation[:1]", ["Train 0.", "Valid 0."]),
    ],
)
def test_a_saved_dataset_dict_gives_the_spec_split(make_cfg, tokenizer, tmp_path, split, expected):
    saved = DatasetDict(train=Dataset.from_list(_rows(3, "Train")), validation=Dataset.from_list(_rows(2, "Valid")))
    saved.save_to_disk(tmp_path / "saved")
    data = build_datasets(_alpaca(make_cfg, tmp_path / "saved", split=split), tokenizer)
    assert _answers(data, tokenizer) == expected


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_the_split_selects_rows_of_a_local_file(write_rows, make_cfg, tokenizer, fmt):
    path = write_rows(_rows(6), fmt)
    data = build_datasets(_alpaca(make_cfg, path, split="train[2:4]"), tokenizer)
    assert _answers(data, tokenizer) == ["Answer 2.", "Answer 3."]
    assert data.stats.datasets[0].rows == 2
    assert data.stats.datasets[0].source == f"{path} (split train[2:4])"  # its row numbers count in the slice


def test_shards_train_on_one_shard_of_the_shuffled_rows_as_axolotl(write_rows, make_cfg, tokenizer):
    """axolotl: `ds.shuffle(seed=cfg.seed).shard(num_shards=shards, index=shards_idx)`; the shards are disjoint
    and together the whole file."""
    path = write_rows(_rows(10), "jsonl")
    shuffled = [row["output"] for row in Dataset.from_list(_rows(10)).shuffle(seed=7)]
    seen = []
    for index in range(3):
        cfg = make_cfg([{"path": str(path), "type": "alpaca", "shards": 3, "shards_idx": index}], seed=7,
                       shuffle_merged_datasets=False)  # fmt: skip
        data = build_datasets(cfg, tokenizer)
        expected = [shuffled[i] for i in range(10) if i in range([0, 4, 7][index], [4, 7, 10][index])]
        assert _answers(data, tokenizer) == expected
        assert data.stats.datasets[0].source == f"{path} (shard {index} of 3)"
        seen += expected
    assert sorted(seen) == sorted(shuffled)
    with pytest.raises(DataError, match=re.escape(f"{path} (shard 11 of 12): the shard is empty (10 rows in 12")):
        build_datasets(_alpaca(make_cfg, path, shards=12, shards_idx=11), tokenizer)


def test_bytes_that_are_not_utf8_and_lone_surrogates_name_their_line_or_row(make_cfg, tokenizer, tmp_path):
    """Both ended in a traceback (UnicodeDecodeError from Arrow's strings; TypeError from the tokenizer)."""
    lines = [json.dumps(row).encode() for row in _rows(4)]
    bad_bytes = tmp_path / "latin1.jsonl"
    bad_bytes.write_bytes(b"\n".join([*lines[:2], lines[2].replace(b"Say", b"S\xe4y"), lines[3]]) + b"\n")
    _fails(make_cfg, tokenizer, bad_bytes, r"line 3: not UTF-8 text \(byte 0xe4\)")
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_bytes(b"\n".join([*lines[:3], lines[3].replace(b"Say", b"S\\ud800y")]) + b"\n")
    _fails(make_cfg, tokenizer, surrogate, r"row 4: field 'instruction' is not valid text: an unpaired surrogate at")


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_compressed_file_is_read_as_the_format_under_it(make_cfg, tokenizer, tmp_path, compression):
    """a.jsonl.gz was an "unknown file type '.gz'", and with ds_type: json "not UTF-8 text (byte 0x8b)": its
    compressed bytes were checked (axolotl reads it, as datasets does)."""
    import bz2
    import gzip
    import lzma

    compress = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compression]
    text = "\n".join(json.dumps(row) for row in _rows(3)) + "\n"
    path = tmp_path / f"rows.jsonl.{compression}"
    path.write_bytes(compress(text.encode()))
    assert _answers(build_datasets(_alpaca(make_cfg, path), tokenizer), tokenizer) == [
        f"Answer {i}." for i in range(3)
    ]
    bad = tmp_path / f"latin1.jsonl.{compression}"
    bad.write_bytes(compress(text.replace("Say 1", "S\xe4y 1").encode("latin-1")))
    _fails(make_cfg, tokenizer, bad, r"line 2: not UTF-8 text \(byte 0xe4\)")  # the text inside is checked


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
@pytest.mark.parametrize("damage", ["not compressed", "cut short"])
def test_a_compressed_file_that_cannot_be_decompressed_is_an_error_naming_it(
    make_cfg, tokenizer, tmp_path, compression, damage
):
    """A rows.jsonl.gz that was no gzip file, or cut short, ended in gzip's BadGzipFile traceback or in click's bare
    "Aborted." (an EOFError): after the read failed, the search for a bad JSON row read the file again."""
    import bz2
    import gzip
    import lzma

    compress = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compression]
    text = ("\n".join(json.dumps(row) for row in _rows(50)) + "\n").encode()
    damaged = text if damage == "not compressed" else compress(text)[:-20]
    for fmt in ("jsonl", "json", "csv", "txt"):
        path = tmp_path / f"rows.{fmt}.{compression}"
        path.write_bytes(damaged)
        _fails(make_cfg, tokenizer, path, "cannot be read: [A-Za-z]+(Error|File): ")


def test_preprocess_says_which_compressed_file_cannot_be_read(tiny_config, tmp_path):
    import gzip

    from typer.testing import CliRunner

    from llmkit.cli import app

    cut = tmp_path / "rows.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"instruction": "Say 1.", "output": "1"}\n' * 50)[:-20])
    result = CliRunner().invoke(app, ["preprocess", str(tiny_config(datasets=[{"path": str(cut), "type": "alpaca"}]))])
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"{cut}: cannot be read: EOFError: Compressed file ended before the end-of-stream marker" in said


def test_a_txt_file_is_text_rows(make_cfg, tokenizer, tmp_path):
    """axolotl reads .txt with datasets' text builder (one row per line, field `text`); it was an unknown type."""
    path = tmp_path / "notes.txt"
    path.write_text("The sky is blue.\nGrass is green.\n")
    data = build_datasets(
        make_cfg([{"path": str(path), "type": "completion"}], shuffle_merged_datasets=False), tokenizer
    )
    assert _answers(data, tokenizer) == ["The sky is blue.", "Grass is green."]


def test_a_split_a_local_file_lacks_is_an_error(write_rows, make_cfg, tokenizer):
    path = write_rows(_rows(2), "jsonl")
    # said by its key; datasets' words follow
    said = "datasets[0].split: validation: a local file has one split, train (train[:100] or train[:10%] select rows"
    with pytest.raises(DataError, match=re.escape(said) + r".*Unknown split \"validation\""):
        build_datasets(_alpaca(make_cfg, path, split="validation"), tokenizer)
    with pytest.raises(DataError, match=re.escape(f"{path} (split train[5:]): cannot be read: ") + ".*no data"):
        build_datasets(_alpaca(make_cfg, path, split="train[5:]"), tokenizer)


def test_numbers_in_a_csv_are_the_file_s_text(make_cfg, tokenizer, tmp_path):
    path = tmp_path / "sums.csv"
    # datasets alone reads this column as float64 (an empty cell): 1.0, 7.0; the prompt must say what the file says
    path.write_text('instruction,input,output\nWhat is 0+1?,,1\nPad 7.,,"007"\nHalf of 5?,,2.5\nNothing.,x,\n')
    _fails(make_cfg, tokenizer, path, r"row 4: field 'output' is empty")
    path.write_text(path.read_text().replace("Nothing.,x,\n", ""))
    assert _answers(build_datasets(_alpaca(make_cfg, path), tokenizer), tokenizer) == ["1", "007", "2.5"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_numbers_in_text_fields_are_their_text(write_rows, make_cfg, tokenizer, fmt):
    rows = [{"instruction": "0+1?", "input": 0.5, "output": 1}, {"instruction": "6+1?", "input": 2.5, "output": 7}]
    data = build_datasets(_alpaca(make_cfg, write_rows(rows, fmt)), tokenizer)
    assert _answers(data, tokenizer) == ["1", "7"]
    assert "### Input:\n0.5\n\n" in tokenizer.decode(data.train[0]["input_ids"])


def test_a_bool_or_a_list_is_no_text(write_rows, make_cfg, tokenizer):
    _fails(make_cfg, tokenizer, write_rows([{**_rows(1)[0], "output": True}], "jsonl"), r"row 1: field 'output' must")
    _fails(make_cfg, tokenizer, write_rows([{**_rows(1)[0], "output": [1]}], "jsonl"), r"row 1: field 'output' must")


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ({"instruction": "Say 1.", "input": "", "output": None}, "row 2: field 'output' is null"),
        # Arrow reads the key row 1 has and row 2 lacks as null: the file's own row says it is missing
        ({"instruction": "Say 1.", "input": ""}, "row 2: field 'output' is missing"),
    ],
)
def test_a_null_field_is_told_from_a_missing_one(write_rows, make_cfg, tokenizer, second, expected):
    _fails(make_cfg, tokenizer, write_rows([_rows(1)[0], second], "jsonl"), expected)


def test_a_null_field_in_parquet_is_null(write_rows, make_cfg, tokenizer):
    path = write_rows([_rows(1)[0], {"instruction": "Say 1.", "input": "", "output": None}], "parquet")
    _fails(make_cfg, tokenizer, path, "row 2: field 'output' is null")


def test_rows_all_longer_than_sequence_len_say_which_length_would_keep_them(write_rows, make_cfg, tokenizer):
    path = write_rows([{**row, "output": "word " * 60} for row in _rows(3)], "jsonl")
    expected = r"no row is left of 3: 3 longer than sequence_len 32 \(the shortest of them has \d+ tokens: raise seq"
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + expected):
        build_datasets(make_cfg([{"path": str(path), "type": "alpaca"}], sequence_len=32), tokenizer)


def test_rows_with_nothing_trained_name_train_on_inputs(write_rows, make_cfg, tokenizer):
    path = write_rows([{"segments": [{"label": False, "text": "Only a prompt"}]}] * 2, "jsonl")
    expected = r"no row is left of 2: 2 with no trained token .*train_on_inputs: true"
    _fails(make_cfg, tokenizer, path, expected, "input_output")


def test_a_json_object_holding_the_rows_names_its_keys_and_the_list(make_cfg, tokenizer, tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": _rows(3)}, indent=2))
    expected = r"the file holds one JSON object with keys \['version', 'data'\], read as a single row .* under 'data'"
    _fails(make_cfg, tokenizer, path, expected)
    path.write_text(json.dumps(_rows(1)[0]))  # one object that is a row: a file of one row
    assert _answers(build_datasets(_alpaca(make_cfg, path), tokenizer), tokenizer) == ["Answer 0."]


def test_data_files_under_the_home_folder_are_read_counted_and_hashed(make_cfg, tokenizer, tmp_path, monkeypatch):
    """`~` in data_files was not expanded: validate passed, and preprocess failed with "Unable to find
    '<cwd>/~/r.jsonl'"; the data stage, the plan and the prepared-data cache read entries alike."""
    from llmkit.config.sections import local_data_files

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "more").mkdir(parents=True)
    (tmp_path / "home" / "r.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _rows(1, "Home")))
    (tmp_path / "home" / "more" / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _rows(1, "Glob")))
    entries = ["~/r.jsonl", "~/more/*.jsonl"]  # a file, and a pattern
    assert local_data_files(entries) == [tmp_path / "home" / "r.jsonl", tmp_path / "home" / "more" / "a.jsonl"]
    data = build_datasets(_alpaca(make_cfg, Path("json"), data_files=entries), tokenizer)
    assert _answers(data, tokenizer) == ["Home 0.", "Glob 0."]
    assert plan(_alpaca(make_cfg, Path("json"), data_files=["~/r.jsonl"])).rows == 1  # counted without tokenizing


@pytest.mark.parametrize("layout", ["file", "path: json", "folder", "folder with ds_type", "folder with data_files"])
@pytest.mark.parametrize("decoy", [False, True])
def test_a_local_path_with_glob_characters_reads_that_path_alone(make_cfg, tokenizer, tmp_path, layout, decoy):
    """datasets globs data_files and a folder's path: `data[v2].jsonl` read `datav.jsonl` beside it, or failed
    with StopIteration when there was none."""

    def write(path: Path, answer: str) -> None:
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in _rows(2, answer)))

    if layout in ("file", "path: json"):
        path, spec = tmp_path / "data[v2].jsonl", {}
        write(path, "Literal")
        if decoy:
            write(tmp_path / "datav.jsonl", "Glob")
        if layout == "path: json":  # local data_files beside a builder's name
            path, spec = Path("json"), {"data_files": [str(path)]}
    else:
        path = tmp_path / "set[v2]"
        write(path / "rows[1].jsonl", "Literal")
        spec = {"ds_type": "json"} if layout == "folder with ds_type" else {}
        if layout == "folder with data_files":
            spec["data_files"] = ["rows[1].jsonl"]
        if decoy:
            write(tmp_path / "setv" / "rows[1].jsonl", "Glob")
        if decoy and "data_files" in spec:
            write(path / "rows1.jsonl", "Glob")
    data = build_datasets(_alpaca(make_cfg, path, **spec), tokenizer)
    assert _answers(data, tokenizer) == ["Literal 0.", "Literal 1."]
