"""Shapes of causal language models, read from the model itself: enough to count parameters, list the modules an
adapter can wrap and estimate memory, without the weights.

The model's config.json is instantiated on the meta device (accelerate's `init_empty_weights` + transformers'
`from_config`), so every causal-LM architecture transformers knows is sized from its own modules: fused qkv
(Falcon, GPT-NeoX, Phi-3), Conv1D (GPT-2), MoE experts held as fused 3-D parameters (Mixtral, Qwen-MoE), tied
embeddings. `find_model_config` says where config.json comes from, in this order:

1. an explicit file or folder (`--model-config`, or the config's `base_model_config`);
2. `base_model` itself when it is a local folder, or the embedded default model (SmolLM2-135M-Instruct);
3. the Hugging Face cache (offline);
4. the config.json files this project ships for common competition bases (`llmkit/core/model_configs/`);
5. the hub, when it is reachable (not with HF_HUB_OFFLINE=1);
6. a shipped file of the same repository name under another owner (a mirror such as NousResearch/Llama-2-7b-hf),
   or else of its base model (Llama-3.1-8B-Instruct has Llama-3.1-8B's shape): the plan names the file it used.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

from llmkit.core.files import user_path
from llmkit.core.models import DEFAULT_MODEL_ID, embedded_model_dir

LOG = logging.getLogger(__name__)

SHIPPED_CONFIGS = "llmkit.core.model_configs"


class ModelConfigNotFound(LookupError):
    """No config.json for a model: the message says where it looked and how to provide one."""


def peft_target_matches(target: str, name: str) -> bool:
    """peft's rule for a target_modules or target_parameters entry: the full module or parameter name, or a suffix of
    it after a dot."""
    return name == target or name.endswith("." + target)


@dataclass(frozen=True)
class Module:
    """A module an adapter can wrap: a linear layer (nn.Linear or GPT-2's Conv1D) or an embedding."""

    name: str  # full name, e.g. model.layers.0.self_attn.q_proj
    fan_in: int  # in_features (embedding: number of embeddings)
    fan_out: int  # out_features (embedding: its width)
    quantizable: bool = False  # bitsandbytes replaces it when loading in 4 or 8 bits
    conv1d: bool = False  # a transformers Conv1D (GPT-2): its weight is stored (in, out)
    adaptable: bool = True  # False: its forward returns no tensor (Llama-4's router), so LoRA cannot wrap it

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def params(self) -> int:
        return self.fan_in * self.fan_out

    def matches(self, target: str) -> bool:
        """peft's rule for a target_modules entry (`peft_target_matches`)."""
        return peft_target_matches(target, self.name)


@dataclass(frozen=True)
class ModelShape:
    """What planning needs to know about a causal LM, measured on its meta-device instance."""

    architecture: str  # e.g. LlamaForCausalLM
    num_params: int  # every parameter once (tied embeddings counted once)
    linear: tuple[Module, ...]  # the decoder's linear layers, output head excluded: what bitsandbytes quantizes
    embeddings: tuple[Module, ...]  # input embeddings (token, and position where the model has them)
    head: Module | None  # the output projection (lm_head), None in a model without one
    tie_word_embeddings: bool  # the head is the input embedding (one tensor, counted once)
    expert_params: int  # MoE experts stored as fused 3-D parameters: bitsandbytes leaves them unquantized
    expert_names: tuple[str, ...]  # their parameter names' last two parts, e.g. experts.gate_up_proj
    # each of them by full name, with its shape (experts, rows, columns) and the width of its matmuls' input (peft's
    # in_features: the columns, or the rows where the model stores them transposed, as gpt-oss does): what
    # lora_target_parameters can target
    experts: tuple[tuple[str, tuple[int, ...], int], ...]
    # the per-expert layer names the checkpoint stores (Mixtral's w1, w2, w3) -> the fused parameter holding each
    expert_sources: tuple[tuple[str, str], ...]
    module_leaves: frozenset[str]  # every module's last name part (for "did you mean" and existence checks)
    parameters: tuple[tuple[str, int], ...]  # every parameter's name and size, once (for unfrozen_parameters)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    mlp_width: int  # the MLP's inner width per token (MoE: times the experts each token uses)
    active_experts: int  # the experts each token uses (1 without experts)
    vocab_size: int
    # linear layers' last name parts that peft, wrapping this model, renames into its MoE experts' fused parameters
    peft_renamed: frozenset[str] = frozenset()
    # the rows of a learned position table (GPT-2's wpe, OPT's embed_positions: max_position_embeddings), which no
    # sequence may pass (torch's embedding lookup fails past them); None: positions are computed (RoPE, ALiBi)
    learned_positions: int | None = None
    positions: int | None = None  # max_position_embeddings: the server's bound on prompt + completion

    @property
    def quantizable_params(self) -> int:
        return sum(module.params for module in self.linear if module.quantizable)

    @property
    def token_rows(self) -> list[str]:
        """The last name parts of the modules that hold a row per token: the input token embeddings and the output
        head (what lora_modules_to_save lists so that new tokens train)."""
        return [module.leaf for module in self.embeddings[:1]] + ([self.head.leaf] if self.head else [])

    def linear_names(self) -> list[str]:
        """The distinct last name parts of the linear layers an adapter can wrap, in model order: peft's
        "all-linear" targets."""
        return list(dict.fromkeys(module.leaf for module in self.linear if module.adaptable))

    def targetable(self) -> tuple[Module, ...]:
        adaptable = tuple(module for module in self.linear if module.adaptable)
        return adaptable + self.embeddings + ((self.head,) if self.head else ())

    def matching(self, target: str) -> list[Module]:
        """The modules a target_modules entry wraps (peft's suffix rule); empty when it names none."""
        return [module for module in self.targetable() if module.matches(target)]

    def matching_experts(self, target: str) -> list[tuple[str, tuple[int, ...], int]]:
        """The fused expert parameters a target_parameters entry wraps (peft's rule: the full parameter name, or a
        suffix of it after a dot); empty when it names none."""
        return [expert for expert in self.experts if peft_target_matches(target, expert[0])]

    def with_vocabulary(self, tokens: int) -> ModelShape:
        """The shape once training grows the embeddings for a tokenizer of `tokens` (transformers'
        `resize_token_embeddings`, only where the tokenizer is larger): the input embeddings and the head get the new
        rows (a tied head is the input embeddings' tensor, counted once)."""
        inputs = self.embeddings[0] if self.embeddings else None
        if inputs is None or tokens <= inputs.fan_in:
            return self
        old = [inputs] + ([self.head] if self.head and not self.tie_word_embeddings else [])
        new = {m.name: replace(m, fan_in=tokens) if m is inputs else replace(m, fan_out=tokens) for m in old}
        head = new.get(self.head.name, replace(self.head, fan_out=tokens)) if self.head else None
        sizes = {f"{name}.weight": module.params for name, module in new.items()}
        return replace(
            self,
            num_params=self.num_params + sum(m.params for m in new.values()) - sum(m.params for m in old),
            embeddings=(new[inputs.name], *self.embeddings[1:]),
            head=head,
            parameters=tuple((name, sizes.get(name, size)) for name, size in self.parameters),
            vocab_size=tokens,
        )

    def kv_cache_bytes_per_token(self, bytes_per_value: float = 2) -> float:
        return 2 * self.num_layers * self.num_kv_heads * self.head_size * bytes_per_value

    @classmethod
    def from_model(cls, model) -> ModelShape:
        """The shape of a model instance: on the meta device, or loaded (quantized layers keep in/out features)."""
        import torch
        from transformers.pytorch_utils import Conv1D

        head = model.get_output_embeddings()
        inputs = model.get_input_embeddings()
        tied = head is not None and head.weight is inputs.weight
        linear, embeddings, leaves, head_module = [], [], set(), None
        for name, module in model.named_modules():
            leaves.add(name.rsplit(".", 1)[-1])
            if module is head:
                head_module = Module(name, module.in_features, module.out_features)
            elif isinstance(module, torch.nn.Linear):
                linear.append(
                    Module(
                        name,
                        module.in_features,
                        module.out_features,
                        _quantizable(module),
                        adaptable=_adaptable(module),
                    )
                )
            elif isinstance(module, Conv1D):  # GPT-2: weight is (in, out)
                linear.append(Module(name, module.weight.shape[0], module.nf, quantizable=True, conv1d=True))
            elif isinstance(module, torch.nn.Embedding):
                embeddings.append(Module(name, module.num_embeddings, module.embedding_dim))
        # transformers 5 fuses an MoE's experts into 3-D parameters; a convolution's kernel (Mamba's conv1d) is 3-D too
        kernels = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Conv1d)}
        experts = [(n, p) for n, p in model.named_parameters() if p.dim() == 3 and id(p) not in kernels]
        text = model.config.get_text_config()
        linear_leaves = dict.fromkeys(module.leaf for module in linear)
        refused = _refused_by_peft(model, linear_leaves)
        linear = [replace(module, adaptable=False) if module.leaf in refused else module for module in linear]
        return cls(
            architecture=type(model).__name__,
            num_params=sum(p.numel() for p in model.parameters()),
            linear=tuple(linear),
            embeddings=tuple(embeddings),
            head=head_module,
            tie_word_embeddings=tied,
            expert_params=sum(p.numel() for _, p in experts),
            expert_names=tuple(dict.fromkeys(".".join(n.split(".")[-2:]) for n, _ in experts)),
            experts=tuple((n, tuple(p.shape), _input_width(model, n, p)) for n, p in experts),
            expert_sources=_expert_sources(model.config.model_type, [".".join(n.split(".")[-2:]) for n, _ in experts]),
            module_leaves=frozenset(leaves - {""}),
            parameters=tuple((n, p.numel()) for n, p in model.named_parameters()),
            **_attention_and_mlp(text),
            peft_renamed=_renamed_by_peft(model, linear_leaves),
            learned_positions=learned_positions(model),
            positions=getattr(text, "max_position_embeddings", None),
        )


