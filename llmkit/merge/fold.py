"""llmkit merge CONFIG | llmkit merge --base B --adapter A --out O: fold a LoRA adapter into 16-bit base weights.

The base is read unquantized, shard by shard, and never merged while 4-bit; the result is written in the
training dtype into `<output_dir>/merged` with config, generation config and the tokenizer training used.
Everything is written into a temporary sibling directory, verified against base + unmerged adapter, and only
then renamed into place, so a failure or a kill never leaves a half-written `merged` (an earlier good one stays).
A merge whose inputs (base and adapter file hashes, options) are unchanged is skipped, while the folder still holds
the files it wrote (names, sizes and sha256s, recorded beside the inputs); one deleted, cut short or changed is merged
again.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub.utils import tqdm  # off with HF_HUB_DISABLE_PROGRESS_BARS: the CLI piped (cli._logging)

from llmkit.core import devices
from llmkit.core.errors import UsageError
from llmkit.core.files import (
    check_replaceable,
    clean_stale,
    said_if_it_did_not_fit,
    sha256_file,
    staging_dir,
    swap_in,
    through_link,
    user_path,
)
from llmkit.core.models import (
    ADAPTER_WEIGHTS,
    DEFAULT_MAX_SHARD_SIZE,
    ResolvedModel,
    adapter_config,
    resolve_model,
    stop_at_turn_ends,
    tokenizer_dir,
)
from llmkit.core.processes import sigterm_as_exit
from llmkit.core.shapes import base_model_refusal, config_at_hand, find_model_config, model_difference
from llmkit.merge import weights as mw
from llmkit.merge.verify import TOLERANCES, Agreement, verify_merge

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from llmkit.config.schema import AxolotlConfig

LOG = logging.getLogger(__name__)

MANIFEST = "llmkit_merge.json"  # what was merged from what, and into which files; also the rerun's "unchanged" check
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
ADAPTER_FILES = ("adapter_config.json", *ADAPTER_WEIGHTS, *TOKENIZER_FILES)


@dataclass
class MergeReport:
    out_dir: Path
    base: str
    adapter: str
    dtype: str
    nf4_roundtrip: bool
    skipped: bool = False
    seconds: float = 0.0
    size_bytes: int = 0
    files: list[str] = field(default_factory=list)
    verification: dict | None = None  # Agreement.to_dict() plus the tolerance used

    def to_dict(self) -> dict:
        return {**asdict(self), "out_dir": str(self.out_dir)}


@dataclass(frozen=True)
class MergeOptions:
    dtype: torch.dtype
    nf4: mw.Nf4Options | None = None  # round-trip targeted base weights through 4-bit before adding the delta
    verify: bool = True
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE  # largest safetensors file ("5GB", "500MB")
    dtype_note: str | None = None  # why this dtype, when it is a guess: said when merging, not when a merge is kept
    eot_tokens: tuple[str, ...] = ()  # the training config's turn ends: generation stops at them as at EOS


def merge_adapter(
    base_model: str | None,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    nf4_roundtrip: bool = False,
    verify: bool = True,
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE,
    cfg: AxolotlConfig | None = None,
) -> MergeReport:
    """Merge one LoRA adapter into its base and write the model into `out_dir` (atomically; skipped if unchanged).

    Args:
        base_model: hub id or directory; None: the adapter's `base_model_name_or_path`.
        adapter_dir: the peft adapter (a training run's output_dir).
        out_dir: the merged model directory to create or replace.
        dtype: "bfloat16"/"float16"/"float32"; None: the training dtype (see `resolve_merge_dtype`).
        nf4_roundtrip: round-trip the targeted base weights through 4 bits first, as training quantized them
            (QLoRA: NF4; `adapter: lora` + `load_in_4bit`: FP4; README "Merging").
        verify: compare with base + unmerged adapter and fail beyond the tolerance.
        max_shard_size: largest safetensors file ("5GB", "500MB").
        cfg: the training config, where the adapter folder has no `config.resolved.yml` of its own.
    """
    adapter = check_adapter_dir(adapter_dir)
    check_merge_target(Path(out_dir), [adapter], max_shard_size)  # before a base model is downloaded
    key = "base_model" if cfg is not None else "--base" if base_model else "base_model_name_or_path"
    try:
        base = resolve_model(base_model or trained_on(adapter))
    except (FileNotFoundError, NotADirectoryError) as err:  # a folder that is no model (an adapter's): its key named
        raise type(err)(f"{key}: {err}") from None
    base_config = find_model_config(str(base.path)).config
    if problem := base_model_refusal(base_config, base.model_id, key):
        raise ValueError(problem)  # before the base is loaded: remote code would be asked for on the terminal
    if base_model:
        warn_other_base(adapter, base, base_config, f"{key} {base_model}")
    options = merge_options(dtype, training_config(adapter) or cfg, base.path, nf4_roundtrip, verify, max_shard_size)
    inputs = {"base": fingerprint(base.path), "adapter": fingerprint(adapter, ADAPTER_FILES)}
    return run_merge(base, lambda _staging: adapter, inputs, Path(out_dir), options, label=str(adapter))


def merge_from_config(
    cfg: AxolotlConfig,
    *,
    base: str | None = None,
    adapter: str | Path | None = None,
    out: str | Path | None = None,
    **options,
) -> MergeReport:
    """Merge the adapter `cfg` trained (its output_dir) into `<output_dir>/merged`; `options` as `merge_adapter`'s.

    Args:
        base: the base model instead of the config's base_model.
        adapter: the adapter directory instead of the config's output_dir.
        out: the merged model directory instead of `<adapter>/merged`.
    """
    adapter_dir = Path(adapter or cfg.output_dir)
    if adapter is None and not adapter_dir.is_dir():
        source = cfg.source or "CONFIG"
        tried = "" if adapter_dir.is_absolute() else f" (from the current folder: {adapter_dir.absolute()})"
        raise FileNotFoundError(
            f"{source}: output_dir {adapter_dir}{tried} does not exist: train first (llmkit train "
            f"{shlex.quote(str(source))}), or give the adapter with --adapter DIR"
        )
    return merge_adapter(base or cfg.base_model, adapter_dir, out or adapter_dir / "merged", cfg=cfg, **options)


# peft's LoRA inits that change the base weights as they start the adapter (pissa_niter_N included).
BASE_MOVING_INITS = ("pissa", "olora", "corda", "loftq")


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    path = user_path(adapter_dir)
    if path.is_dir() and not (path / "adapter_config.json").is_file() and _holds_full_model(path):
        raise FileNotFoundError(
            f"{path} holds no adapter_config.json but a full model (config.json and weights): a full fine-tune "
            "(adapter: none) needs no merge, serve the folder directly (python -m llmkit.server --model "
            f"{shlex.quote(str(path))})"
        )
    config = adapter_config(adapter_dir)
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.startswith(BASE_MOVING_INITS):
        # peft moved part of the base weights into the adapter (or rounded them) before training, and moves them
        # again when it loads the adapter; folded onto the base as stored, the model was never the trained one
        raise ValueError(
            f"{path}/adapter_config.json has init_lora_weights {init!r}: peft changed the base weights before "
            "training and changes them again when it loads the adapter, so the adapter does not fold onto the "
            "base as stored; llmkit merge cannot merge it: serve it unmerged (python -m llmkit.server --model "
            "BASE --adapter DIR), or train with init true, gaussian or orthogonal"
        )
    for key, why_and_instead in _UNFOLDABLE.items():
        if config.get(key):
            raise ValueError(f"{path}/adapter_config.json has {key} {config[key]}: {why_and_instead}")
    return path.resolve()


# LoRA features that no fold into the base's weights computes: key -> what it does, and what to do instead.
_UNFOLDABLE = {
    "alora_invocation_tokens": (
        "an activated LoRA (aLoRA) acts only from those tokens on, weights folded into the base act on every token "
        "(peft refuses to merge it too); use it unmerged with peft, which finds the invocation tokens in each input"
    ),
    "layer_replication": (
        "LoRA on a base deepened by repeated layers that share the base's weights, into which no fold (peft's "
        "merge_and_unload included) puts each copy's own delta; serve it unmerged (python -m llmkit.server --model "
        "BASE --adapter DIR)"
    ),
}


def _holds_full_model(path: Path) -> bool:
    weights = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
    return (path / "config.json").is_file() and any(next(path.glob(pattern), None) for pattern in weights)


def trained_on(adapter: Path) -> str:
    name = adapter_config(adapter).get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{adapter}/adapter_config.json names no base_model_name_or_path; pass --base")
    return name


def warn_other_base(adapter: Path, base: ResolvedModel, base_config: dict, given: str) -> None:
    """One warning where the base given (`given`: "--base NAME") is another model than the one the adapter was
    trained on (its base_model_name_or_path), as their config.json files show where that model's is at hand (a local
    folder, the cache, shipped: `config_at_hand`). Nothing where it is the same name or folder, or where there is no
    evidence: a local copy and its hub id are the same model, and an unknown hub id may be too. An adapter for
    another model was merged without a word wherever its shapes happened to fit (a Llama adapter into Mistral)."""
    trained = adapter_config(adapter).get("base_model_name_or_path")
    if not trained or trained == base.model_id or user_path(trained).resolve() == base.path:
        return
    found = config_at_hand(trained)
    if found and (difference := model_difference(found.config, base_config)):
        LOG.warning(
            "%s was trained on %s, but %s is another model (%s): the merge is not the model that was trained, even "
            "where the shapes fit",
            adapter,
            trained,
            given,
            difference,
        )


def check_same_base(adapters: list[Path]) -> None:
    """Refuse adapters whose recorded bases (base_model_name_or_path) are different models, as their config.json
    files show where both are at hand (`warn_other_base`): a weighted merge adds their deltas onto one base, and
    folded both without a word where the shapes fit."""
    trained = {a: adapter_config(a).get("base_model_name_or_path") for a in adapters}
    configs = {name: config_at_hand(name) for name in set(trained.values()) if name}
    for i, first in enumerate(adapters):
        for other in adapters[i + 1 :]:
            a, b = configs.get(trained[first]), configs.get(trained[other])
            if trained[first] != trained[other] and a and b and (difference := model_difference(a.config, b.config)):
                raise ValueError(
                    f"{first} was trained on {trained[first]} but {other} on {trained[other]}, another model "
                    f"({difference}): a weighted merge adds their deltas onto one base; merge each onto its own base"
                )


def training_config(adapter: Path) -> AxolotlConfig | None:
    """The config as training ran it (`config.resolved.yml`, written by `llmkit train`), or None."""
    from llmkit.config.schema import RESOLVED_CONFIG, load_config

    path = adapter / RESOLVED_CONFIG
    return load_config(path) if path.is_file() else None


def merge_options(
    dtype: str | None,
    cfg: AxolotlConfig | None,
    base_dir: Path,
    nf4_roundtrip: bool,
    verify: bool,
    max_shard_size: str,
) -> MergeOptions:
    trained = cfg.compute_dtype() if cfg is not None else None
    merge_dtype, dtype_note = resolve_merge_dtype(dtype, trained, base_dir)
    nf4 = None
    if nf4_roundtrip:
        if cfg is not None and not cfg.load_in_4bit:
            raise ValueError("nf4_roundtrip is for QLoRA adapters, but this one was trained with load_in_4bit: false")
        from llmkit.config.sections import BnbConfigKwargs

        quant = cfg.quantization_options if cfg is not None else BnbConfigKwargs()
        # training loaded the base in its compute dtype and quantized from that
        source_dtype = trained or str(merge_dtype).removeprefix("torch.")
        nf4 = mw.Nf4Options(source_dtype, quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant)
    eot_tokens = tuple(cfg.eot_tokens or ()) if cfg is not None else ()
    return MergeOptions(merge_dtype, nf4, verify, max_shard_size, dtype_note, eot_tokens)


def resolve_merge_dtype(dtype: str | None, trained: str | None, base_dir: Path) -> tuple[torch.dtype, str | None]:
    """Explicit dtype, else the 16-bit dtype training used, else the base's 16-bit dtype, else bfloat16 (with a
    note saying so).

    float32 only when asked for: a run trained in float32 (on a CPU) still merges into a 16-bit model, the dtype a
    GPU run of the same config would have used, at half the size.
    """
    if dtype:
        return devices.torch_dtype(dtype), None  # raises on a name that is not bfloat16, float16 or float32
    if trained in ("bfloat16", "float16"):
        return devices.torch_dtype(trained), None
    stored = json.loads((base_dir / "config.json").read_text())
    stored = stored.get("dtype") or stored.get("torch_dtype")
    if stored in ("bfloat16", "float16"):
        return devices.torch_dtype(stored), None
    note = (
        f"Training computed in {trained or 'an unknown dtype'} and the base is stored in {stored}: merging in "
        "bfloat16 (--dtype float32 keeps float32, at twice the size)"
    )
    return torch.bfloat16, note


def fingerprint(directory: Path, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """sha256 of a model's files (weights, configs, tokenizer), by file name."""
    files = [directory / n for n in names] if names else [*directory.glob("*.safetensors"), *directory.glob("*.json")]
    return {f.name: sha256_file(f) for f in sorted(files) if f.is_file()}  # hub snapshots: the blobs' names


