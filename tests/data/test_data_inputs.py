"""The data layer's less travelled paths, each reached with the input that reaches it in use: bad files and rows
of every kind, rows with nothing to train on, splits that leave nothing, hub and folder sources, a custom chat
template, both collators, the counts table and the default dataset's command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from rich.console import Console

from llmkit.config.sections import DatasetType
from llmkit.data import default_dataset, shipped, skill_dataset, sources
from llmkit.data.cache import save_prepared
from llmkit.data.packing import pack_dataset
from llmkit.data.pipeline import DataError, build_datasets, make_collator, stats_table
from llmkit.data.prompts import CHAT_TYPES, STATIC_BUILDERS
from llmkit.data.rows import IGNORE_INDEX

ALPACA_ROW = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
CHAT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]


def test_every_config_dataset_type_has_a_builder():
    assert set(STATIC_BUILDERS) | set(CHAT_TYPES) == set(DatasetType)


def _fails(make_cfg, tokenizer, path: Path, kind: str, expected: str, **spec: str) -> None:
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + expected):
        build_datasets(make_cfg([{"path": str(path), "type": kind, **spec}]), tokenizer)


# (dataset type, rows, message after "<file>: ") for rows that `datasets` reads and the prompt builder rejects
BAD_ROWS = [
    ("input_output", [{"segments": "Q: A:"}], r"row 1: field 'segments' must be a list of \{label, text\}"),
    ("input_output", [{"segments": [{"label": "yes", "text": "a"}]}], r"row 1: field 'segments\[0\]\.label' must be"),
    ("chat_template", [{"messages": "Hi"}], r"row 1: field 'messages' must be a list of messages"),
    (  # alpaca rows under chat_template: it said "field 'conversations' must be a list of messages"
        "chat_template",
        [{"instruction": "a", "output": "b"}],
        r"row 1: field 'messages' is missing, and so is 'conversations': set field_messages to the row's list of "
        r"messages \(its fields: 'instruction', 'output'\)",
    ),
    ("chat_template", [{"messages": ["Hi"]}], r"row 1: field 'messages\[0\]' must be an object, got str"),
    ("chat_template", [{"messages": [{"role": "robot", "content": "x"}]}], r"row 1: field 'messages\[0\]\.role' is"),
]


@pytest.mark.parametrize(("kind", "rows", "expected"), BAD_ROWS)
def test_bad_rows_name_the_field(write_rows, make_cfg, tokenizer, kind, rows, expected):
    _fails(make_cfg, tokenizer, write_rows(rows, "jsonl"), kind, expected)


def test_rows_already_tokenized_without_a_type_are_refused_naming_input_output(write_rows, tiny_config):
    """axolotl reads a dataset without a type as tokenized rows; the refusal said only that a type is required."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    path = write_rows([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], "jsonl")
    result = CliRunner().invoke(app, ["preprocess", str(tiny_config(datasets=[{"path": str(path)}]))])
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "datasets[0].type: required: the prompt format" in said
    assert "rows already tokenized (input_ids, labels), which axolotl reads without a type, are not supported" in said
    assert "write them as text with type: input_output (segments of {label, text}" in said