def learned_positions(model) -> int | None:
    """The model's max_position_embeddings where an embedding beside the token one is a table of that many rows
    (OPT's keeps 2 more, its offset); None where none is (computed positions, or a config without it). Read from
    the embeddings alone: train asks it of the loaded model, whose whole shape it does not need."""
    import torch

    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    inputs = model.get_input_embeddings()
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m is not inputs]
    return positions if any(positions <= table.num_embeddings <= positions + 2 for table in tables) else None


def _input_width(model, name: str, parameter) -> int:
    """The input width of a fused expert parameter's matmuls, as peft's ParamWrapper reads it: (experts, out, in),
    or (experts, in, out) where the experts' module says is_transposed (gpt-oss)."""
    owner = model.get_submodule(name.rpartition(".")[0])
    return parameter.shape[1] if getattr(owner, "is_transposed", False) else parameter.shape[2]


def _expert_sources(model_type: str, fused: list[str]) -> tuple[tuple[str, str], ...]:
    """The names a checkpoint stores each expert's layers under (Mixtral: experts.0.w1.weight), by the fused
    parameter transformers 5 loads them into (w1 and w3 into experts.gate_up_proj), as its conversion mapping says:
    what a config written for transformers 4 lists in lora_target_modules."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightConverter
    except ImportError:  # transformers 4: the experts are modules of their own
        return ()
    sources = {}
    for transform in get_checkpoint_conversion_mapping(model_type) or []:
        if not isinstance(transform, WeightConverter):
            continue
        for target in transform.target_patterns:
            into = ".".join(target.strip(".").split(".")[-2:])
            if into not in fused:
                continue
            for source in transform.source_patterns:
                parts = source.strip(".").split(".")
                sources.setdefault(parts[-2] if parts[-1] in ("weight", "bias") else parts[-1], into)
    return tuple(sources.items())


def _adaptable(module) -> bool:
    """Whether peft's LoRA can wrap this nn.Linear: not when a transformers model's subclass of it returns something
    other than a tensor (Llama-4's router returns a tuple, which LoRA's forward cannot add to: training stopped at
    step 1). Such a forward is tried on one row of zeros (Falcon's FalconLinear returns a tensor); bitsandbytes' and
    peft's subclasses (a loaded 4-bit model) are adaptable."""
    import torch

    kind = type(module)
    if kind.forward is torch.nn.Linear.forward or not kind.__module__.startswith("transformers.models."):
        return True
    weight = module.weight
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, module.in_features, device=weight.device, dtype=weight.dtype))
    except Exception:  # a forward that needs more than one row: taken for a plain linear layer
        return True
    return isinstance(out, torch.Tensor)


