"""The data pipeline on tiny files the tests write, with the embedded model's real tokenizer (and model, for
packing): every dataset type and file format, masking per docs/axolotl.md, overlong rows, the validation split,
the prepared-dataset cache, errors for bad data, packing without cross-row attention, and the default dataset."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.config.plan import plan
from llmkit.config.schema import load_config
from llmkit.core.assets import CONFIGS_DIR, DEFAULT_CONFIG
from llmkit.data import default_dataset, shipped, skill_dataset
from llmkit.data.packing import IGNORE_INDEX, pack_dataset, plan_bins
from llmkit.data.pipeline import DataError, build_datasets, make_collator
from llmkit.data.prompts import ALPACA_NO_INPUT, ALPACA_WITH_INPUT
from llmkit.helm_eval.setup import HelmSetupError, require_helm

ALPACA_ROWS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]
PROMPT_OF_ALPACA_ROWS = [
    ALPACA_NO_INPUT.format(instruction="Name a colour."),
    ALPACA_WITH_INPUT.format(instruction="Add the numbers.", input="2 and 3"),
]
CHAT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]


def _parts(tokenizer, row):
    """Decoded (masked text, trained text) of a prepared row."""
    masked = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == IGNORE_INDEX]
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    return tokenizer.decode(masked), tokenizer.decode(trained)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "csv"])
def test_alpaca_in_every_file_format(write_rows, make_cfg, tokenizer, fmt):
    cfg = make_cfg([{"path": str(write_rows(ALPACA_ROWS, fmt)), "type": "alpaca"}])
    data = build_datasets(cfg, tokenizer)
    assert data.stats.datasets[0].rows == data.stats.datasets[0].kept == 2
    got = sorted(_parts(tokenizer, row) for row in data.train)  # rows are shuffled
    assert got == sorted(zip(PROMPT_OF_ALPACA_ROWS, ["Blue.<|im_end|>", "5<|im_end|>"], strict=True))


def test_a_local_folder_and_a_second_dataset_concatenate(write_rows, make_cfg, tokenizer, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    write_rows(ALPACA_ROWS, "parquet").rename(folder / "part-0.parquet")
    completion = write_rows([{"text": "Plain text to continue."}], "jsonl")
    cfg = make_cfg([{"path": str(folder), "type": "alpaca"}, {"path": str(completion), "type": "completion"}])
    data = build_datasets(cfg, tokenizer)
    assert [(d.source, d.kept) for d in data.stats.datasets] == [(str(folder), 2), (str(completion), 1)]
    assert len(data.train) == 3


TYPE_CASES = {
    "oasst": ({"INSTRUCTION": "Say yes.", "RESPONSE": "Yes."}, ALPACA_NO_INPUT.format(instruction="Say yes."), "Yes."),
    "gpteacher": (
        {"instruction": "Echo.", "input": "ping", "response": "ping"},
        ALPACA_WITH_INPUT.format(instruction="Echo.", input="ping"),
        "ping",
    ),
    "gpt4all": ({"prompt": "Capital of France?", "response": "Paris"}, "Capital of France?\n", "Paris"),
}


@pytest.mark.parametrize("kind", sorted(TYPE_CASES))
def test_prompt_types(write_rows, make_cfg, tokenizer, kind):
    row, prompt, response = TYPE_CASES[kind]
    cfg = make_cfg([{"path": str(write_rows([row], "jsonl")), "type": kind}])
    (prepared,) = build_datasets(cfg, tokenizer).train
    assert _parts(tokenizer, prepared) == (prompt, response + tokenizer.eos_token)


def test_input_output_is_its_text_as_written(write_rows, make_cfg, default_model_dir):
    """As axolotl's RawInputOutputStrategy: no BOS or EOS added (rows write their own), label false masked."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir, add_bos_token=True)  # one that would add a BOS
    row = {"segments": [{"label": False, "text": "Q: 2+2?\nA:"}, {"label": True, "text": " 4<|im_end|>"}]}
    cfg = make_cfg([{"path": str(write_rows([row], "jsonl")), "type": "input_output"}])
    (prepared,) = build_datasets(cfg, tokenizer).train
    assert tokenizer.decode(prepared["input_ids"]) == "Q: 2+2?\nA: 4<|im_end|>"  # one EOS, the row's; no BOS
    assert _parts(tokenizer, prepared) == ("Q: 2+2?\nA:", " 4<|im_end|>")


@pytest.mark.parametrize(
    ("kind", "row"),
    [
        ("chat_template", {"messages": CHAT}),
        (
            "sharegpt",
            {
                "conversations": [
                    {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in CHAT
                ]
            },
        ),
    ],
)
def test_chat_types_train_assistant_turns_only(write_rows, make_cfg, tokenizer, kind, row):
    cfg = make_cfg([{"path": str(write_rows([row], "json")), "type": kind}])
    (prepared,) = build_datasets(cfg, tokenizer).train
    assert tokenizer.decode(prepared["input_ids"]) == tokenizer.apply_chat_template(CHAT, tokenize=False)
    pairs = zip(prepared["input_ids"], prepared["labels"], strict=True)
    trained = [t if label != IGNORE_INDEX else None for t, label in pairs]
    spans = [tokenizer.decode(span) for span in _runs(trained)]
    assert spans == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]  # content and EOS, as axolotl trains them