ROW_1 = json.dumps(ALPACA_ROW)
# (file name, its text, message after "<file>: ") for files that `datasets` cannot read
BAD_FILES = [
    ("scalar.json", "5", r"row 1: must be an object, got int"),
    ("list.json", f"[{ROW_1}, [1]]", r"row 2: must be an object, got list"),
    ("broken.jsonl", f'{ROW_1}\n{{"instruction": \n', r"row 2 \(line 2\): not valid JSON"),
    # blank lines are no rows: the line is named too where the two numbers differ
    ("blank.jsonl", f'{ROW_1}\n\n{ROW_1}\n{{"instruction": "c"}}\n', r"row 3 \(line 4\): field 'output' is missing"),
    ("blank-list.jsonl", f"{ROW_1}\n\n[1]\n", r"row 2 \(line 3\): must be an object, got list"),
    # U+2028 inside a row's text (json.dumps with ensure_ascii=False writes it raw) ends no line of JSON Lines
    (
        "separator.jsonl",
        f'{{"instruction": "a\u2028b", "output": "x"}}\n{ROW_1}\n{{"instruction": "c"}}\n',
        r"row 3: field 'output' is missing",
    ),
    # the first bad row is reported, whether the builder or the reader finds it
    ("first.jsonl", f'{ROW_1}\n{{"instruction": "c"}}\n[1]\n', r"row 2: field 'output' is missing"),
    # datasets reads a field whose JSON type changes (as Json): only the row that is no object is wrong
    ("mixed.jsonl", f'{ROW_1[:-1]}, "n": 1}}\n{ROW_1[:-1]}, "n": "x"}}\n[1]\n', r"row 3: must be an object, got list"),
    # every row is an object and well formed for Python, not for Arrow: datasets' own error is the best there is
    ("repeated.jsonl", f'{ROW_1[:-1]}, "output": "Red."}}\n', r"cannot be read: DatasetGenerationError"),
    ("empty.json", "[]", r"the dataset is empty"),
    ("empty.csv", "instruction,output\n", r"cannot be read: "),  # datasets refuses a split with no rows
    ("empty-cell.csv", "instruction,output\na,b\n,d\n", r"row 2: field 'instruction' is empty"),
    # a .txt file is text rows (one field, `text`), as axolotl reads it: JSON in it is not alpaca's fields
    ("rows.txt", ROW_1, r"row 1: field 'instruction' is missing"),
    ("rows.yml", ROW_1, r"unknown file type '\.yml'; set ds_type \(json, csv, parquet, arrow, text\)"),
    ("broken.parquet", "not parquet", r"cannot be read: "),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_FILES)