def check_merge_target(out_dir: Path, adapters: list[Path], max_shard_size: str) -> None:
    """`out_dir` is a folder the merge may replace whole: new, empty or an earlier merge, and none of the adapters;
    and huggingface_hub can read `max_shard_size` (it only would once the merge writes)."""
    try:
        mw.shard_size_bytes(max_shard_size)
    except ValueError as err:
        raise UsageError(f"--max-shard-size {max_shard_size}: {err}") from None
    out = out_dir.resolve()
    for adapter in adapters:
        if out == adapter.resolve() or out in adapter.resolve().parents:
            raise ValueError(
                f"--out {out_dir} holds the adapter {adapter}, which the merge would replace; give another --out"
            )
    try:
        check_replaceable(out_dir, MANIFEST, "an earlier merge")
    except FileExistsError as err:
        raise ValueError(f"--out {err}") from None
    except OSError as err:  # no permission, a file on the way: said of --out, as train and submission say theirs
        raise type(err)(f"--out {out_dir}: {err}") from None


def run_merge(
    base: ResolvedModel,
    adapter_source: Callable[[Path], Path],
    inputs: dict,
    out_dir: Path,
    options: MergeOptions,
    label: str,
) -> MergeReport:
    """Skip if `inputs` match the existing merge; else build the merge in a temp dir and swap it in.

    `adapter_source(staging_dir)` returns the adapter to merge (a weighted merge builds it there first).
    """
    inputs = {
        **inputs,
        "dtype": str(options.dtype),
        "nf4": asdict(options.nf4) if options.nf4 else None,
        "max_shard_size": options.max_shard_size,
    }
    report = MergeReport(out_dir, base.model_id, label, str(options.dtype).removeprefix("torch."), bool(options.nf4))
    clean_stale(out_dir)  # first: it may restore the out_dir a killed swap had moved aside
    clean_killed_merges(through_link(out_dir).parent)
    previous = _read_manifest(out_dir)
    unchanged = previous.get("inputs") == inputs and (previous.get("verification") or not options.verify)
    if unchanged and (broken := _outputs_problem(out_dir, previous.get("outputs"))):
        LOG.warning("%s no longer holds the merge its %s records (%s); merging again", out_dir, MANIFEST, broken)
    elif unchanged:
        LOG.info("%s already holds this merge (inputs unchanged) in the files it wrote; skipping", out_dir)
        # the inputs are file hashes and options: the same files may be named otherwise now (another adapter folder
        # or path, the base by folder or hub id), so the names are this run's; the folder's facts are its merge's
        made = previous["report"]
        report.skipped, report.seconds, report.size_bytes = True, made["seconds"], made["size_bytes"]
        report.files, report.verification = made["files"], made["verification"]
        return report
    if options.dtype_note:
        LOG.warning(options.dtype_note)
    started = time.monotonic()
    merged, combined = _STAGING
    with _disk_full_named(out_dir), staging_dir(out_dir, merged) as tmp, staging_dir(out_dir, combined) as staging:
        adapter = adapter_source(staging)
        write_merged(base.path, adapter, tmp, options)
        if options.verify:
            result: Agreement = verify_merge(tmp, base.path, adapter, options.dtype, round_trip=options.nf4)
            report.verification = {**result.to_dict(), "tolerance": asdict(TOLERANCES[options.dtype])}
        # The folder's files, the manifest written below among them (as the hub upload lists them); the size is the
        # model's, the manifest's 2 KB aside (it records the size itself).
        report.files = sorted([*(p.name for p in tmp.iterdir()), MANIFEST])
        report.size_bytes = sum(p.stat().st_size for p in tmp.iterdir())
        report.seconds = round(time.monotonic() - started, 1)
        outputs = _output_files(tmp)
        manifest = {
            "inputs": inputs,
            "outputs": outputs,
            "verification": report.verification,
            "report": report.to_dict(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        swap_in(tmp, out_dir)
    return report


# The staging folders' kinds (`.<out>.<kind>-<pid>-*` beside --out): the merged model, and a weighted merge's
# combined adapter. No other command stages folders of these kinds.
_STAGING = ("tmp", "adapter")


def clean_killed_merges(folder: Path) -> None:
    """Remove the staging folders that merges killed with SIGKILL left in `folder`, beside any --out: `clean_stale`
    of each one's target, which removes those whose pid is gone and keeps a running merge's. Only a rerun to the same
    --out removed them, so a killed merge never retried left gigabytes hidden there."""
    for kind in _STAGING:
        for path in folder.glob(f".*.{kind}-*-*"):
            target = path.name[1:].rsplit(f".{kind}-", 1)[0]
            if path.is_dir() and target:
                clean_stale(folder / target)


@contextmanager
def _disk_full_named(out_dir: Path) -> Iterator[None]:
    """SIGTERM as an exit, and a full disk said as one (the bare errno named no disk and no folder); the staging
    folders opened inside are removed either way."""
    with said_if_it_did_not_fit(out_dir, f"the merged model for {out_dir}"), sigterm_as_exit():
        yield


def plan_merge(
    base_dir: Path, adapter_files: Path | mw.AdapterFiles, dtype: torch.dtype
) -> tuple[PretrainedConfig, mw.Adapter, list[mw.TensorPlan]]:
    """The base's config, the adapter (its directory, or its files as read), and the merged model's tensors
    (`mw.plan_tensors`); raises `AdapterMismatchError` where the adapter does not fit the base, naming both and the
    module."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_dir)
    layout = mw.base_layout(base_dir)
    adapter = mw.load_lora_adapter(adapter_files, layout)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return config, adapter, mw.plan_tensors(base_dir, adapter, dtype, layout, tied)


def write_merged(base_dir: Path, adapter_dir: Path, out: Path, options: MergeOptions) -> None:
    """Weights (streamed shard by shard), config, generation config and tokenizer into `out`."""
    config, adapter, plans = plan_merge(base_dir, adapter_dir, options.dtype)
    split = mw.split_shards(plans, options.max_shard_size)
    by_name = {plan.name: plan for plan in plans}
    nf4 = options.nf4.roundtrip if options.nf4 else None
    with tqdm(total=sum(p.nbytes for p in plans), unit="B", unit_scale=True, desc="Merging") as progress:

        def tensors(shard):
            for plan in shard:
                yield mw.merged_tensor(plan, adapter, nf4)
                progress.update(plan.nbytes)

        for name, tensor_names in split.filename_to_tensors.items():
            shard = [by_name[tensor_name] for tensor_name in tensor_names]
            mw.write_shard(out / name, shard, tensors(shard))
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / mw.INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    # the adapter made the head differ from the input embeddings (modules_to_save, or LoRA on one of them)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    untied = tied and any(plan.source_file is None or plan.source is not None for plan in plans)
    _write_configs(config, base_dir, adapter, untied, options, out)


def _write_configs(
    config, base_dir: Path, adapter: mw.Adapter, untied: bool, options: MergeOptions, out: Path
) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    config.dtype = options.dtype
    if getattr(config, "quantization_config", None) is not None or "quantization_config" in config.to_dict():
        del config.quantization_config  # the merged weights are plain 16-bit
    if untied:
        config.tie_word_embeddings = False  # the merged head is a tensor of its own
    # special tokens added in training grew the embeddings (only vocabulary-sized tensors can grow past it)
    config.vocab_size = max([config.vocab_size] + [t.shape[0] for t in adapter.replacements.values() if t.dim() == 2])
    source = tokenizer_dir(base_dir, adapter.path)  # the tokenizer training used, else the base's
    tokenizer = AutoTokenizer.from_pretrained(source)
    if len(tokenizer) > config.vocab_size:
        raise mw.AdapterMismatchError(
            f"The tokenizer from {source} has {len(tokenizer)} tokens but the merged embeddings have "
            f"{config.vocab_size} rows: the adapter {adapter.path} lacks its resized embeddings"
        )
    if (base_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(base_dir)
    else:
        generation = GenerationConfig.from_model_config(config)
    changed = _changed_special_ids(tokenizer, config, base_dir) if source != base_dir else {}
    for key, token_id in changed.items():  # generation stops at the EOS training taught, not the base's
        setattr(config, key, _with_id(getattr(config, key, None), token_id))
        setattr(generation, key, _with_id(getattr(generation, key, None), token_id))
    stop_at_turn_ends(generation, tokenizer, options.eot_tokens)
    config.save_pretrained(out)
    generation.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _changed_special_ids(tokenizer, config, base_dir: Path) -> dict[str, int]:
    """The training tokenizer's bos/eos/pad ids that differ from the base tokenizer's (special_tokens set them)."""
    from transformers import AutoTokenizer

    try:
        base = AutoTokenizer.from_pretrained(base_dir)
    except (OSError, ValueError):  # a base without a tokenizer of its own: its config says what it used
        base = None
    changed = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id, before = getattr(tokenizer, key), getattr(base if base is not None else config, key, None)
        if token_id is not None and token_id != before:
            changed[key] = token_id
    return changed


def _with_id(current, token_id: int):
    # a list (Llama 3's several end-of-turn tokens) keeps its other entries, the new one first
    if isinstance(current, list):
        return current if token_id in current else [token_id, *current]
    return token_id


def _output_files(folder: Path) -> dict[str, dict]:
    """Each file of a merged folder (its manifest aside): size and sha256, as a rerun checks them."""
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.name != MANIFEST
    }


def _outputs_problem(out_dir: Path, recorded: dict | None) -> str | None:
    """Why `out_dir` no longer holds the files its manifest records (deleted, cut short, changed), or None. The
    sizes are compared first: a missing or truncated file is found without reading gigabytes."""
    if not isinstance(recorded, dict) or not recorded:
        return "it lists no files: written by an older llmkit"
    for name, facts in recorded.items():
        file = out_dir / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != facts.get("bytes"):
            return f"{name} is {file.stat().st_size:,} bytes, not the {facts.get('bytes'):,} it was written with"
    for name, facts in recorded.items():
        if sha256_file(out_dir / name) != facts.get("sha256"):
            return f"{name} has changed since it was written (another sha256)"
    return None


def _read_manifest(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def merged_base(folder: Path) -> str | None:
    """The base model `folder` holds a merge into, as its manifest says; None for any other folder."""
    report = _read_manifest(folder).get("report")
    return report.get("base") if isinstance(report, dict) else None