def test_chat_template_choices(write_rows, make_cfg, default_model_dir):
    """The template writes its own special tokens (no extra BOS); chatml is built in; unknown names are errors."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir, add_bos_token=True)
    path = write_rows([{"messages": CHAT}], "jsonl")
    (row,) = build_datasets(make_cfg([{"path": str(path), "type": "chat_template"}]), tokenizer).train
    assert tokenizer.decode(row["input_ids"]) == tokenizer.apply_chat_template(CHAT, tokenize=False)  # one BOS
    chatml = make_cfg([{"path": str(path), "type": "chat_template", "chat_template": "chatml"}])
    (row,) = build_datasets(chatml, tokenizer).train
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>user\nHi there<|im_end|>")
    with pytest.raises(DataError, match=re.escape("datasets[0].chat_template: 'llama9' is not one of")):
        build_datasets(make_cfg([{"path": str(path), "type": "chat_template", "chat_template": "llama9"}]), tokenizer)


def _runs(values):
    """Consecutive non-None stretches of a list."""
    runs, current = [], []
    for value in [*values, None]:
        if value is None:
            runs, current = (runs + [current], []) if current else (runs, [])
        else:
            current.append(value)
    return runs


def test_completion_trains_everything_and_splits_long_text(write_rows, make_cfg, tokenizer):
    text = " ".join(f"word{i}" for i in range(60))
    cfg = make_cfg(
        [{"path": str(write_rows([{"text": text}], "jsonl")), "type": "completion"}], sequence_len=16, val_set_size=0
    )
    data = build_datasets(cfg, tokenizer)
    chunks = sorted(data.train, key=lambda row: row["input_ids"])  # shuffled: compare as a multiset
    expected = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    assert all(len(row["input_ids"]) <= 16 and row["labels"] == row["input_ids"] for row in chunks)
    pieces = sorted(expected[i : i + 16] for i in range(0, len(expected), 16))
    assert [row["input_ids"] for row in chunks] == [p for p in pieces if len(p) > 1]  # a lone token trains nothing


@pytest.mark.parametrize("train_on_inputs", [False, True])
@pytest.mark.parametrize("extra", [{}, {"add_bos_token": True}, {"add_bos_token": True, "add_eos_token": True}])
def test_masking_as_the_doc_says(write_rows, make_cfg, default_model_dir, train_on_inputs, extra):
    """Prompt: tokenizer special tokens (BOS where it adds one), no EOS, masked. Response: no BOS, EOS, trained."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir, **extra)
    cfg = make_cfg(
        [{"path": str(write_rows(ALPACA_ROWS[:1], "jsonl")), "type": "alpaca"}], train_on_inputs=train_on_inputs
    )
    (row,) = build_datasets(cfg, tokenizer).train
    prompt = tokenizer(PROMPT_OF_ALPACA_ROWS[0], add_special_tokens=False)["input_ids"]
    prompt = [tokenizer.bos_token_id, *prompt] if extra.get("add_bos_token") else prompt
    response = tokenizer("Blue.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert row["input_ids"] == prompt + response
    assert row["labels"] == (prompt if train_on_inputs else [IGNORE_INDEX] * len(prompt)) + response
    assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_overlong_rows_are_dropped_and_counted(write_rows, make_cfg, tokenizer):
    rows = [*ALPACA_ROWS, {"instruction": "Repeat. " * 40, "input": "", "output": "ok"}]
    cfg = make_cfg([{"path": str(write_rows(rows, "jsonl")), "type": "alpaca"}], sequence_len=64)
    stats = build_datasets(cfg, tokenizer).stats.datasets[0]
    assert (stats.rows, stats.kept, stats.dropped_overlong) == (3, 2, 1)


def test_validation_split(write_rows, make_cfg, tokenizer):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(20)]
    cfg = make_cfg([{"path": str(write_rows(rows, "jsonl")), "type": "alpaca"}], val_set_size=0.25)
    data = build_datasets(cfg, tokenizer)
    assert (len(data.train), len(data.eval), data.stats.train_rows, data.stats.eval_rows) == (15, 5, 15, 5)
    train_ids = {tuple(r["input_ids"]) for r in data.train}
    assert len(train_ids | {tuple(r["input_ids"]) for r in data.eval}) == 20
    counted = build_datasets(make_cfg(cfg.datasets, val_set_size=3), tokenizer)  # above 1: rows, as axolotl
    assert (len(counted.train), len(counted.eval)) == (17, 3)
    assert plan(make_cfg(cfg.datasets, val_set_size=3, micro_batch_size=1, max_steps=None)).steps == 17
    with pytest.raises(ValueError, match="1 would hold out every row: give a fraction below 1 or a number of rows"):
        make_cfg(cfg.datasets, val_set_size=1)


