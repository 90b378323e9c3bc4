"""Several LoRA adapters folded into one model (the seeds' "model fusion"), through peft's add_weighted_adapter;
one adapter with a weight is merged scaled by it.

    llmkit merge --weighted fusion.yml --out runs/fused
    llmkit merge --adapter runs/a --adapter runs/b --weight 0.7 --weight 0.3 --combination ties --density 0.5 \
        --out runs/fused

A fusion file:

    base_model: HuggingFaceTB/SmolLM2-135M-Instruct   # optional: the first adapter's base
    combination_type: ties                           # linear, cat, svd, ties, dare_ties, dare_linear, ...
    density: 0.5                                     # fraction of delta entries kept (ties, dare_*, magnitude_prune)
    adapters:
      - {path: runs/a, weight: 0.7}
      - {path: runs/b, weight: 0.3}

peft combines the adapters into a new one (SVD-compressed for ties/dare), which is then merged like any adapter.
Combining loads the base once in the merge dtype (peft's tuner needs the model's modules); the merge after it
streams as usual.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmkit.core.errors import problems
from llmkit.core.files import user_path
from llmkit.core.models import DEFAULT_MAX_SHARD_SIZE, adapter_key_mapping, resolve_model
from llmkit.core.shapes import find_model_config
from llmkit.core.yaml_files import YamlFileError, read_mapping
from llmkit.merge import weights as mw
from llmkit.merge.fold import (
    ADAPTER_FILES,
    TOKENIZER_FILES,
    MergeReport,
    check_adapter_dir,
    check_merge_target,
    check_same_base,
    fingerprint,
    merge_options,
    plan_merge,
    run_merge,
    trained_on,
    training_config,
    warn_other_base,
)

LOG = logging.getLogger(__name__)

CombinationType = Literal[
    "linear",
    "cat",
    "svd",
    "ties",
    "ties_svd",
    "dare_ties",
    "dare_linear",
    "dare_ties_svd",
    "dare_linear_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
]
_NEEDS_DENSITY = ("ties", "dare", "magnitude_prune")
# peft adds these up entry by entry in one rank: each module needs the same rank in every adapter (`cat` stacks the
# ranks, the *svd types re-factor the combined delta)
_SAME_RANK = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")


# allow_inf_nan: a weight of nan or inf made a merged model of NaNs, and `--weight nan` passed as a float
_SPEC = ConfigDict(extra="forbid", allow_inf_nan=False)


class WeightedAdapter(BaseModel):
    model_config = _SPEC

    path: Path = Field(description="Adapter directory (a training run's output_dir).")
    weight: float = Field(1.0, description="Its weight in the combination.")


class WeightedMerge(BaseModel):
    """Which adapters to combine, and how (peft's `add_weighted_adapter` arguments)."""

    model_config = _SPEC

    base_model: str | None = Field(None, description="Hub id or directory; empty: the first adapter's base.")
    combination_type: CombinationType = Field("linear", description="peft's combination method.")
    density: float | None = Field(None, gt=0, le=1, description="Fraction of entries kept (ties, dare_*, prune).")
    majority_sign_method: Literal["total", "frequency"] = Field("total", description="ties: how signs are elected.")
    seed: int = Field(0, description="dare_* drops entries at random; the seed makes the merge repeatable.")
    adapters: list[WeightedAdapter] = Field(min_length=1, description="The adapters (one: scaled by its weight).")

    @model_validator(mode="after")
    def _one_adapter_is_only_scaled(self) -> WeightedMerge:
        # peft's add_weighted_adapter merges a lone adapter linearly whatever combination_type says
        if len(self.adapters) == 1 and (self.combination_type != "linear" or self.density is not None):
            raise ValueError(
                "one adapter is merged scaled by its weight (linear): combination_type and density combine several "
                "adapters"
            )
        return self

    @model_validator(mode="after")
    def _density_where_needed(self) -> WeightedMerge:
        if self.density is None and self.combination_type.startswith(_NEEDS_DENSITY):
            raise ValueError(f"combination_type {self.combination_type} needs density (e.g. 0.5)")
        return self


def load_weighted(path: str | Path) -> WeightedMerge:
    """Read a fusion YAML; adapter paths are relative to the file. Errors name the file and the key path."""
    path = Path(path)
    try:
        spec = WeightedMerge.model_validate(read_mapping(path, "a weighted-merge file", "adapters: ...")[0])
    except YamlFileError as err:
        if err.unreadable:
            raise ValueError(f"Cannot read the weighted-merge file {path}: {err}") from None
        raise ValueError(f"Invalid weighted-merge file {path}:\n  - {err}") from None
    except ValidationError as err:
        raise ValueError(f"Invalid weighted-merge file {path}:\n  - " + "\n  - ".join(problems(err))) from None
    for adapter in spec.adapters:  # `~/a` is the home folder's a, as in every path the user writes
        adapter.path = user_path(adapter.path)
        adapter.path = adapter.path if adapter.path.is_absolute() else path.parent / adapter.path
    return spec


def merge_weighted(
    spec: WeightedMerge,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    nf4_roundtrip: bool = False,
    verify: bool = True,
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE,
) -> MergeReport:
    """Combine `spec.adapters` into one adapter and merge it into the base; arguments as `merge_adapter`'s."""
    adapters = [check_adapter_dir(a.path) for a in spec.adapters]
    read = [mw.read_lora_adapter(adapter) for adapter in adapters]  # each adapter's files, read once for all below
    check_ranks(read, spec.combination_type)
    check_combinable(read)
    key_mappings = [adapter_key_mapping(files.tensors, files.path) for files in read]  # as peft is to load each
    check_merge_target(Path(out_dir), adapters, max_shard_size)  # before a base model is downloaded
    base = resolve_model(spec.base_model or trained_on(adapters[0]))
    cfg = training_config(adapters[0])
    options = merge_options(dtype, cfg, base.path, nf4_roundtrip, verify, max_shard_size)
    while read:  # peft's own mismatch is a state-dict dump naming neither the adapter nor its base
        plan_merge(base.path, read.pop(0), options.dtype)  # let go once checked: peft reads them to combine them
    check_same_base(adapters)  # those that fit the base, but were trained on different models
    if spec.base_model:
        warn_other_base(adapters[0], base, find_model_config(str(base.path)).config, f"the base {spec.base_model}")
    inputs = {
        "base": fingerprint(base.path),
        "adapters": [fingerprint(a, ADAPTER_FILES) for a in adapters],
        "weighted": spec.model_dump(mode="json", exclude={"adapters"})
        | {"weights": [a.weight for a in spec.adapters]},
    }
    # the folders read, as a single merge names its adapter: a path written in the YAML is relative to its folder
    weighted = (f"{a.weight:g} x {path}" for a, path in zip(spec.adapters, adapters, strict=True))
    label = " + ".join(weighted) + f" ({spec.combination_type})"
    return run_merge(
        base,
        lambda staging: combine_adapters(spec, key_mappings, base.path, options.dtype, staging),
        inputs,
        Path(out_dir),
        options,
        label=label,
    )


def check_ranks(adapters: list[mw.AdapterFiles], combination_type: str) -> None:
    """Refuse, naming the module and its ranks, what peft would fail on with a bare tensor-size error."""
    if combination_type not in _SAME_RANK:
        return
    first, first_ranks = adapters[0].path, mw.lora_ranks(adapters[0])
    for adapter in adapters[1:]:
        ranks = mw.lora_ranks(adapter)
        for module in sorted(first_ranks.keys() & ranks.keys()):
            if first_ranks[module] != ranks[module]:
                raise ValueError(
                    f"peft cannot combine {first} and {adapter.path} with combination_type {combination_type}: "
                    f"{module} has rank {first_ranks[module]} in the first but {ranks[module]} in the second "
                    f"(r or rank_pattern), and {combination_type} needs one rank per module; use cat (the ranks add "
                    "up) or an svd type (svd, ties_svd, dare_ties_svd, ...: re-factored to one rank)"
                )


def check_combinable(adapters: list[mw.AdapterFiles]) -> None:
    """Refuse adapters with fully trained modules or embedding rows: peft's combination keeps the base's copy of
    such a module or row (the trained one would be lost without a word), or fails on it, as it fails on LoRA on
    parameters."""
    for adapter in adapters:
        if modules := adapter.config.modules_to_save:
            raise ValueError(
                f"{adapter.path} trains {', '.join(modules)} fully (modules_to_save, axolotl's "
                "lora_modules_to_save): a weighted merge cannot combine fully trained modules (peft keeps only the "
                "base's); merge that adapter alone (llmkit merge --adapter DIR)"
            )
        if parameters := adapter.config.target_parameters:
            raise ValueError(
                f"{adapter.path} trains fused MoE expert parameters {sorted(parameters)} (target_parameters, "
                "axolotl's lora_target_parameters): peft's weighted combination cannot combine LoRA on parameters; "
                "merge that adapter alone, at full weight (llmkit merge --adapter DIR)"
            )
        if indices := adapter.config.trainable_token_indices:
            raise ValueError(
                f"{adapter.path} trains embedding rows {indices} (trainable_token_indices): a weighted merge cannot "
                "combine them (peft keeps the base's rows); merge that adapter alone (llmkit merge --adapter DIR)"
            )


def combine_adapters(
    spec: WeightedMerge, key_mappings: list[dict[str, str] | None], base_dir: Path, dtype: torch.dtype, out: Path
) -> Path:
    """peft's add_weighted_adapter over the spec's adapters, each loaded with its key_mapping
    (`models.adapter_key_mapping`); the combined adapter is saved in `out/weighted`."""
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    names = [f"adapter_{i}" for i in range(len(spec.adapters))]
    # each under a name of its own: keys saved with peft's adapter name (lora_A.default.weight) are mapped as the
    # server maps them, else peft would load them nowhere and combine the adapter without its weights
    paths = [adapter.path for adapter in spec.adapters]
    peft_model = PeftModel.from_pretrained(model, paths[0], adapter_name=names[0], key_mapping=key_mappings[0])
    for name, path, key_mapping in zip(names[1:], paths[1:], key_mappings[1:], strict=True):
        peft_model.load_adapter(path, adapter_name=name, key_mapping=key_mapping)
    torch.manual_seed(spec.seed)
    try:
        peft_model.add_weighted_adapter(
            names,
            [a.weight for a in spec.adapters],
            "weighted",
            combination_type=spec.combination_type,
            density=spec.density,
            majority_sign_method=spec.majority_sign_method,
        )
    except ValueError as err:
        raise ValueError(f"peft cannot combine {[str(a.path) for a in spec.adapters]}: {err}") from err
    # finite weights still overflow: peft scales each adapter's factors by sqrt(weight), in float32
    if bad := mw.first_non_finite(get_peft_model_state_dict(peft_model, adapter_name="weighted")):
        weights = ", ".join(f"{a.weight:g}" for a in spec.adapters)
        raise ValueError(
            f"peft's {spec.combination_type} combination with weights {weights} is not finite: {bad}; "
            "use smaller weights"
        )
    # peft copies the first adapter's config for the new one, use_rslora included, and gives it lora_alpha = r:
    # with rsLoRA its scale would be sqrt(r) instead of 1, multiplying the whole combined delta.
    peft_model.peft_config["weighted"].use_rslora = False
    peft_model.save_pretrained(out, selected_adapters=["weighted"])
    combined = out / "weighted"  # peft saves a non-default adapter in a folder of its name
    first = spec.adapters[0].path
    for name in TOKENIZER_FILES:
        if (first / name).is_file():  # the adapters share a tokenizer; training may have added tokens to it
            shutil.copy2(first / name, combined / name)
    return combined