def _refused_by_peft(model, leaves) -> frozenset[str]:
    """The names among `leaves` that peft's LoRA refuses to wrap in this model: a Mamba mixer's out_proj (peft's
    check of the Mamba families; training stopped on it after the data was prepared). peft's own check is asked, one
    name at a time, so this follows whatever peft version is here; a peft without it refuses nothing."""
    try:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import _check_lora_target_modules_mamba as check
    except ImportError:
        return frozenset()
    refused = set()
    for leaf in leaves:
        try:
            check(LoraConfig(target_modules=[leaf]), model, leaf)
        except ValueError:
            refused.add(leaf)
    return frozenset(refused)


def _renamed_by_peft(model, leaves) -> frozenset[str]:
    """The names among `leaves` that peft's LoRA, on this model, turns into targets of the MoE experts.

    transformers 5 fused the experts of some MoE families (Mixtral, Qwen-MoE, DeepSeek-V2/V3, ...) into 3-D
    parameters; so that adapters trained on transformers 4 still load, peft rewrites every LoRA target named like a
    v4 expert projection (gate_proj, up_proj, down_proj: the full name or any suffix of it) into `target_parameters`
    of the fused experts. The dense MLPs (DeepSeek's first layers, shared experts, Qwen3-MoE's mlp_only_layers) carry
    the same names, so targeting them trains the experts instead. peft's own conversion is asked, one name at a
    time, which it rewrites (or refuses: gate_proj without up_proj), so this follows whatever peft version is here.
    """
    try:
        from peft import LoraConfig
        from peft.import_utils import is_transformers_ge_v5
    except ImportError:  # no peft (or one too old to rename anything): nothing is renamed
        return frozenset()
    if not is_transformers_ge_v5:
        return frozenset()
    from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers

    renamed = set()
    for leaf in leaves:
        probe = LoraConfig(target_modules=[leaf])
        try:
            convert_peft_config_for_transformers(probe, model=model, conversions=None)
        except ValueError:  # one half of a fused pair: peft refuses it, so it cannot be trained as named either
            renamed.add(leaf)
            continue
        if leaf not in (probe.target_modules or ()):
            renamed.add(leaf)
    return frozenset(renamed)