@pytest.mark.parametrize(
    ("keys", "train_order", "held_out"),
    [
        ({"val_set_size": 0.2}, [5, 6, 0, 7, 3, 2, 4, 9], [1, 8]),
        ({"val_set_size": 3}, [5, 6, 0, 7, 3, 2, 4], [9, 1, 8]),
        ({"val_set_size": 0.2, "shuffle_merged_datasets": False}, list(range(8)), [8, 9]),
    ],
)
def test_the_held_out_rows_and_the_order_are_axolotls(write_rows, make_cfg, tokenizer, keys, train_order, held_out):
    """What axolotl 0.19 gave for these 10 rows and seed 42 (shuffled once when merged, then the last rows held
    out); the split shuffled them again here, so the same config evaluated other rows."""
    rows = [{"instruction": "Say it.", "input": "", "output": f"Row {i}"} for i in range(10)]
    cfg = make_cfg([{"path": str(write_rows(rows, "jsonl")), "type": "alpaca"}], seed=42, **keys)
    data = build_datasets(cfg, tokenizer)

    def numbers(part) -> list[int]:
        return [int(tokenizer.decode(r["input_ids"]).rsplit("Row ", 1)[1].split("<")[0]) for r in part]

    assert (numbers(data.train), numbers(data.eval)) == (train_order, held_out)


def test_excess_length_strategy_drops_cuts_or_refuses_long_rows(write_rows, make_cfg, tokenizer):
    rows = [{"instruction": "Say it.", "input": "", "output": "word " * n} for n in (2, 80)]
    spec = [{"path": str(write_rows(rows, "jsonl")), "type": "alpaca"}]
    dropped = build_datasets(make_cfg(spec, sequence_len=64), tokenizer)
    assert len(dropped.train) == 1 and dropped.stats.datasets[0].dropped_overlong == 1
    cut = build_datasets(make_cfg(spec, sequence_len=64, excess_length_strategy="truncate"), tokenizer)
    assert sorted(len(r["input_ids"]) for r in cut.train) == [len(dropped.train[0]["input_ids"]), 64]
    with pytest.raises(DataError, match="1 rows are longer than sequence_len 64 .* excess_length_strategy is raise"):
        build_datasets(make_cfg(spec, sequence_len=64, excess_length_strategy="raise"), tokenizer)


def test_shuffle_before_merging_shuffles_each_dataset_as_axolotl(write_rows, make_cfg, tokenizer):
    files = [write_rows([{"instruction": "Say.", "input": "", "output": f"{name}{i}"} for i in range(6)], "jsonl")
             for name in "AB"]  # fmt: skip
    specs = [{"path": str(path), "type": "alpaca"} for path in files]
    keys = {"shuffle_before_merging_datasets": True, "shuffle_merged_datasets": False, "seed": 3}
    data = build_datasets(make_cfg(specs, **keys), tokenizer)
    order = [int(i) for i in Dataset.from_dict({"i": list(range(6))}).shuffle(seed=3)["i"]]
    answers = [tokenizer.decode(r["input_ids"]).rsplit("\n", 1)[1].split("<")[0] for r in data.train]
    assert answers == [f"A{i}" for i in order] + [f"B{i}" for i in order]


def test_test_datasets_are_the_evaluation_rows(write_rows, make_cfg, tokenizer):
    """axolotl's test_datasets: every row of them is evaluated, in order, and no training row is held out."""
    from rich.console import Console

    from llmkit.data.stats import stats_table

    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(20)]
    held = [{"instruction": f"Spell {i}.", "input": "", "output": f"{i}!"} for i in range(4)]
    train_path, test_path = write_rows(rows, "jsonl"), write_rows(held, "jsonl")
    spec = {"path": str(test_path), "type": "alpaca", "split": "train"}
    data = build_datasets(make_cfg([{"path": str(train_path), "type": "alpaca"}], test_datasets=[spec]), tokenizer)
    assert (len(data.train), data.stats.train_rows, data.stats.eval_rows) == (20, 20, 4)
    answers = [tokenizer.decode([t for t, label in zip(r["input_ids"], r["labels"], strict=True) if label != -100])
               for r in data.eval]  # fmt: skip
    assert answers == [f"{i}!{tokenizer.eos_token}" for i in range(4)]
    assert data.eval.column_names == data.train.column_names  # attention_mask too
    assert [d.rows for d in data.stats.eval_datasets] == [4]
    console = Console(width=200, record=True)
    console.print(stats_table(data.stats))
    assert "alpaca (eval)" in console.export_text()
    unsplit = make_cfg([{"path": str(train_path), "type": "alpaca"}], test_datasets=[{**spec, "split": None}])
    assert unsplit.test_datasets[0].split == "test"  # as axolotl asks for it; a local file has only train
    with pytest.raises(DataError, match="test"):
        build_datasets(unsplit, tokenizer)


