"""Fold a LoRA adapter into base weights one tensor at a time, streaming the result into safetensors shards.

The output layout (names, shapes, shard boundaries) is planned from the base's safetensors headers before any
weight is read, so each merged tensor goes to disk as soon as it is computed: peak memory is the adapter plus
one base tensor, not a shard and never the whole model. The arithmetic is peft's (`LoraLayer.merge`): delta
B @ A * scale in float32, added to the base weight in the merge dtype; DoRA rescales rows by its magnitude vector.
LoRA on fused MoE expert parameters (peft's ParamWrapper, `target_parameters`) is folded the same way, its delta cut
into the per-expert tensors the checkpoint stores by transformers' own reverse conversion (what save_pretrained
writes), each fused parameter's delta made when the merge reaches its first stored tensor and let go as they are
written (at most a layer's experts' deltas at a time).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from huggingface_hub import StateDictSplit, constants, split_state_dict_into_shards_factory
from huggingface_hub.serialization._base import parse_size_to_int
from peft import LoraConfig
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import load_file

from llmkit.core.models import (
    ADAPTER_WEIGHTS,
    PROMPT_LEARNING,
    adapter_config,
    adapter_weights_file,
    check_model_weights,
    check_named_weights,
    peft_type,
    reading_weights,
    without_adapter_name,
)

_PEFT_PREFIX = "base_model.model."
# adapter key suffix -> LoraModule field; any other adapter tensor replaces the base tensor of the same name
_LORA_PARTS = {
    ".lora_A.weight": "a",
    ".lora_B.weight": "b",
    ".lora_B.bias": "bias",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",  # as a PeftModel's state_dict names it, without the adapter name
    ".lora_embedding_A": "a",
    ".lora_embedding_B": "b",
}
# peft's TrainableTokens (LoRA's trainable_token_indices): the trained rows of an embedding, which replace its rows at
# the config's indices (peft's merge is an index_copy)
_TOKEN_ROWS = ".token_adapter.trainable_tokens_delta"
# peft wraps a trained module and saves its tensors under the wrapper's parts: `base_layer` (LoRA: the base weight
# as training had it, resized embeddings), `modules_to_save` (a module trained in full: the trained copy, also saved
# without the part). Each stands for the module's own tensor.
_WRAPPER_PARTS = (".base_layer.", ".modules_to_save.")
# The base weight beside a modules_to_save copy: peft saves it too when the vocabulary grew (save_embedding_layers),
# but the trained copy replaces it.
_UNTRAINED_COPY = ".original_module."
_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
SINGLE_FILE = constants.SAFETENSORS_SINGLE_FILE
INDEX_FILE = constants.SAFETENSORS_INDEX_FILE


class AdapterMismatchError(ValueError):
    """The adapter cannot be applied to this base (wrong architecture, shapes, or an unsupported method)."""


@dataclass
class LoraModule:
    """One wrapped module's LoRA factors; `delta()` is what peft's merge adds to the module's weight."""

    name: str  # base module path, e.g. model.layers.0.self_attn.q_proj
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    scale: float = 1.0
    embedding: bool = False  # lora_embedding_A/B: an embedding's weight is (tokens, width), the delta transposed
    conv1d: bool = False  # a transformers Conv1D (GPT-2): the weight is stored (in, out), the delta transposed
    quantizable: bool = False  # load_in_4bit makes the base module a bitsandbytes Linear4bit

    @property
    def transposed(self) -> bool:
        return self.embedding or self.conv1d

    def delta(self) -> torch.Tensor:
        delta = self.b.float() @ self.a.float()
        return (delta.T if self.transposed else delta) * self.scale

    def merge_into(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The merged weight in `dtype`, computed in float32 as peft does on the CPU."""
        merged = weight.float() + self.delta()
        if self.magnitude is not None:  # DoRA: each output row rescaled to its learned norm
            merged = (self.magnitude.float() / torch.linalg.norm(merged, dim=1)).view(-1, 1) * merged
        return merged.to(dtype)


@dataclass
class ParameterLora:
    """LoRA on one fused (experts, ., .) parameter (peft's ParamWrapper): a rank-r LoRA per expert, A stacked as
    (r x experts, in) and B as (out, r x experts); `delta()` is what peft's merge adds to the parameter."""

    name: str  # the parameter as the model loads it, e.g. model.layers.1.mlp.experts.gate_up_proj
    shape: tuple[int, ...]  # its shape as loaded
    swapped: bool  # peft's _did_swap_in_out_features: stored (experts, out, in), not (experts, in, out)
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    scale: float = 1.0

    def delta(self) -> torch.Tensor:
        # peft's ParamWrapper.get_delta_weight, in float32
        experts = self.shape[0]
        a = self.a.float().reshape(experts, -1, self.a.shape[-1])  # experts x rank x in
        b = self.b.float().reshape(self.b.shape[0], -1, experts)  # out x rank x experts
        return torch.einsum("o r e, e r i -> e o i" if self.swapped else "o r e, e r i -> e i o", b, a) * self.scale


@dataclass
class ExpertDeltas:
    """The stored tensors each fused parameter's delta falls on (transformers' reverse conversion: Mixtral's
    gate_up_proj is each expert's w1 and w3), computed one fused parameter at a time as the merge reaches it."""

    model: object  # the base on the meta device: what transformers' reverse conversion reads its mapping from
    parts: dict[str, str]  # stored tensor name -> the fused parameter whose delta holds it
    shapes: dict[str, tuple[int, ...]]  # stored tensor name -> the shape of its part of the delta
    _ready: dict[str, torch.Tensor] = field(default_factory=dict)  # computed parts not yet written

    def take(self, stored: str, loras: dict[str, ParameterLora]) -> torch.Tensor:
        if stored not in self._ready:
            from transformers.core_model_loading import revert_weight_conversion

            fused = self.parts[stored]
            self._ready.update(revert_weight_conversion(self.model, {fused: loras[fused].delta()}))
        return self._ready.pop(stored)


@dataclass
class Adapter:
    path: Path
    config: LoraConfig
    modules: dict[str, LoraModule]
    replacements: dict[str, torch.Tensor]  # full tensors (modules_to_save, resized embeddings) by base name
    # trainable_token_indices: stored weight name -> (row indices, the trained rows) that replace those rows
    token_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # target_parameters: LoRA on fused MoE expert parameters, by loaded parameter name, and where each delta falls
    parameters: dict[str, ParameterLora] = field(default_factory=dict)
    expert_deltas: ExpertDeltas | None = None


@dataclass(frozen=True)
class BaseLayout:
    """What the base's module types say about their weights (`base_layout`)."""

    conv1d: frozenset[str]  # Conv1D modules (GPT-2 and its kin): the weight is stored (in, out)
    quantizable: frozenset[str]  # the modules load_in_4bit turns into Linear4bit: what --nf4-roundtrip rounds
    embed: str | None = None  # the input token embeddings' weight as stored, e.g. model.embed_tokens.weight
    head: str | None = None  # the output head's weight as stored (lm_head.weight); a tied base stores only `embed`
    # module path -> the path its tensors are stored under, where transformers renames them on loading (GPT-NeoX's
    # lm_head is stored as embed_out); the adapter names modules, the merge reads and writes stored tensors
    stored_as: dict[str, str] = field(default_factory=dict, compare=False)
    config: dict = field(default_factory=dict, compare=False)  # the base's config.json

    def stored(self, name: str) -> str:
        """The stored name of a module (`lm_head`) or of a module's tensor (`lm_head.weight`)."""
        if name in self.stored_as:
            return self.stored_as[name]
        module, _, leaf = name.rpartition(".")
        return f"{self.stored_as[module]}.{leaf}" if module in self.stored_as else name


def base_layout(base_dir: Path) -> BaseLayout:
    """Read off the base's shape (`llmkit.core.shapes`: its config.json built on the meta device, no weights).

    The adapter cannot tell either fact: peft sets `fan_in_fan_out` per layer from the module type (a QLoRA adapter
    trained on the 4-bit model, where each Conv1D had become an (out, in) Linear4bit, says False), and transformers
    quantizes only some linear layers (not Falcon's FalconLinear, a subclass of nn.Linear).
    """
    from llmkit.core.shapes import model_shape

    shape = model_shape(str(base_dir))
    linear = shape.linear
    conv1d = frozenset(module.name for module in linear if module.conv1d)
    # the token embeddings have a row per vocabulary entry (position embeddings, where a model has them, do not)
    tokens = [module for module in shape.embeddings if module.fan_in == shape.vocab_size] or list(shape.embeddings)
    model_type = json.loads((base_dir / "config.json").read_text()).get("model_type")
    layout = BaseLayout(
        conv1d,
        frozenset(module.name for module in linear if module.quantizable),
        stored_as=_stored_modules(shape.architecture, model_type, base_weight_files(base_dir)),
        config=json.loads((base_dir / "config.json").read_text()),
    )
    embed = layout.stored(f"{tokens[0].name}.weight") if tokens else None
    head = layout.stored(f"{shape.head.name}.weight") if shape.head else None
    return replace(layout, embed=embed, head=head)


def _stored_modules(architecture: str, model_type: str | None, stored: Iterable[str]) -> dict[str, str]:
    """Module path -> stored path for the stored tensors transformers renames on loading (its checkpoint
    conversion mapping: plain renamings; conversions that fuse tensors leave modules no LoRA wraps here)."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # transformers 4 loads tensors under their stored names
        return {}
    transforms = get_checkpoint_conversion_mapping(architecture) or get_checkpoint_conversion_mapping(model_type)
    renamings = [t for t in transforms or [] if isinstance(t, WeightRenaming)]
    modules = {}
    for name in stored if renamings else ():
        loaded = rename_source_key(name, renamings, [])[0]
        stored_module, _, leaf = name.rpartition(".")
        loaded_module, _, loaded_leaf = loaded.rpartition(".")
        if loaded_module != stored_module and leaf == loaded_leaf:
            modules[loaded_module] = stored_module
    return modules


@dataclass
class AdapterFiles:
    """A LoRA adapter folder as read, once, for every check and the merge (`read_lora_adapter`)."""

    path: Path
    config: LoraConfig
    tensors: dict[str, torch.Tensor]  # as saved: base_model.model.<module>.lora_A.weight, ...

    def names(self) -> Iterator[tuple[str, str]]:
        """Each saved key with the name the merge reads it by: without peft's prefix and adapter name."""
        for key in self.tensors:
            yield key, without_adapter_name(key.removeprefix(_PEFT_PREFIX))


def read_lora_adapter(adapter_dir: Path) -> AdapterFiles:
    """A peft LoRA adapter directory's config and weights; any other method is refused, saying what to do instead."""
    kind = peft_type(adapter_dir, adapter_config(adapter_dir))
    if kind != "LORA":
        how = (
            "use it with peft's own generate (its virtual tokens cannot be folded into weights, nor served here)"
            if kind in PROMPT_LEARNING
            else "serve it unmerged, alone, with `python -m llmkit.server --adapter`"
        )
        raise AdapterMismatchError(
            f"{adapter_dir} is a {kind} adapter; only LoRA/QLoRA adapters (DoRA and rsLoRA included) can be "
            f"merged: {how}"
        )
    return AdapterFiles(adapter_dir, LoraConfig.from_pretrained(adapter_dir), read_adapter_weights(adapter_dir))


def load_lora_adapter(adapter: Path | AdapterFiles, layout: BaseLayout) -> Adapter:
    """A peft LoRA adapter (its directory, or its files as read) as per-module factors; `layout` is the base's."""
    files = adapter if isinstance(adapter, AdapterFiles) else read_lora_adapter(adapter)
    modules: dict[str, LoraModule] = {}
    replacements: dict[str, torch.Tensor] = {}
    token_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        check_named_weights(files.tensors, files.path)
    except ValueError as err:
        raise AdapterMismatchError(str(err)) from None
    wrappers, meta = _parameter_wrappers(files.config, layout)
    parameters: dict[str, ParameterLora] = {}
    for key, name in files.names():
        tensor = files.tensors[key]
        part = next((suffix for suffix in (".lora_A.weight", ".lora_B.weight") if name.endswith(suffix)), None)
        if part and name.removesuffix(part) in wrappers:  # a ParamWrapper's factors, named by its module
            lora = wrappers[name.removesuffix(part)]
            parameters[lora.name] = lora
            setattr(lora, _LORA_PARTS[part], tensor)
            continue
        if name.endswith(_TOKEN_ROWS):
            path = name.removesuffix(_TOKEN_ROWS)
            token_rows[layout.stored(f"{path}.weight")] = (_token_indices(files.config, path, files.path), tensor)
            continue
        part = next((suffix for suffix in _LORA_PARTS if name.endswith(suffix)), None)
        if part is None:
            if _UNTRAINED_COPY not in name:
                replacements[layout.stored(_unwrapped(name))] = tensor
            continue
        path = name.removesuffix(part)
        module = modules.setdefault(layout.stored(path), LoraModule(layout.stored(path)))
        setattr(module, _LORA_PARTS[part], tensor)
        module.embedding = module.embedding or "embedding" in part
        module.conv1d = path in layout.conv1d
        module.quantizable = path in layout.quantizable
    for module in [*modules.values(), *parameters.values()]:
        _configure(module, files.config, files.path)
    deltas = _expert_deltas(meta, parameters) if parameters else None
    return Adapter(files.path, files.config, modules, replacements, token_rows, parameters, deltas)


def _parameter_wrappers(config: LoraConfig, layout: BaseLayout) -> tuple[dict[str, ParameterLora], object]:
    """For an adapter with target_parameters: peft's ParamWrapper modules, by the name the adapter saves their
    factors under, each for the parameter it adapts; and the base on the meta device.

    peft names a wrapper by the module holding the parameter, and nests one wrapper per parameter of the same module
    (model.layers.1.mlp.experts.base_layer is gate_up_proj's, model.layers.1.mlp.experts down_proj's): which is which
    is asked of peft, injecting the adapter into the base built on the meta device, so it follows peft's own order.
    """
    if not config.target_parameters:
        return {}, None
    from accelerate import init_empty_weights
    from peft import inject_adapter_in_model
    from peft.tuners.lora.layer import ParamWrapper

    from llmkit.core.shapes import meta_model

    injected = meta_model(layout.config)
    with init_empty_weights():
        inject_adapter_in_model(replace(config, inference_mode=True), injected)
    wrappers = {}
    for name, module in injected.named_modules():
        if isinstance(module, ParamWrapper):
            owner = ".".join(part for part in name.split(".") if part != "base_layer")
            param = f"{owner}.{module.parameter_name}"
            wrappers[name] = ParameterLora(param, tuple(module.get_param().shape), module._did_swap_in_out_features)
    return wrappers, meta_model(layout.config)


def _expert_deltas(meta, parameters: dict[str, ParameterLora]) -> ExpertDeltas:
    """Which stored tensors each fused parameter's delta is added to: transformers' reverse conversion of a
    meta-device tensor of its shape (no arithmetic) names them."""
    from transformers.core_model_loading import revert_weight_conversion

    parts, shapes = {}, {}
    for name, lora in parameters.items():
        for stored, part in revert_weight_conversion(meta, {name: torch.empty(lora.shape, device="meta")}).items():
            parts[stored], shapes[stored] = name, tuple(part.shape)
    return ExpertDeltas(meta, parts, shapes)


def _token_indices(config: LoraConfig, module: str, adapter_dir: Path) -> torch.Tensor:
    """The rows of `module` that trainable_token_indices trains: a list is the input embeddings', a dict maps a
    module name (or a dotted suffix of it) to its own."""
    indices = config.trainable_token_indices
    if isinstance(indices, dict):
        named = [rows for pattern, rows in indices.items() if module == pattern or module.endswith(f".{pattern}")]
        indices = named[0] if named else None
    if not indices:
        raise AdapterMismatchError(f"{adapter_dir}: trainable_token_indices names no rows of {module}")
    return torch.tensor(indices, dtype=torch.long)


def read_adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors: adapter_model.safetensors, else the pickled adapter_model.bin
    (peft's `safe_serialization=False`), read with weights_only so that it cannot run code; NaN or inf in any of
    them is refused, naming the file and the tensor."""
    file = adapter_weights_file(adapter_dir)
    if file is None:
        raise FileNotFoundError(f"{adapter_dir} has no {' or '.join(ADAPTER_WEIGHTS)}")
    with reading_weights(file):
        if file.suffix == ".safetensors":
            tensors = load_file(file)
        else:
            tensors = torch.load(file, map_location="cpu", weights_only=True)
    # merged, NaN or inf makes a model whose every logit is NaN (a diverged run saves such an adapter)
    if bad := first_non_finite(tensors):
        raise ValueError(
            f"{file} is not finite: {bad}. Did training diverge (a nan loss)? Merge an earlier checkpoint, or retrain "
            "with a lower learning rate"
        )
    return tensors


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first floating-point tensor holding NaN or inf, as "NAME holds N NaN or infinite values of M"; None if
    there is none."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            return f"{name} holds {bad} NaN or infinite values of {tensor.numel()}"
    return None


def lora_ranks(adapter: AdapterFiles) -> dict[str, int]:
    """Each wrapped module's LoRA rank (its lora_A's rows: rank_pattern included)."""
    ranks = {}
    for key, name in adapter.names():
        for suffix in (".lora_A.weight", ".lora_embedding_A"):
            if name.endswith(suffix):
                ranks[name.removesuffix(suffix)] = adapter.tensors[key].shape[0]
    return ranks


def _unwrapped(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, ".")
    return name


def _configure(module: LoraModule | ParameterLora, config: LoraConfig, adapter_dir: Path) -> None:
    if module.a is None or module.b is None:
        raise AdapterMismatchError(f"{adapter_dir}: {module.name} has only one of its lora_A/lora_B factors")
    if isinstance(module, ParameterLora):  # one rank per expert: A holds rank x experts rows
        experts, rank = module.shape[0], module.a.shape[0] // module.shape[0]
        if rank * experts != module.a.shape[0] or module.b.shape[1] != module.a.shape[0]:
            raise AdapterMismatchError(
                f"{adapter_dir}: LoRA on {module.name} has factors {list(module.a.shape)} and {list(module.b.shape)}, "
                f"which do not fit its {experts} experts"
            )
        alpha = config.lora_alpha
    else:
        if module.magnitude is not None and module.transposed:
            raise AdapterMismatchError(
                f"{adapter_dir}: DoRA on {module.name} (an embedding or a Conv1D layer) cannot be merged here"
            )
        rank = module.a.shape[0]
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module.name), config.lora_alpha)
    module.scale = alpha / rank**0.5 if config.use_rslora else alpha / rank


@dataclass(frozen=True)
class TensorPlan:
    """Where one output tensor comes from and what it will look like on disk."""

    name: str
    source_file: Path | None  # None: the tensor comes whole from the adapter
    dtype: torch.dtype
    shape: tuple[int, ...]
    source: str | None = None  # the base tensor read, where not `name`: an untied head reads the embeddings

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * self.dtype.itemsize


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def base_weight_files(base_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a model directory (single file or sharded with an index); a file that
    cannot be read is a ValueError naming it (`check_model_weights`)."""
    check_model_weights(base_dir)
    index = base_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: base_dir / file for name, file in weight_map.items()}
    if not (base_dir / SINGLE_FILE).is_file():
        raise FileNotFoundError(f"{base_dir} has no {SINGLE_FILE} or {INDEX_FILE}: merging needs safetensors weights")
    with safe_open(base_dir / SINGLE_FILE, "pt") as f:
        return dict.fromkeys(f.keys(), base_dir / SINGLE_FILE)


def plan_tensors(
    base_dir: Path, adapter: Adapter, dtype: torch.dtype, layout: BaseLayout, tied: bool
) -> list[TensorPlan]:
    """Check that the adapter fits the base, then list the output tensors in the base's order.

    `tied`: the base's config ties its head to the input embeddings. Where the adapter makes them differ, the head
    is planned last, as a tensor of its own (the caller then clears `tie_word_embeddings`).
    """
    files = base_weight_files(base_dir)
    shapes: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    with ExitStack() as stack:
        handles = {file: stack.enter_context(safe_open(file, "pt")) for file in set(files.values())}
        for name, file in files.items():
            view = handles[file].get_slice(name)
            shapes[name] = (_TORCH_DTYPES[view.get_dtype()], tuple(view.get_shape()))
    sources = {name: (file, name) for name, file in files.items()}
    embed, head = layout.embed, layout.head
    stored_once = tied and head is not None and head not in shapes and embed in shapes  # as the embeddings
    split = stored_once and _untie_head(adapter, embed, head)
    if split:  # the head starts from the weight it shared with the embeddings in base + adapter
        shapes[head], sources[head] = shapes[embed], sources[embed]
        lora_embedding = embed.removesuffix(".weight") in adapter.modules
        if lora_embedding and embed in adapter.replacements and head not in adapter.replacements:
            adapter.replacements[head] = adapter.replacements[embed]  # resized: the embeddings' base_layer weight
    elif stored_once:
        adapter.replacements.pop(head, None)  # the same tensor as the new embeddings: stays tied
    _check_fit(base_dir, adapter, shapes, tied)
    plans = []
    for name, (stored, shape) in shapes.items():
        shape = tuple(adapter.replacements[name].shape) if name in adapter.replacements else shape
        file, source = sources[name]
        read = source if source != name else None
        plans.append(TensorPlan(name, file, dtype if stored.is_floating_point else stored, shape, read))
    for name in adapter.replacements.keys() - shapes.keys():  # an untied lm_head from modules_to_save
        plans.append(TensorPlan(name, None, dtype, tuple(adapter.replacements[name].shape)))
    rows = {plan.name: plan.shape[0] for plan in plans if plan.name in (embed, head)}
    if split and rows[embed] != rows[head]:
        raise AdapterMismatchError(
            f"adapter {adapter.path}: the merged {embed} has {rows[embed]} rows but the untied {head} {rows[head]}"
        )
    return plans


def _untie_head(adapter: Adapter, embed: str, head: str) -> bool:
    """Whether base + adapter computes a tied base's head with a weight other than its input embeddings'.

    peft keeps the head on the embeddings' old weight unless told to tie (ensure_weight_tying, which saves the head
    as the same trained copy): a LoRA delta on the embeddings or a modules_to_save copy of them alone leaves it
    there, and peft's own merge_and_unload, folding into the shared tensor, changes the head too (peft #2777).
    """
    if {name.removesuffix(".weight") for name in (embed, head)} & adapter.modules.keys():
        return True
    new_embed, new_head = adapter.replacements.get(embed), adapter.replacements.get(head)
    if new_embed is None or new_head is None:
        return new_embed is not None or new_head is not None
    return not torch.equal(new_embed, new_head)


_TORCH_DTYPES = {code: dtype for dtype, code in _ST_DTYPES.items()}


def _check_fit(base_dir: Path, adapter: Adapter, shapes: dict, tied_embeddings: bool) -> None:
    trained_on = adapter.config.base_model_name_or_path
    where = f"adapter {adapter.path} (trained on {trained_on}) does not fit base model {base_dir}"
    for module in adapter.modules.values():
        name = f"{module.name}.weight"
        replaced = adapter.replacements.get(name)  # a resized embedding: the LoRA fits its new shape
        weight = (replaced.dtype, tuple(replaced.shape)) if replaced is not None else shapes.get(name)
        if weight is None:
            tied = tied_embeddings and "lm_head" in module.name
            hint = " (the base ties it to the input embeddings)" if tied else ""
            raise AdapterMismatchError(f"{where}: the base has no module {module.name}{hint}")
        out_features, in_features = weight[1][::-1] if module.transposed else weight[1]
        if module.b.shape[0] != out_features or module.a.shape[1] != in_features:
            raise AdapterMismatchError(
                f"{where}: {module.name} is {in_features}->{out_features} in the base but "
                f"{module.a.shape[1]}->{module.b.shape[0]} in the adapter"
            )
        if module.bias is not None and f"{module.name}.bias" not in shapes:
            raise AdapterMismatchError(f"{where}: lora_bias on {module.name}, which has no bias in the base")
    deltas = adapter.expert_deltas
    for stored in deltas.parts if deltas else ():
        if stored not in shapes:
            raise AdapterMismatchError(f"{where}: the base stores no {stored}, where {deltas.parts[stored]} falls")
        if shapes[stored][1] != deltas.shapes[stored]:
            raise AdapterMismatchError(
                f"{where}: {stored} is {list(shapes[stored][1])} in the base but {list(deltas.shapes[stored])} as "
                f"part of {deltas.parts[stored]}"
            )
    for lora in adapter.parameters.values():
        # (experts, in, out) as stored, or (experts, out, in) where peft swapped them: A reads in, B writes out
        in_features, out_features = (lora.shape[2], lora.shape[1]) if lora.swapped else lora.shape[1:]
        if lora.a.shape[1] != in_features or lora.b.shape[0] != out_features:
            raise AdapterMismatchError(
                f"{where}: {lora.name} is {list(lora.shape)} in the base but its LoRA factors are "
                f"{list(lora.a.shape)} and {list(lora.b.shape)}"
            )
    for name, (indices, rows) in adapter.token_rows.items():
        weight = adapter.replacements.get(name)
        shape = tuple(weight.shape) if weight is not None else shapes.get(name, (None, None))[1]
        if shape is None or rows.shape[1:] != shape[1:] or len(rows) != len(indices) or indices.max() >= shape[0]:
            raise AdapterMismatchError(
                f"{where}: trainable tokens {indices.tolist()} of {name} are {list(rows.shape)} in the adapter but "
                f"{list(shape) if shape else 'absent'} in the base"
            )
    for name, tensor in adapter.replacements.items():
        base = shapes.get(name)
        untied_head = base is None and tied_embeddings and name.endswith("lm_head.weight")
        # dim 0 may grow: embeddings resized for added tokens
        if not untied_head and (base is None or tuple(tensor.shape[1:]) != base[1][1:]):
            raise AdapterMismatchError(
                f"{where}: {name} is {list(tensor.shape)} in the adapter but {list(base[1]) if base else 'absent'} "
                "in the base"
            )


def read_tensor(file: Path, name: str) -> torch.Tensor:
    # A safetensors handle maps its whole file, and every page read stays in our resident set while the handle
    # is open: reading a shard through one handle costs the shard's size in RSS. One handle per tensor doesn't.
    with safe_open(file, "pt") as handle:
        return handle.get_tensor(name)


def merged_tensor(plan: TensorPlan, adapter: Adapter, nf4: Callable | None) -> torch.Tensor:
    """The output tensor for `plan`: base tensor (cast), adapter replacement, or base + LoRA delta."""
    replaced = plan.name in adapter.replacements  # saved whole (modules_to_save, resized embeddings)
    stored = adapter.replacements[plan.name] if replaced else read_tensor(plan.source_file, plan.source or plan.name)
    tensor = stored.to(plan.dtype)  # peft merges into the base as loaded in the merge dtype; so do we
    if plan.name in adapter.token_rows:  # trainable_token_indices: the trained rows replace the base's
        indices, rows = adapter.token_rows[plan.name]
        tensor = tensor.index_copy(0, indices, rows.to(plan.dtype))
    if adapter.expert_deltas and plan.name in adapter.expert_deltas.parts:  # a fused MoE parameter's LoRA
        # bitsandbytes leaves fused experts in 16 bits, so training saw them unrounded: no 4-bit round trip here
        delta = adapter.expert_deltas.take(plan.name, adapter.parameters)
        return (tensor.float() + delta).to(plan.dtype)
    module = adapter.modules.get(plan.name.removesuffix(".weight")) if plan.name.endswith(".weight") else None
    if module is not None:
        # the weights training saw in 4 bits; a Conv1D had become a Linear4bit, its weight transposed
        if nf4 is not None and module.quantizable:
            tensor = nf4(stored.T.contiguous()).T if module.conv1d else nf4(stored)
        return module.merge_into(tensor, plan.dtype)
    module = adapter.modules.get(plan.name.removesuffix(".bias")) if plan.name.endswith(".bias") else None
    if module is not None and module.bias is not None:
        return (tensor.float() + module.bias.float() * module.scale).to(plan.dtype)
    return tensor


def shard_size_bytes(max_shard_size: str) -> int:
    """`max_shard_size` in bytes, read by huggingface_hub's own parser (the one `split_shards` uses), which takes
    "-1MB" or "nanMB" too: a size under one byte is refused here."""
    try:
        size = parse_size_to_int(max_shard_size)
    except OverflowError:  # "infMB"
        size = 0
    except ValueError as err:  # an unknown unit, no number, or "nanMB"
        raise ValueError(f"not a size (e.g. 5GB, 500MB): {err}") from None
    if size < 1:
        raise ValueError(f"a shard must hold at least one byte (e.g. 5GB, 500MB), not {max_shard_size!r}")
    return size


def split_shards(plans: list[TensorPlan], max_shard_size: str) -> StateDictSplit:
    """File names and their tensors, as transformers' `save_pretrained` would shard these tensors."""
    return split_state_dict_into_shards_factory(
        {plan.name: plan for plan in plans},
        get_storage_size=lambda plan: plan.nbytes,
        filename_pattern=constants.SAFETENSORS_WEIGHTS_FILE_PATTERN,
        max_shard_size=max_shard_size,
    )


def write_shard(path: Path, plans: list[TensorPlan], tensors: Iterator[torch.Tensor]) -> None:
    """Write one safetensors file from a header planned up front, then each tensor as it arrives.

    safetensors' own `save_file` needs the whole shard in memory (twice: tensors and their bytes); writing the
    documented format (u64 header length, JSON header, raw little-endian data) streams instead.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for plan in plans:
        header[plan.name] = {
            "dtype": _ST_DTYPES[plan.dtype],
            "shape": list(plan.shape),
            "data_offsets": [offset, offset + plan.nbytes],
        }
        offset += plan.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to an 8-byte boundary
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for plan, tensor in zip(plans, tensors, strict=True):
            if tensor.dtype != plan.dtype or tuple(tensor.shape) != plan.shape:
                raise RuntimeError(f"{plan.name}: computed {tensor.dtype} {list(tensor.shape)}, planned {plan}")
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)


@dataclass(frozen=True)
class Nf4Options:
    """How training quantized the base (bitsandbytes through transformers' BitsAndBytesConfig)."""

    dtype: str  # the base was loaded in the compute dtype, then quantized from it
    quant_type: str  # nf4 or fp4
    double_quant: bool
    blocksize: int = 64  # bitsandbytes' Linear4bit default, which transformers does not change

    def roundtrip(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as the 4-bit layer saw it in training (in the training dtype)."""
        import bitsandbytes.functional as bnb

        packed, state = bnb.quantize_4bit(
            weight.to(getattr(torch, self.dtype)),
            blocksize=self.blocksize,
            quant_type=self.quant_type,
            compress_statistics=self.double_quant,
        )
        return bnb.dequantize_4bit(packed, state)
