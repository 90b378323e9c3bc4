"""The `dataset_prepared_path` cache: tokenized, split and packed rows, keyed by everything that shapes them.

Layout: `<dataset_prepared_path>/<key>/{train,eval}/` (datasets' save_to_disk) and `stats.json`. A folder is
built beside its final name and renamed (`llmkit.core.files`), so an interrupted run never leaves a
half-written entry to be reused.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset, load_from_disk

from llmkit.config.sections import local_data_files
from llmkit.core.files import clean_stale, sha256_bytes, sha256_file, staging_dir, user_path
from llmkit.data.user_strategy import module_digest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmkit.config.schema import AxolotlConfig
    from llmkit.config.sections import DatasetSpec

LOG = logging.getLogger(__name__)


@functools.cache
def data_code_digest() -> str:
    """sha256 of the data stage's own code (llmkit/data/*.py): rows prepared by another version, whose tokenizing,
    masking or packing may differ, are not reused (a number bumped by hand was forgotten, and stale rows trained)."""
    folder = Path(__file__).parent
    return sha256_bytes(b"".join(path.name.encode() + path.read_bytes() for path in sorted(folder.glob("*.py"))))


def _file_digests(path: Path) -> list[tuple[str, str]]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(file.relative_to(path) if path.is_dir() else file.name), sha256_file(file)) for file in files]


def dataset_identity(spec: DatasetSpec) -> dict[str, Any]:  # Any: the spec as JSON, then the files' digests
    """A dataset spec's settings, with the sha256 of its local files (None for a hub dataset) and of the local files
    its data_files name (outside `path` too: `path: json` with `data_files: rows.jsonl` reads a local file)."""
    raw = spec.model_dump(mode="json")
    local = user_path(spec.path)
    # hub datasets: the spec names them; a device or pipe is refused when read (hashing it would never end)
    raw["_files"] = _file_digests(local) if local.is_file() or local.is_dir() else None
    raw["_data_files"] = _data_files_digests(local if local.is_dir() else None, spec.data_files or [])
    return raw


def _data_files_digests(folder: Path | None, data_files: list[str]) -> list[tuple[str, str]]:
    """The local files `data_files` names, in `folder` (the dataset's; None: the working folder, as for a hub
    dataset), with their sha256: the files the loader reads, by its own rule (a literal file before a pattern)."""
    return [(str(path), sha256_file(path)) for path in local_data_files(data_files, folder)]


def _tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict[str, str | dict[str, str] | None]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return {
        "class": type(tokenizer).__name__,
        "vocab": sha256_bytes(vocab.encode()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template,
    }


def _chat_identity(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What chat rows also depend on: the template each chat dataset resolves to (a jinja file's contents
    included), and the tokens that end a turn."""
    from llmkit.data.chat import ChatDefaults, resolve_template
    from llmkit.data.prompts import CHAT_TYPES

    defaults = ChatDefaults.from_config(cfg)
    templates = []
    for _, _, spec in cfg.dataset_entries():
        if spec.base_type in CHAT_TYPES:
            try:
                templates.append(sha256_bytes(resolve_template(spec, tokenizer, defaults).encode()))
            except ValueError as err:  # preparing the rows says so, naming the dataset
                templates.append(str(err))
    return {"templates": templates, "eot_tokens": list(defaults.eot_tokens)}


def cache_key(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the dataset specs with their files' contents, the tokenizer and the settings that shape rows."""
    identity = {
        "code": data_code_digest(),
        "datasets": [dataset_identity(spec) for spec in cfg.datasets],
        "test_datasets": [dataset_identity(spec) for spec in cfg.test_datasets or []],
        # What a dataset's rows also depend on: a user module's code, the config-level chat template.
        "modules": [module_digest(spec.user_module, cfg) for _, _, spec in cfg.dataset_entries() if spec.user_module],
        "chat": _chat_identity(cfg, tokenizer),
        "deduplicate": cfg.dataset_exact_deduplication,
        "shuffle": [cfg.shuffle_before_merging_datasets, cfg.shuffle_merged_datasets],
        "excess_length_strategy": cfg.excess_length_strategy,
        "tokenizer": _tokenizer_identity(tokenizer),
        "sequence_len": cfg.sequence_len,
        "train_on_inputs": bool(cfg.train_on_inputs),
        "sample_packing": bool(cfg.sample_packing),
        "eval_sample_packing": cfg.eval_sample_packing is not False,
        "val_set_size": cfg.val_set_size,
        "seed": cfg.seed,
    }
    return sha256_bytes(json.dumps(identity, sort_keys=True, default=str).encode())[:20]


def load_prepared(root: Path, key: str) -> tuple[Dataset, Dataset | None, str] | None:
    """The cached (train, eval, stats JSON) under `root/key`, or None when there is none."""
    entry = user_path(root) / key
    if not (entry / "stats.json").is_file():
        return None
    evaluation = load_from_disk(str(entry / "eval")) if (entry / "eval").is_dir() else None
    return load_from_disk(str(entry / "train")), evaluation, (entry / "stats.json").read_text()


def save_prepared(root: Path, key: str, train: Dataset, evaluation: Dataset | None, stats_json: str) -> Path:
    root = user_path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / key
    clean_stale(target)
    with staging_dir(target, "prepare") as tmp:
        train.save_to_disk(str(tmp / "train"))
        if evaluation is not None:
            evaluation.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(stats_json)  # written last: its presence marks a complete entry
        if not target.exists():  # else another run finished the same entry first; theirs is as good as ours
            tmp.rename(target)
    LOG.info("Saved the prepared dataset to %s", target)
    return target