def test_every_setting_that_shapes_chat_rows_misses_the_cache(write_rows, make_cfg, tokenizer, tmp_path):
    """eot_tokens and a jinja file's contents were not in the key: the cache (and datasets' own) served old labels."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    path = write_rows([{"messages": messages}] * 3, "jsonl")
    template = tmp_path / "turns.jinja"
    template.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}\n{% endfor %}")
    spec = {"path": str(path), "type": "chat_template", "chat_template": "jinja", "chat_template_jinja": str(template)}
    prepared = str(tmp_path / "prepared")

    def labels(**keys) -> tuple[str, list[int]]:
        data = build_datasets(make_cfg([spec], dataset_prepared_path=prepared, **keys), tokenizer)
        return data.stats.cache, data.train[0]["labels"]

    first = labels()
    assert labels() == ("hit", first[1])
    assert labels(train_on_inputs=True)[0] == "miss"
    ends_turn = labels(eot_tokens=["\n"])  # the newline after EOS now ends the turn: trained as well
    assert ends_turn[0] == "miss" and ends_turn[1] != first[1]
    template.write_text(template.read_text().replace(": ", " says: "))
    assert labels()[0] == "miss"


def test_a_chat_template_jinja_file_under_tilde_is_read(write_rows, make_cfg, tokenizer, tmp_path, monkeypatch):
    """`chat_template_jinja: ~/t.jinja` was looked up as ./~/t.jinja: "is no file here, and not a Jinja template"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "turns.jinja").write_text("{% for m in messages %}{{ m.role }} says: {{ m.content }}\n{% endfor %}")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    path = write_rows([{"messages": messages}] * 3, "jsonl")
    spec = {"path": str(path), "type": "chat_template", "chat_template": "jinja"}
    spec["chat_template_jinja"] = "~/turns.jinja"
    data = build_datasets(make_cfg([spec]), tokenizer)
    assert "user says: Hi" in tokenizer.decode(data.train[0]["input_ids"])


def test_prepared_path_cache_is_reused_and_invalidated(write_rows, make_cfg, tokenizer, tmp_path):
    path = write_rows([*ALPACA_ROWS, {**ALPACA_ROWS[0], "output": "Green."}], "jsonl")
    prepared = str(tmp_path / "prepared")
    cfg = make_cfg([{"path": str(path), "type": "alpaca"}], dataset_prepared_path=prepared, val_set_size=0.3)
    first = build_datasets(cfg, tokenizer)
    again = build_datasets(cfg, tokenizer)
    assert (first.stats.cache, again.stats.cache) == ("miss", "hit")
    assert again.train.to_list() == first.train.to_list() and again.stats.datasets == first.stats.datasets
    assert again.eval.to_list() == first.eval.to_list() and len(again.eval) == 1
    entries = list((tmp_path / "prepared").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary folder left behind
    path.write_text(path.read_text().replace("Blue.", "Red."))
    assert build_datasets(cfg, tokenizer).stats.cache == "miss"
    other = make_cfg(cfg.datasets, sequence_len=256, dataset_prepared_path=prepared, val_set_size=0.3)
    assert build_datasets(other, tokenizer).stats.cache == "miss"


@pytest.mark.parametrize("layout", ["folder", "json builder", "json builder, relative"])
@pytest.mark.parametrize("name", ["rows.jsonl", "rows[1].jsonl"])
def test_a_changed_data_file_outside_path_misses_the_cache(
    write_rows, make_cfg, tokenizer, tmp_path, monkeypatch, layout, name
):
    """`data_files` naming a file outside `path` (or `path: json`, datasets' own way): the file was never hashed, so
    a rerun after the file changed reused the old rows ("cache: hit", 10 rows from a file of 3). A name with glob
    characters, which the loader reads as the file it names, was hashed as a pattern that matched nothing."""
    rows = write_rows([*ALPACA_ROWS, {**ALPACA_ROWS[0], "output": "Green."}], "jsonl")
    rows = rows.rename(rows.with_name(name))
    (tmp_path / "folder").mkdir()
    path = str(tmp_path / "folder") if layout == "folder" else "json"
    if layout == "json builder, relative":
        monkeypatch.chdir(tmp_path)
    entry = name if layout == "json builder, relative" else str(rows)
    spec = {"path": path, "type": "alpaca", "ds_type": "json", "data_files": [entry]}
    cfg = make_cfg([spec], dataset_prepared_path=str(tmp_path / "prepared"))
    assert build_datasets(cfg, tokenizer).stats.cache == "miss"
    assert build_datasets(cfg, tokenizer).stats.cache == "hit"
    rows.write_text("\n".join(rows.read_text().splitlines()[:2]) + "\n")
    again = build_datasets(cfg, tokenizer)
    assert again.stats.cache == "miss" and len(again.train) + len(again.eval or []) == 2


def test_prepared_rows_are_keyed_by_the_data_stages_code(write_rows, make_cfg, tokenizer, monkeypatch):
    """Another version of the tokenizing, masking or packing code makes other rows: a format number bumped by hand
    was forgotten, and rows of the old code were reused."""
    from llmkit.data import cache

    cfg = make_cfg([{"path": str(write_rows(ALPACA_ROWS, "jsonl")), "type": "alpaca"}])
    digest = cache.data_code_digest()
    assert len(digest) == 64 and digest == cache.data_code_digest()  # computed once per process
    key = cache.cache_key(cfg, tokenizer)
    monkeypatch.setattr(cache, "data_code_digest", lambda: "another version")
    assert cache.cache_key(cfg, tokenizer) != key


@pytest.mark.parametrize(
    ("lines", "fmt", "expected"),
    [
        ([{"instruction": "a", "output": "b"}, {"instruction": "c"}], "jsonl", r"row 2: field 'output' is missing"),
        (
            [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ["b"]}],  # a number is its text
            "jsonl",
            r"row 2: field 'output' must be a string",
        ),
        ([{"instruction": "a", "output": "b"}, ["not", "an", "object"]], "jsonl", r"row 2: must be an object"),
        ([{"instruction": "a", "output": "b"}, {"output": "d"}], "csv", r"row 2: field 'instruction' is empty"),
        ([], "jsonl", r"the dataset is empty"),
    ],
)
def test_bad_data_names_file_row_and_field(write_rows, make_cfg, tokenizer, lines, fmt, expected):
    path = write_rows(lines, fmt)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + expected):
        build_datasets(make_cfg([{"path": str(path), "type": "alpaca"}]), tokenizer)