def _quantizable(linear) -> bool:
    # transformers replaces modules whose type is exactly nn.Linear (or Conv1D): subclasses such as Falcon's
    # FalconLinear stay in 16 bits. A model loaded quantized already holds bitsandbytes' layers.
    import torch

    return type(linear) is torch.nn.Linear or type(linear).__name__ in ("Linear4bit", "Linear8bitLt")


def _attention_and_mlp(config) -> dict[str, int]:
    """Widths from the (text) config, with the names the families use for them."""
    hidden = config.hidden_size
    heads = getattr(config, "num_attention_heads", None) or 0  # 0: no attention (Mamba), so no KV cache either
    kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None) or heads
    if getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
        kv_heads = 1  # Falcon-7B: one key/value head shared by all query heads
    inner = next(
        (v for k in ("intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size") if (v := _int(config, k))),
        4 * hidden,
    )
    active_experts = _int(config, "num_experts_per_tok") or 1
    return {
        "hidden_size": hidden,
        "num_layers": config.num_hidden_layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_size": getattr(config, "head_dim", None) or (hidden // heads if heads else 0),
        "mlp_width": inner * active_experts,
        "active_experts": active_experts,
        "vocab_size": config.vocab_size,
    }


def _int(config, key: str) -> int | None:
    value = getattr(config, key, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@functools.lru_cache(maxsize=64)
def _shape_of(config_json: str) -> ModelShape:
    model = meta_model(json.loads(config_json))
    try:
        return ModelShape.from_model(model)
    except AttributeError as err:  # a config without the usual width names (hidden_size, num_attention_heads)
        raise ValueError(
            f"{model.config.model_type!r}: cannot read the model's widths from its config ({err})"
        ) from err


def meta_model(data: dict):
    """The causal LM a config.json describes, built on the meta device (no weights): its modules, parameter names
    and shapes, as transformers builds them.

    Raises:
        ValueError: not an architecture transformers knows, or not a causal LM.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = data.get("model_type")
    try:
        config = AutoConfig.for_model(**data)
    except (ValueError, KeyError) as err:  # its message lists every model type transformers has: too long to show
        remote = " (its config.json points to remote code, which llmkit does not run)" if "auto_map" in data else ""
        raise ValueError(f"model_type {model_type!r} is not an architecture transformers knows{remote}") from err
    except TypeError as err:  # a value of the wrong type: transformers' config classes check them
        raise ValueError(f"{model_type!r} config.json: {err}") from err
    try:
        with init_empty_weights(include_buffers=True):
            model = AutoModelForCausalLM.from_config(config)
            model.tie_weights()  # without it, a plain init_empty_weights() build leaves a tied head as a copy
    except ValueError as err:  # not a causal LM (an encoder, a vision model)
        raise ValueError(f"{model_type!r} is not a causal language model transformers can build") from err
    return model


def base_model_refusal(config: dict, model: str, key: str = "base_model") -> str | None:
    """Why llmkit cannot train on or merge into `model` (`key` names where it was given), whose config.json is
    `config`; None when it can. Train, merge and serve would each fail on such a model, training only after preparing
    the data, so the plan, training and merge all ask this first."""
    return _needs_remote_code(config, model, key) or _already_quantized(config, model, key)


def _needs_remote_code(config: dict, model: str, key: str) -> str | None:
    """A model_type transformers lacks, with an auto_map, needs the Python code of the model's own repository:
    llmkit never runs it, so it loads with transformers' own classes, which do not have it."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if "auto_map" not in config or model_type in CONFIG_MAPPING:
        return None
    return (
        f"{key}: {model} needs the Python code of its own repository (its config.json has an auto_map and model_type "
        f"{model_type!r} is not an architecture transformers has); llmkit does not run remote code, whatever "
        "trust_remote_code says, so it cannot train, merge or serve this model: choose a base model transformers "
        "supports (a port of this one under a transformers model_type, if there is one)"
    )


def _already_quantized(config: dict, model: str, key: str) -> str | None:
    """A checkpoint stored quantized (bitsandbytes, GPTQ, AWQ, FP8) no longer holds the 16-bit weights the adapter is
    merged into: a bitsandbytes one trained, then its merge stopped on the packed weights' shapes."""
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict):
        return None
    method = str(quantization.get("quant_method", "an unnamed method"))
    if method == "bitsandbytes" and (quantization.get("load_in_4bit") or quantization.get("load_in_8bit")):
        method += " 4-bit" if quantization.get("load_in_4bit") else " 8-bit"
    return (
        f"{key}: {model} is stored quantized ({method}, its config.json's quantization_config); llmkit trains on "
        "a 16-bit base, quantizing it as it loads where load_in_4bit or load_in_8bit says so, and merges the adapter "
        "into the 16-bit weights, which this checkpoint no longer has: use the 16-bit model it was made from, with "
        "load_in_4bit: true for QLoRA"
    )