def test_unreadable_files_name_the_row(make_cfg, tokenizer, tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    _fails(make_cfg, tokenizer, path, "alpaca", expected)


@pytest.mark.parametrize(
    ("name", "text", "expected"), [case for case in BAD_FILES if case[0].endswith((".json", ".jsonl", ".csv", ".txt"))]
)
def test_a_compressed_file_names_its_bad_row_as_the_file_inside_it(
    make_cfg, tokenizer, tmp_path, name, text, expected
):
    """In rows.jsonl.gz a row's line went unsaid, and a key the row lacks was "null" (a CSV's empty cell too): the
    place and the field were looked up only in files whose last suffix is .json, .jsonl or .csv."""
    import gzip

    path = tmp_path / f"{name}.gz"
    path.write_bytes(gzip.compress(text.encode()))
    _fails(make_cfg, tokenizer, path, "alpaca", expected)


def test_path_json_with_local_data_files_names_the_file_and_its_bad_row(make_cfg, tokenizer, tmp_path):
    """`path: json` with data_files, as axolotl's examples write it: the error was "hub dataset json: cannot be
    read: DatasetGenerationError: An error occurred while generating the dataset", naming neither the file nor the
    row that `path: <file>` gets."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text(f'{ROW_1}\n{{"instruction": \n')
    with pytest.raises(DataError, match=re.escape(str(broken)) + r": row 2 \(line 2\): not valid JSON"):
        build_datasets(make_cfg([{"path": "json", "data_files": [str(broken)], "type": "alpaca"}]), tokenizer)
    repeated = tmp_path / "repeated.jsonl"  # no row to blame: datasets' error, with the file and what caused it
    repeated.write_text(f'{ROW_1[:-1]}, "output": "Red."}}\n')
    expected = re.escape(f"hub dataset json data_files {repeated}: cannot be read: DatasetGenerationError: ")
    with pytest.raises(DataError, match=expected + r".* \(\w+: .+\)$"):
        build_datasets(make_cfg([{"path": "json", "data_files": [str(repeated)], "type": "alpaca"}]), tokenizer)


def test_a_line_that_is_not_json_is_said_once_with_its_own_row(tiny_config, tmp_path):
    """datasets logged "Failed to load JSON from file ... in row 10" (Arrow's row, from 0) before llmkit's error
    naming row 11 (line 11): two rows named for one bad line."""
    path = tmp_path / "rows.jsonl"
    lines = [ROW_1] * 12
    lines[10] = '{"instruction": "x", '
    path.write_text("\n".join(lines) + "\n")
    config = tiny_config(datasets=[{"path": str(path), "type": "alpaca"}])
    command = [sys.executable, "-m", "llmkit.cli", "preprocess", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Failed to load JSON" not in done.stderr and "row 10" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1].startswith(f"Error: {path}: row 11 (line 11): not valid JSON: "), done.stderr


def test_a_custom_jinja_chat_template_masks_headers_and_must_write_trained_turns_as_the_whole_does(
    write_rows, make_cfg, tokenizer
):
    path = write_rows([{"messages": CHAT}], "jsonl")
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    template += "{% if add_generation_prompt %}[assistant] {% endif %}"
    cfg = make_cfg([{"path": str(path), "type": "chat_template", "chat_template": template}])
    (row,) = build_datasets(cfg, tokenizer).train
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(row["input_ids"]) == "[user] Hi there\n[assistant] Hello!\n"
    assert tokenizer.decode(trained) == " Hello!"  # the content; its first token carries the space before it
    # each render rewrites its start: the user turn's text in the whole conversation ('2Hi there...') is not where
    # the conversation up to it ('1Hi there') has it, so a row that trains it is refused (axolotl's labels would
    # fall elsewhere); the assistant turn, the last, is where the whole has it, so it alone trains
    counting = "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}"
    expected = r"row 1: field 'messages' cannot be split into turns: the chat template writes the conversation up to "
    expected += r"message 0 \(user\) otherwise once later messages follow"
    _fails(make_cfg, tokenizer, path, "chat_template", expected, chat_template=counting, roles_to_train=["user"])
    (row,) = build_datasets(
        make_cfg([{"path": str(path), "type": "chat_template", "chat_template": counting}]), tokenizer
    ).train
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    assert (tokenizer.decode(row["input_ids"]), tokenizer.decode(trained)) == ("2Hi thereHello!", "Hello!")


def test_rows_with_nothing_to_train_on_are_dropped_and_counted(write_rows, make_cfg, tokenizer):
    masked = {"segments": [{"label": False, "text": "Only a prompt"}]}
    trained = {"segments": [{"label": False, "text": "Q:"}, {"label": True, "text": " yes"}]}
    # only the first token trained: nothing precedes it, so it is never a target
    first = {"segments": [{"label": True, "text": "Yes"}, {"label": False, "text": " and the rest"}]}
    empty = {"segments": []}  # stopped the whole run ("must be a non-empty list")
    cfg = make_cfg([{"path": str(write_rows([masked, trained, first, empty], "jsonl")), "type": "input_output"}])
    stats = build_datasets(cfg, tokenizer).stats.datasets[0]
    assert (stats.rows, stats.kept, stats.dropped_untrained) == (4, 1, 3)
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    chats = [{"messages": []}, {"messages": turns}]
    cfg = make_cfg([{"path": str(write_rows(chats, "jsonl")), "type": "chat_template", "chat_template": "chatml"}])
    stats = build_datasets(cfg, tokenizer).stats.datasets[0]
    assert (stats.rows, stats.kept, stats.dropped_untrained) == (2, 1, 1)  # [] stopped the run as segments: [] did


def test_an_empty_answer_trains_nothing_not_even_eos_and_its_row_is_dropped(write_rows, make_cfg, tokenizer):
    """As axolotl: `_tokenize("")` gives no tokens and no EOS; a chat turn with empty content is not found, so neither
    it nor its end token trains. A row left with nothing trained is dropped and counted."""
    custom = {"field_instruction": "instruction", "field_output": "output"}
    for kind, silent in [("alpaca", {**ALPACA_ROW, "output": ""}), (custom, {"instruction": "Say nothing."})]:
        cfg = make_cfg([{"path": str(write_rows([ALPACA_ROW, silent], "jsonl")), "type": kind}])
        stats = build_datasets(cfg, tokenizer).stats.datasets[0]
        assert (stats.rows, stats.kept, stats.dropped_untrained) == (2, 1, 1)
    empty_turn = [*CHAT, {"role": "user", "content": "Again?"}, {"role": "assistant", "content": ""}]
    rows = [{"messages": empty_turn}, {"messages": [CHAT[0], {"role": "assistant", "content": ""}]}]
    data = build_datasets(make_cfg([{"path": str(write_rows(rows, "jsonl")), "type": "chat_template"}]), tokenizer)
    (row,) = data.train
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Hello!<|im_end|>"
    assert (data.stats.datasets[0].kept, data.stats.datasets[0].dropped_untrained) == (1, 1)


def test_a_dataset_with_no_usable_row_is_an_error(write_rows, make_cfg, tokenizer):
    path = write_rows([{**ALPACA_ROW, "instruction": "Repeat. " * 40}], "jsonl")
    expected = r": no row is left of 1: 1 longer than sequence_len 32"
    with pytest.raises(DataError, match=re.escape(str(path)) + expected):
        build_datasets(make_cfg([{"path": str(path), "type": "alpaca"}], sequence_len=32), tokenizer)


@pytest.mark.parametrize(("rows", "val_set_size"), [(1, 0.5), (3, 0.9)])
def test_a_split_that_leaves_no_training_row_is_an_error(write_rows, make_cfg, tokenizer, rows, val_set_size):
    path = write_rows([{**ALPACA_ROW, "output": str(i)} for i in range(rows)], "jsonl")
    cfg = make_cfg([{"path": str(path), "type": "alpaca"}], val_set_size=val_set_size)
    with pytest.raises(DataError, match=f"val_set_size {val_set_size} leaves no training rows out of {rows}"):
        build_datasets(cfg, tokenizer)


def test_tokenizer_config_may_be_a_folder_of_tokenizer_files_alone(make_cfg, tokenizer, tmp_path):
    """As axolotl loads it (AutoTokenizer): no config.json is needed beside the tokenizer's files."""
    from llmkit.data.tokenizer import load_tokenizer

    folder = tmp_path / "tokenizer-only"
    tokenizer.save_pretrained(folder)
    assert not (folder / "config.json").exists()
    loaded = load_tokenizer(make_cfg(tokenizer_config=str(folder)))
    assert loaded.get_vocab() == tokenizer.get_vocab() and loaded.chat_template == tokenizer.chat_template


@pytest.mark.parametrize(
    ("family", "embeddings", "head"),
    [
        ("tied llama", "embed_tokens", "lm_head"),
        ("llama", "embed_tokens", "lm_head"),
        ("gpt_neox", "embed_in", "lm_head"),  # transformers 5 renamed axolotl's embed_out
        ("falcon", "word_embeddings", "lm_head"),
        ("gpt2", "wte", "lm_head"),
    ],
)
def test_a_new_token_under_an_adapter_needs_the_embeddings_and_the_head_saved(
    tiny_config, tiny_model_dir, tiny_family_dir, family, embeddings, head
):
    """axolotl refuses a new special token, or added `tokens`, unless lora_modules_to_save lists both, by the
    architecture's names (embed_in in GPT-NeoX); any one module listed let it through, and the new EOS's embedding
    row never trained. `tokens` took any one of the two (and, without a model, axolotl's names: wte was refused)."""
    from llmkit.config.schema import ConfigError, load_config
    from llmkit.data.tokenizer import load_tokenizer

    base = tiny_model_dir if family == "tied llama" else tiny_family_dir(family)
    new_eos = {"base_model": str(base), "special_tokens": {"eos_token": "<|myend|>"}}
    added = {"base_model": str(base), "tokens": ["<|mytok|>"]}
    said_new = {
        "special_tokens": "special_tokens.eos_token: '<|myend|>' is a new token here, whose embedding an adapter",
        "tokens": "tokens: ['<|mytok|>'] get new embedding rows, which an adapter leaves untrained",
    }
    short = [([head], embeddings), ([f"model.{embeddings}"], head), (["norm"], f"{embeddings}, {head}"), ([], None)]
    for keys, key in ((new_eos, "special_tokens"), (added, "tokens")):
        for listed, missing in short:
            with pytest.raises(ConfigError) as refused:
                load_tokenizer(load_config(tiny_config(**keys, lora_modules_to_save=listed)))
            said = " ".join(str(refused.value).split())
            assert said_new[key] in said
            missing = missing or f"{embeddings}, {head}"
            assert f"must list {embeddings} and {head} (as axolotl requires; {missing} missing)" in said
        saved = load_tokenizer(load_config(tiny_config(**keys, lora_modules_to_save=[embeddings, head])))
        assert {"<|myend|>", "<|mytok|>"} & set(saved.get_vocab())


@pytest.mark.parametrize("command", ["validate", "preprocess", "train"])
def test_a_tokenizer_type_that_reads_the_tokenizer_otherwise_is_refused_first(command, tiny_config, tmp_path):
    """The shipped Mistral and Llama-2 configs name LlamaTokenizer. On a byte-level BPE base (the tiny model has the
    embedded default's tokenizer) it dropped every space, line break and emoji, and all three commands went on."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    prepared = tmp_path / "prepared"
    config = tiny_config(tokenizer_type="LlamaTokenizer", dataset_prepared_path=str(prepared))
    result = CliRunner().invoke(app, [command, str(config)])
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "tokenizer_type: LlamaTokenizer reads this model's tokenizer files unlike the model's own class" in said
    assert "'The sky is blue.\\nÜber 🙂' comes back as 'Theskyisblue.Über'" in said
    assert "remove tokenizer_type: the model's own tokenizer class is used" in said
    assert not prepared.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "train"])
def test_a_base_folder_without_a_usable_tokenizer_is_refused(command, tiny_config, tiny_model_dir, tmp_path):
    """A folder with config.json alone: with tokenizer_type: LlamaTokenizer the class loaded there and gave [] for
    every text (validate and train said only "no row is left of 24: 24 with no trained token (every token
    masked ...)"); with AutoTokenizer validate passed it and train stopped on transformers' traceback."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_model_dir / "config.json", bare / "config.json")
    for keys in ({"tokenizer_type": "LlamaTokenizer"}, {}):
        result = CliRunner().invoke(app, [command, str(tiny_config(base_model=str(bare), **keys))])
        said = " ".join(result.output.split())
        assert result.exit_code == 1, result.output
        assert f"base_model: {bare} holds no tokenizer files (tokenizer.json, *.model, vocab*" in said
    (bare / "vocab.txt").write_text("")  # a file of the names, which LlamaTokenizer does not read
    result = CliRunner().invoke(
        app, [command, str(tiny_config(base_model=str(bare), tokenizer_type="LlamaTokenizer"))]
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"base_model: {bare}: its tokenizer (LlamaTokenizer) encodes text to no tokens" in said
    assert "no trained token" not in said and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["AutoTokenizer", "GPT2Tokenizer", "TokenizersBackend"])
def test_a_tokenizer_type_that_reads_the_tokenizer_as_its_own_class_does_is_used(name, tiny_config, tmp_path):
    from typer.testing import CliRunner

    from llmkit.cli import app

    config = tiny_config(tokenizer_type=name, dataset_prepared_path=str(tmp_path / "prepared"))
    result = CliRunner().invoke(app, ["preprocess", str(config)])
    assert result.exit_code == 0, result.output


def test_a_local_folder_with_ds_type(make_cfg, tokenizer, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("First line to continue.\nSecond line to continue.\n")
    cfg = make_cfg([{"path": str(folder), "type": "completion", "ds_type": "text"}])
    assert build_datasets(cfg, tokenizer).stats.datasets[0].kept == 2


def test_a_hub_dataset_is_asked_for_by_id_name_split_and_revision(make_cfg, tokenizer, monkeypatch):
    calls = []

    def load_dataset(path: str, **kwargs: object) -> Dataset:  # the hub itself is out of reach in tests
        calls.append((path, kwargs))
        return Dataset.from_list([ALPACA_ROW])

    monkeypatch.setattr(sources, "load_dataset", load_dataset)
    spec = {"path": "org/colours", "type": "alpaca", "name": "small", "split": "validation", "revision": "v1.0"}
    data = build_datasets(make_cfg([spec]), tokenizer)
    assert calls == [("org/colours", {"name": "small", "data_files": None, "split": "validation", "revision": "v1.0"})]
    assert data.stats.datasets[0].source == "hub dataset org/colours" and len(data.train) == 1


def test_the_cache_keeps_an_entry_another_run_finished_first(tmp_path):
    first, second = Dataset.from_list([{"input_ids": [1, 2]}]), Dataset.from_list([{"input_ids": [3, 4]}])
    save_prepared(tmp_path, "key", first, None, "{}")
    save_prepared(tmp_path, "key", second, None, "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # and no temporary folder is left behind
    assert Dataset.load_from_disk(str(tmp_path / "key" / "train")).to_list() == first.to_list()


def test_padding_collator_pads_rows_and_masks_the_padding(make_cfg, tokenizer):
    rows = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": [8], "labels": [8], "attention_mask": [1]},
    ]
    batch = make_collator(make_cfg(), tokenizer)(rows)
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    padded = make_collator(make_cfg(pad_to_sequence_len=True, sequence_len=8), tokenizer)(rows)
    assert padded["input_ids"].shape == (2, 8)


def test_packed_collator_flattens_the_batch_for_flash_attention(make_cfg, tokenizer):
    rows = Dataset.from_list([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    packed, _ = pack_dataset(rows, 3)  # one row per sequence
    batch = make_collator(make_cfg(sample_packing=True, flash_attention=True), tokenizer)(list(packed))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]] and batch["use_cache"] is False
    assert isinstance(batch["input_ids"], torch.Tensor)
    # a hub flash kernel (gpt-oss's examples) is flash attention to transformers: unflattened, the rows would attend
    # to each other, its packed path reading position_ids only in a batch of one
    hub_kernel = make_cfg(sample_packing=True, attn_implementation="kernels-community/vllm-flash-attn3")
    assert make_collator(hub_kernel, tokenizer)(list(packed))["input_ids"].tolist() == [[5, 6, 7, 8, 9]]


def test_stats_table_counts_every_dataset_and_the_packing(write_rows, make_cfg, tokenizer):
    rows = [{**ALPACA_ROW, "output": str(i)} for i in range(6)]
    cfg = make_cfg([{"path": str(write_rows(rows, "jsonl")), "type": "alpaca"}], sample_packing=True)
    stats = build_datasets(cfg, tokenizer).stats
    console = Console(record=True, width=200)
    console.print(stats_table(stats))
    text = console.export_text()
    assert re.search(r"rows\d\.jsonl\s*│\s*alpaca\s*│\s*6\s*│\s*6\s*│\s*0\s*│\s*0", text), text
    assert f"train 6 rows, packed into {stats.train_sequences} sequences (" in text and "eval 0 rows" in text


def test_shipped_datasets_run_as_a_module():
    check = [sys.executable, "-m", "llmkit.data.shipped", "--check"]
    assert subprocess.run(check, capture_output=True, timeout=120).returncode == 0


def test_default_dataset_command_writes_and_checks(tmp_path, monkeypatch, capsys):
    paths = [tmp_path / "mcqa.jsonl", tmp_path / "skill.jsonl"]
    monkeypatch.setattr(default_dataset, "DATASET_FILE", paths[0])
    monkeypatch.setattr(skill_dataset, "DATASET_FILE", paths[1])
    assert shipped.main(check=True) == 1  # no files yet
    assert shipped.main() == 0
    assert paths[0].read_text() == shipped.render(default_dataset.generate_rows())
    assert paths[1].read_text() == shipped.render(skill_dataset.generate_rows())
    assert shipped.main(check=True) == 0
    paths[1].write_text(paths[1].read_text()[1:])
    assert shipped.main(check=True) == 1
    assert "differs from the generator" in capsys.readouterr().out