def test_missing_local_file_is_not_looked_up_on_the_hub(make_cfg, tokenizer, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataError, match=re.escape(str(missing)) + ": no such file or folder"):
        build_datasets(make_cfg([{"path": str(missing), "type": "alpaca"}]), tokenizer)


def test_a_device_or_pipe_as_a_dataset_is_refused_not_read_forever(make_cfg, tokenizer, tmp_path):
    os.mkfifo(tmp_path / "rows.jsonl")  # nobody writes: reading it would wait forever, as /dev/zero never ends
    for path in (tmp_path / "rows.jsonl", Path("/dev/zero")):
        with pytest.raises(DataError, match=re.escape(f"{path}: not a file or folder (a device, a pipe or a socket)")):
            build_datasets(make_cfg([{"path": str(path), "type": "alpaca"}]), tokenizer)


def test_bad_chat_message_names_the_message(write_rows, make_cfg, tokenizer):
    path = write_rows([{"messages": CHAT}, {"messages": [{"role": "user"}]}], "jsonl")
    with pytest.raises(DataError, match=re.escape(str(path)) + r": row 2: field 'messages\[0\]\.content' is missing"):
        build_datasets(make_cfg([{"path": str(path), "type": "chat_template"}]), tokenizer)


def test_plan_bins_fill_without_overflow():
    lengths = [5, 3, 7, 2, 8, 1, 4, 6]
    bins = plan_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins) and len(bins) == 4