def shape_from_config(config: dict) -> ModelShape:
    """The shape of the model a config.json describes (built on the meta device; cached)."""
    return _shape_of(json.dumps(config, sort_keys=True))


@dataclass(frozen=True)
class FoundConfig:
    config: dict
    where: str  # for the plan: "local folder", "Hugging Face cache", "shipped with llmkit", "the hub", ...


# transformers writes a float JSON cannot hold (Falcon-H1's and Bamba's `time_step_limit: [0.0, inf]`) as an object
# of its own, and turns it back into the float when it reads the file; so does this module.
_SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _special_float(value: dict) -> object:
    tag = value.get("__float__") if len(value) == 1 else None
    return _SPECIAL_FLOATS.get(tag, value) if isinstance(tag, str) else value


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(), object_hook=_special_float)
    except (OSError, json.JSONDecodeError) as err:
        raise ModelConfigNotFound(f"{path}: not a readable config.json ({err})") from err
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelConfigNotFound(f"{path}: not a transformers config.json (it has no model_type)")
    return data


def shipped_configs() -> dict[str, Path]:
    """The config.json files this project ships, by hub id (`owner--name.json` is owner/name)."""
    folder = resources.files(SHIPPED_CONFIGS)
    return {
        entry.name.removesuffix(".json").replace("--", "/", 1): Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


def _from_cache(model: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(model, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(path) if isinstance(path, str) else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all: huggingface_hub retries an unreachable host for ~25 s before failing."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _from_hub(model: str, revision: str | None) -> tuple[Path | None, str]:
    from huggingface_hub import hf_hub_download

    if not hub_reachable():
        return None, "the hub is not reachable (offline)"
    try:
        return Path(hf_hub_download(model, "config.json", revision=revision)), ""
    except Exception as err:  # gated, missing or a network error: say which
        return None, f"the hub did not give it ({type(err).__name__}: {str(err).splitlines()[0]})"


def _repo_name(hub_id: str) -> str:
    return hub_id.rsplit("/", 1)[-1].lower()


def _base_name(hub_id: str) -> str:
    """The repository name without the tuning suffixes that keep the architecture: Llama-3.1-8B-Instruct,
    Llama-2-7b-chat-hf and gemma-2-9b-it have their bases' shapes."""
    return "-".join(part for part in _repo_name(hub_id).split("-") if part not in ("instruct", "chat", "it"))


GIVE_MODEL_CONFIG = (
    "with --model-config PATH (a config.json or a folder holding one), or set base_model_config: in the config"
)


def find_model_config(
    model: str, revision: str | None = None, explicit: str | None = None, how_to_give: str = GIVE_MODEL_CONFIG
) -> FoundConfig:
    """config.json of `model`, from the first place that has it (the order is the module's docstring).

    Args:
        how_to_give: the end of the message when nowhere has it: "Give it <how_to_give>".

    Raises:
        ModelConfigNotFound: nowhere has it; the message lists where it looked and how to provide it.
    """
    if explicit:
        path = user_path(explicit)
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelConfigNotFound(f"{explicit}: a folder without a config.json")
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ModelConfigNotFound(f"{explicit}: {'not a file' if path.exists() else 'no such file or folder'}")
        return FoundConfig(_read(path), f"{path}")
    local = user_path(model)
    if not (local / "config.json").is_file() and (local.is_dir() or model.startswith((".", "/", "~"))):
        if not local.exists():  # a config written for another machine (validate): its config.json is there
            raise ModelConfigNotFound(f"{model} is not on this machine; --model-config names its config.json")
        raise ModelConfigNotFound(f"{model} is a local path without a config.json")
    if found := config_at_hand(model, revision):
        return found
    shipped = shipped_configs()
    downloaded, why = _from_hub(model, revision)
    if downloaded:
        return FoundConfig(_read(downloaded), "the hub")
    for same, how in ((_repo_name, "same repository name"), (_base_name, "its base model's shape")):
        mirrors = [hub_id for hub_id in shipped if same(hub_id) == same(model)]
        if mirrors:
            return FoundConfig(_read(shipped[mirrors[0]]), f"shipped with llmkit for {mirrors[0]} ({how})")
    raise ModelConfigNotFound(
        f"no config.json for {model}: not a local folder, not in the Hugging Face cache, not among the "
        f"{len(shipped)} shipped with llmkit, and {why}. Give it {how_to_give}"
    )


def config_at_hand(model: str, revision: str | None = None) -> FoundConfig | None:
    """config.json of `model` where it is without the network: a local folder, the embedded default, the Hugging Face
    cache, or the configs shipped with llmkit (`find_model_config`'s first places); None where none has it."""
    local = user_path(model)
    if (local / "config.json").is_file():
        return FoundConfig(_read(local / "config.json"), "local folder")
    if local.is_dir() or model.startswith((".", "/", "~")):
        return None
    if model == DEFAULT_MODEL_ID and revision is None:  # what `llmkit train` will load: the embedded copy
        return FoundConfig(_read(embedded_model_dir() / "config.json"), "the embedded default model")
    if cached := _from_cache(model, revision):
        return FoundConfig(_read(cached), "Hugging Face cache")
    shipped = shipped_configs()
    if model in shipped:
        return FoundConfig(_read(shipped[model]), "shipped with llmkit")
    return None


# What makes two config.json files another model, not a copy of one (a folder and its hub id, a re-save): the
# architecture and the sizes. The tokens' ids, dtype, rope scaling and the like are left out: a copy may differ there.
_MODEL_IDENTITY = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


def model_difference(first: dict, second: dict) -> str | None:
    """The first of `_MODEL_IDENTITY` in which two config.json files differ ("model_type llama vs mistral"), where
    both give it; None where they agree (no evidence of another model)."""
    for key in _MODEL_IDENTITY:
        if key in first and key in second and first[key] != second[key]:
            return f"{key} {first[key]} vs {second[key]}"
    return None


def model_shape(
    model: str, revision: str | None = None, explicit: str | None = None, how_to_give: str = GIVE_MODEL_CONFIG
) -> ModelShape:
    """Shape of `model` from its config.json (see `find_model_config`).

    Raises:
        ModelConfigNotFound: no config.json could be found.
        ValueError: the config.json is not a causal LM transformers can build.
    """
    found = find_model_config(model, revision, explicit, how_to_give)
    return shape_from_config(found.config)