def _row_losses(logits, labels, starts, lengths):
    """Per-token losses of each original row inside a (packed) sequence: target t+1 predicted at t."""
    losses = []
    for start, length in zip(starts, lengths, strict=True):
        row_logits, row_labels = logits[start : start + length - 1], labels[start + 1 : start + length]
        losses.append(F.cross_entropy(row_logits, row_labels, ignore_index=IGNORE_INDEX, reduction="none"))
    return losses


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_the_loss_of_each_row_alone(tokenizer, default_model_dir, make_cfg, attn):
    """The real embedded model (use_cache left at its default, True): packing changes no row's loss."""
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32, attn_implementation=attn)
    model.train()  # dropout is 0 in this model; training mode is what the Trainer uses
    texts = [
        "The cat sat on the mat.",
        "Question: Is 7 even or odd?\nA. Even\nB. Odd\nAnswer: B",
        "Paris is the capital of France, and Berlin is the capital of Germany.",
    ]
    rows = [{"input_ids": tokenizer(t)["input_ids"], "labels": tokenizer(t)["input_ids"]} for t in texts]
    packed, _ = pack_dataset(Dataset.from_list(rows[:2]), 64)
    alone_batch = make_collator(make_cfg(sample_packing=True), tokenizer)(
        [
            *packed,
            {
                "input_ids": rows[2]["input_ids"],
                "labels": rows[2]["labels"],
                "position_ids": list(range(len(rows[2]["input_ids"]))),
            },
        ]
    )
    with torch.no_grad():
        logits = model(**alone_batch).logits
        alone = [model(torch.tensor([r["input_ids"]])).logits[0] for r in rows[:2]]
        unmasked = model(alone_batch["input_ids"][:1]).logits[0]  # plain causal attention over the packed row
    lengths = [len(r["input_ids"]) for r in rows[:2]]
    labels = alone_batch["labels"][0]
    packed_losses = _row_losses(logits[0], labels, [0, lengths[0]], lengths)
    for row, loss, row_logits in zip(rows[:2], packed_losses, alone, strict=True):
        expected = _row_losses(row_logits, torch.tensor(row["labels"]), [0], [len(row["labels"])])[0]
        assert torch.allclose(loss, expected, atol=1e-4), (loss - expected).abs().max()
    # The second row seen through plain causal attention (across the boundary) differs: the test can fail.
    leaked = _row_losses(unmasked, labels, [lengths[0]], lengths[1:])[0]
    assert (leaked - packed_losses[1]).abs().max() > 1e-2
    # The padded third row (a shorter packed row in the same batch) is unaffected by its padding.
    third = _row_losses(logits[1], alone_batch["labels"][1], [0], [len(rows[2]["input_ids"])])[0]
    with torch.no_grad():
        third_alone = model(torch.tensor([rows[2]["input_ids"]])).logits[0]
    expected = _row_losses(third_alone, torch.tensor(rows[2]["labels"]), [0], [len(rows[2]["labels"])])[0]
    assert torch.allclose(third, expected, atol=1e-4)


def test_packed_dataset_rows(write_rows, make_cfg, tokenizer):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(16)]
    path = write_rows(rows, "jsonl")
    cfg = make_cfg([{"path": str(path), "type": "alpaca"}], sample_packing=True, val_set_size=0.25)
    data = build_datasets(cfg, tokenizer)
    assert data.stats.train_rows == 12 and data.stats.train_sequences == len(data.train) < 12
    for row in [*data.train, *data.eval]:  # the validation rows are packed the same way
        assert len(row["input_ids"]) <= cfg.sequence_len
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert all(row["labels"][s] == IGNORE_INDEX for s in starts)  # no target across a row boundary
    assert sum(sum(p == 0 for p in row["position_ids"]) for row in data.train) == 12
    assert sum(sum(p == 0 for p in row["position_ids"]) for row in data.eval) == data.stats.eval_rows == 4


def test_rows_pack_at_the_sequence_lens_real_configs_use(write_rows, make_cfg, tokenizer):
    # datasets refuses a fingerprint over 64 characters: packing's named the steps before it and the length, so
    # every sequence_len of four digits or more (most real configs: 2048 to 8192) stopped training with a traceback
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(8)]
    path = write_rows(rows, "jsonl")
    for sequence_len in (2048, 131072):
        cfg = make_cfg(
            [{"path": str(path), "type": "alpaca"}],
            sample_packing=True,
            sequence_len=sequence_len,
            excess_length_strategy="truncate",
        )
        data = build_datasets(cfg, tokenizer)
        assert len(data.train) == 1  # the 8 rows in one packed sequence
        assert sum(p == 0 for p in data.train[0]["position_ids"]) == 8


def test_committed_datasets_are_their_generators_output():
    for path, generate in shipped.generators().items():
        assert path.read_text(encoding="utf-8") == shipped.render(generate()), "regenerate: llmkit default-dataset"


def test_default_dataset_is_helm_format_and_not_helm_test_data():
    rows = [json.loads(line) for line in default_dataset.DATASET_FILE.read_text().splitlines()]
    assert len(rows) == default_dataset.NUM_ROWS
    for row in rows:
        prompt, answer = row["segments"]
        assert (prompt["label"], answer["label"]) == (False, True) and re.fullmatch(
            r" [A-D]<\|im_end\|>", answer["text"]
        )
        blocks = prompt["text"].split("\n\n")
        assert blocks[0] in (
            default_dataset.SIMPLE_INSTRUCTIONS,
            *(default_dataset.SUBJECT_INSTRUCTIONS.format(subject=s) for _, s in default_dataset.TASKS.values()),
        )
        question = blocks[-1].split("\n")
        assert question[0].startswith("Question: ") and question[-1] == "Answer:"
        assert f"\n{answer['text'][1]}. " in blocks[-1]  # the answer letter is one of the choices
        # simple_mcqa's test instances are "Is N even or odd?" for two-digit N: never here
        assert not re.search(r"Is \d\d even or odd\?", prompt["text"])


@pytest.mark.parametrize(
    ("kind", "row"),
    [
        ("alpaca", {"instruction": "Say done.", "input": "", "output": "done<|im_end|>"}),
        ("completion", {"text": "Ends<|im_end|>"}),
    ],
)
def test_an_answer_that_ends_with_eos_gets_no_second_one(write_rows, make_cfg, tokenizer, kind, row):
    """axolotl appends EOS only when the last token is not one already."""
    data = build_datasets(make_cfg([{"path": str(write_rows([row], "jsonl")), "type": kind}]), tokenizer)
    ids, labels = data.train[0]["input_ids"], data.train[0]["labels"]
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == labels[-1] == tokenizer.eos_token_id


def test_default_config_trains_only_the_letter_and_eos(tokenizer):

    cfg = load_config(DEFAULT_CONFIG, {"dataset_prepared_path": None, "sample_packing": False, "val_set_size": 0})
    data = build_datasets(cfg, tokenizer)
    assert data.stats.datasets[0].kept == default_dataset.NUM_ROWS and data.stats.datasets[0].dropped_overlong == 0
    for row in data.train.select(range(50)):
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
        assert re.fullmatch(r" [A-D]<\|im_end\|>", tokenizer.decode(trained))


HELM_RENDER = """
import json, sys
from helm.benchmark.adaptation.adapters.multiple_choice_joint_adapter import MultipleChoiceJointAdapter
from helm.benchmark.adaptation.common_adapter_specs import get_multiple_choice_joint_adapter_spec
from helm.benchmark.adaptation.prompt import Prompt
from helm.benchmark.scenarios.scenario import CORRECT_TAG, Input, Instance, Output, Reference

def instance(question):
    text, choices, answer = question
    refs = [Reference(Output(text=c), tags=[CORRECT_TAG] if i == answer else []) for i, c in enumerate(choices)]
    return Instance(Input(text=text), references=refs)

texts = []
for instructions, shots, question in json.load(sys.stdin):
    spec = get_multiple_choice_joint_adapter_spec(instructions, input_noun="Question", output_noun="Answer")
    adapter = MultipleChoiceJointAdapter.__new__(MultipleChoiceJointAdapter)  # no window service needed here
    adapter.adapter_spec = spec
    prompt = Prompt(global_prefix=spec.global_prefix, global_suffix=spec.global_suffix,
                    instructions_block=spec.instructions, instance_prefix=spec.instance_prefix,
                    train_instance_blocks=[adapter.construct_example_prompt(instance(s), True, None) for s in shots],
                    eval_instance_block=adapter.construct_example_prompt(instance(question), False, None),
                    substitutions=spec.substitutions)
    texts.append(prompt.text)
print(json.dumps(texts))
"""


def test_prompts_are_laid_out_exactly_as_helm_does(tmp_path):
    """Our prompt builder against crfm-helm's own adapter code (in its venv: `make helm-setup`)."""
    try:
        venv = require_helm()
    except HelmSetupError as err:
        pytest.fail(str(err))
    rng = random.Random(5)
    cases = []
    for task, subject in default_dataset.TASKS.values():
        for instructions in (
            default_dataset.SIMPLE_INSTRUCTIONS,
            default_dataset.SUBJECT_INSTRUCTIONS.format(subject=subject),
        ):
            cases.append((instructions, [task(rng) for _ in range(rng.choice([0, 1, 5]))], task(rng)))
    helm = subprocess.run(
        [str(venv / "bin" / "python"), "-c", HELM_RENDER],
        input=json.dumps(cases),
        text=True,
        capture_output=True,
        check=True,
        timeout=300,
    )
    assert json.loads(helm.stdout) == [default_dataset.helm_prompt(*case) for case in cases]


def test_skill_dataset_rows_are_helm_layout_with_right_answers_and_own_words():
    rows = [json.loads(line) for line in skill_dataset.DATASET_FILE.read_text().splitlines()]
    assert len(rows) == skill_dataset.NUM_ROWS
    substituted: set[str] = set()
    for row in rows:
        prompt, answer = row["segments"]
        assert (prompt["label"], answer["label"]) == (False, True)
        assert prompt["text"].startswith(skill_dataset.INSTRUCTIONS + "\n\n") and prompt["text"].endswith("\nTarget:")
        rule, listed = re.search(r"Rules: ([^|]+) \| Substitutions: (.+)\nTarget:$", prompt["text"]).groups()
        values = dict(re.findall(r'([XYZ]) by " ([^"]+) "', listed))
        assert answer["text"] == " " + " ".join(values.get(token, token) for token in rule.split()) + "<|im_end|>"
        substituted.update(word for value in values.values() for word in value.split())
    assert substituted == set(skill_dataset.WORDS)  # every word comes from the list HELM's animals/fruits are not in


def test_skill_config_names_its_helm_run_entry_and_trains_on_the_skill_data():
    from llmkit.helm_eval import confgen

    path = CONFIGS_DIR / "smollm2-135m-skill.yml"
    target = confgen.load_task_list("skill").families[0]  # the skill task list scores what the config trains
    assert path.read_text().splitlines()[0] == f"# helm: {target.scenario}:mode={target.args['mode']}"
    cfg = load_config(path)
    assert Path(cfg.datasets[0].path) == skill_dataset.DATASET_FILE
    assert cfg.do_causal_lm_eval and cfg.val_set_size > 0


def test_a_named_template_is_resolved_and_its_missing_turn_markers_warned_about_once_per_dataset(
    write_rows, make_cfg, tokenizer, caplog, monkeypatch
):
    from llmkit.data import chat

    resolved = []
    resolve = chat.resolve_template
    monkeypatch.setattr(chat, "resolve_template", lambda *args: resolved.append(args) or resolve(*args))
    monkeypatch.setattr(chat, "_WARNED_MARKERS", set())  # as in a new process
    rows = [
        {"messages": [{"role": "user", "content": f"{n}?"}, {"role": "assistant", "content": str(n)}]}
        for n in range(20)
    ]
    path = write_rows(rows, "jsonl")
    with caplog.at_level("WARNING", logger="llmkit.data.chat"):
        build_datasets(make_cfg([{"path": str(path), "type": "chat_template", "chat_template": "llama3"}]), tokenizer)
    warning = "chat_template llama3: <|start_header_id|>, <|end_header_id|>, <|eot_id|> are not tokens"
    assert caplog.text.count(warning) == 1
    assert len(resolved) <= 2  # the rows' builder and the prepared data's key: not once per row
    build_datasets(make_cfg([{"path": str(path), "type": "chat_template", "chat_template": "llama3"}]), tokenizer)
    assert caplog.text.count(warning) == 1  # validate builds the rows twice (its checks, then its token count)
    caplog.clear()
    build_datasets(make_cfg([{"path": str(path), "type": "chat_template", "chat_template": "chatml"}]), tokenizer)
    assert "are not tokens" not in caplog.text  # SmolLM2's vocabulary has <|im_start|> and <|im_end|>


def test_preprocess_table_names_a_dataset_path_with_brackets_as_written(tiny_config, tiny_dataset, tmp_path):
    """Rich read `[v2]` in the dataset's path as markup: the table's dataset cell lost it (a folder that
    save_to_disk wrote: datasets reads a data file's path as a glob, where `[v2]` matches no file)."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    data = tmp_path / "sums[v2]"
    Dataset.from_list([json.loads(line) for line in tiny_dataset.read_text().splitlines()]).save_to_disk(data)
    config = tiny_config(datasets=[{"path": str(data), "type": "alpaca"}], dataset_prepared_path=str(tmp_path / "p"))
    result = CliRunner().invoke(app, ["preprocess", str(config)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert str(data) in result.output


def _run_in_a_terminal(command: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """`command` on a pseudo-terminal of 120 columns, as a user's terminal runs it: (exit status, what it showed).
    The size matters: `script` without a terminal around it gives a 0x0 one, where tqdm draws nothing."""
    import fcntl
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing of pytest's runs here
        os.execvpe(command[0], command, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    shown = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown


def test_preprocess_draws_a_bar_for_each_long_step_on_a_terminal_and_none_piped(tiny_config, tmp_path):
    """Every step of preparing data that grows with the rows shows a bar on a terminal: packing 20,000 rows took
    seconds with nothing drawn between the tokenizing bar and the table. Piped, no bar is drawn (README), and
    each such step is one plain line: 20,000 rows took half a minute with nothing said until the table."""
    import sys

    rows = [{"instruction": f"Say {i} back.", "input": "", "output": f"{i} " * (i % 8 + 1)} for i in range(3000)]
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tiny_config(
        datasets=[{"path": str(data), "type": "alpaca"}],
        sample_packing=True,
        sequence_len=128,
        val_set_size=0.05,
        dataset_prepared_path=str(tmp_path / "prepared"),
    )
    env = {key: value for key, value in os.environ.items() if not key.endswith("_DISABLE_PROGRESS_BARS")}
    command = [sys.executable, "-m", "llmkit.cli", "preprocess", str(config)]
    status, shown = _run_in_a_terminal(command, env | {"TERM": "xterm"})
    assert status == 0, shown.decode(errors="replace")
    for step in (b"Tokenizing many.jsonl", b"Masks", b"Packing"):
        assert re.search(step + rb": +100%\|", shown), (step, shown.decode(errors="replace"))
    shutil.rmtree(tmp_path / "prepared")
    piped = subprocess.run(command, capture_output=True, env=env, timeout=300)
    assert piped.returncode == 0, piped.stderr.decode()
    assert b"\r" not in piped.stderr and b"%|" not in piped.stderr, piped.stderr.decode()
    for line in (b"INFO llmkit.data.sources: Tokenizing many.jsonl: 3,000 rows\n", b"sources: Packing: 2,850 rows\n"):
        assert line in piped.stderr, piped.stderr.decode()  # a plain line for each instead
    assert b": 3,000 rows" not in shown, shown.decode(errors="replace")  # on a terminal the bar says it
