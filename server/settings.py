"""Server settings: one pydantic-settings class, read from CLI flags or `LLMKIT_*` environment variables."""

from __future__ import annotations

import json
import re
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llmkit.core.challenge import CONTEXT_TOKENS
from llmkit.core.devices import Device, Dtype, Quantization
from llmkit.core.files import user_path
from llmkit.core.models import adapter_config, model_id

ADAPTER_NAME = re.compile(r"[A-Za-z0-9_\-:/@+]+")
DEFAULT_TOKEN_LIMIT = 1024  # max_new_tokens_limit's default


class EngineName(str, Enum):
    builtin = "builtin"  # the project's continuous-batching scheduler over transformers (server/builtin.py)
    vllm = "vllm"  # vLLM, in its own venv (server/vllm_engine.py)


# The --quantization values vLLM serves, as its own `quantization` argument: it quantizes on load with bitsandbytes
# in 4 bits only, never LLM.int8(). A pre-quantized checkpoint (AWQ, GPTQ...) it detects itself. The settings and
# `llmkit submission --engine vllm` refuse the others by this table.
VLLM_QUANTIZATIONS: dict[str, str | None] = {
    Quantization.none.value: None,
    Quantization.nf4.value: "bitsandbytes",
}


class ServerSettings(BaseSettings):
    """Everything that decides how the server loads and runs its model."""

    model_config = SettingsConfigDict(env_prefix="LLMKIT_", protected_namespaces=())

    engine: EngineName = Field(EngineName.builtin, description="What generates: the built-in engine or vLLM.")
    model: str | None = Field(
        None, description="Hub id or local model directory; empty: the embedded default (SmolLM2-135M-Instruct)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of `model`.")
    # NoDecode: the CLI joins repeated flags with commas and an environment variable may hold one plain path, so
    # the raw text is split here (`_split_adapters`) rather than read as JSON.
    adapter: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Unmerged peft adapter on top of `model`, as NAME=DIR or a bare DIR (named after its folder); repeat "
            "the flag (or separate with commas) to serve several at once, chosen per request by name."
        ),
    )
    default_adapter: str | None = Field(
        None,
        description=(
            "The adapter /process uses when its request has no X-Adapter header (OpenAI requests name theirs in "
            "`model`); the base model's name (`model`'s value): the base model; unset: the only adapter when one is "
            "given, else the base model."
        ),
    )
    dtype: Dtype = Field(Dtype.auto, description="Weight and compute dtype.")
    quantization: Quantization = Field(Quantization.none, description="bitsandbytes weight quantization.")
    device: Device = Field(Device.auto, description="Where the model runs.")
    max_context: int = Field(CONTEXT_TOKENS, gt=0, description="Prompt plus completion tokens, the challenge's limit.")
    # None until validated (`_default_token_limit`): only a limit given is checked against max_context (pydantic-
    # settings validates defaults too), and the default follows a smaller max_context
    max_new_tokens_limit: int | None = Field(
        None,
        gt=0,
        description=(
            f"Largest max_new_tokens a request may ask for; empty: {DEFAULT_TOKEN_LIMIT}, or --max-context when "
            "smaller."
        ),
    )
    stop_at_newline: bool = Field(
        True,
        description=(
            "End a completion at its first newline after non-blank text when the request names no stop "
            "sequences (HELM's multiple-choice requests name none and score the whole completion)."
        ),
    )
    max_batch_size: int = Field(
        16, ge=1, description="Requests decoded together in one batch (1: one request at a time, batching off)."
    )
    max_queue: int = Field(
        64, ge=0, description="Requests that may wait for a batch slot; one more is answered 503 with Retry-After."
    )
    kv_cache_bytes: int | None = Field(
        None,
        gt=0,
        description=(
            "KV-cache memory the batch may use; empty: 90% of the GPU memory free after loading the weights, or "
            "half the available RAM on the CPU (vLLM: its --gpu-memory-utilization share, or 1 GiB on the CPU). "
            "A request waits until its worst case fits."
        ),
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs the model is split over (tensor parallel).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="vLLM: share of the GPU's memory for weights, activations and KV cache."
    )
    prefill_chunk_tokens: int = Field(
        512,
        ge=16,
        description="Prompt tokens per prefill pass: short prompts are prefilled together, long ones in chunks.",
    )
    request_timeout_s: float | None = Field(
        None, gt=0, description="End a /process request that takes longer than this (HTTP 504); empty: no limit."
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body (a 2,048-token prompt is tens of kB); a larger one gets HTTP 413 unread.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request's headers, then its body, incomplete this long gets HTTP 408, its connection closed.",
    )
    shutdown_timeout_s: float = Field(
        5.0,
        ge=0,
        description=(
            "On SIGTERM/Ctrl-C, how long requests in flight may finish before they are cut off (docker stop kills "
            "after 10 s; unset, vLLM's gets what its engine's stop leaves of those 10 s)."
        ),
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8080, ge=0, le=65535, description="Port to bind (80 inside the submission image).")

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object, info: ValidationInfo) -> object:
        # `--model ""` or `-e LLMKIT_KV_CACHE_BYTES=` (a container's way to leave one unset): the setting's "empty"
        # meaning in its help, not a folder "." or an integer that cannot be parsed
        unset = cls.model_fields[info.field_name].default is None
        return None if unset and isinstance(value, str) and not value.strip() else value

    @field_validator("adapter", mode="before")
    @classmethod
    def _split_adapters(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            # a folder whose name holds a comma is one adapter, not two
            name, sep, folder = value.partition("=")
            one = Path(value).is_dir() or bool(sep and "," not in name and folder and Path(folder).is_dir())
            return [value] if one else [p for p in value.split(",") if p]
        return value

    # Rules between settings check the later one of each pair (fields validate in their order, `info.data` holds
    # the earlier ones): an error then carries the setting's name, which the command line turns into the flag or
    # environment variable that gave it (__main__._setting_name); a model validator's error carried none, and its
    # text said `adapter:` where the user had typed --adapter.
    @field_validator("quantization")
    @classmethod
    def _served_by_the_engine(cls, quantization: Quantization, info: ValidationInfo) -> Quantization:
        if info.data.get("engine") is EngineName.vllm and quantization.value not in VLLM_QUANTIZATIONS:
            raise ValueError(
                f"{quantization.value} is not available with --engine vllm: use nf4 (bitsandbytes 4-bit) or a "
                "pre-quantized checkpoint (AWQ, GPTQ, FP8), which vLLM detects from its config.json"
            )
        return quantization

    @field_validator("max_new_tokens_limit")
    @classmethod
    def _within_context(cls, limit: int | None, info: ValidationInfo) -> int | None:
        context = info.data.get("max_context")
        if limit is not None and context is not None and limit > context:
            raise ValueError(
                f"{limit} is over the context limit ({context} tokens, the prompt and completion together: "
                "--max-context, LLMKIT_MAX_CONTEXT); lower it, or raise the context limit"
            )
        return limit

    @model_validator(mode="after")
    def _default_token_limit(self) -> ServerSettings:
        if self.max_new_tokens_limit is None:  # the default follows a smaller --max-context
            self.max_new_tokens_limit = min(DEFAULT_TOKEN_LIMIT, self.max_context)
        return self

    @field_validator("adapter")
    @classmethod
    def _check_adapters(cls, entries: list[str], info: ValidationInfo) -> list[str]:
        names = [name for name, _ in (_named(entry) for entry in entries)]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"the name(s) {', '.join(duplicates)} are given twice; use NAME=DIR to rename")
        for name in names:
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(
                    f"the name {name!r} cannot be used: a name is ASCII letters, digits and _ - : / @ + "
                    "(the X-Adapter header carries it; peft keeps adapters as torch modules, whose names hold no "
                    "'.'); use NAME=DIR to rename"
                )
            if name == model_id(info.data.get("model")):
                raise ValueError(
                    f"{name!r} is the base model's name (requests naming it get the base model); use NAME=DIR to "
                    "rename the adapter"
                )
        return entries

    @field_validator("default_adapter")
    @classmethod
    def _an_adapter_or_the_base(cls, default: str | None, info: ValidationInfo) -> str | None:
        if default is None or "adapter" not in info.data:  # unset; or the adapters' own error is said
            return default
        names = [name for name, _ in (_named(entry) for entry in info.data["adapter"])]
        base = model_id(info.data.get("model"))
        if default not in names and model_id(default) != base:
            raise ValueError(f"{default!r} is not one of the adapters {names} (or the base model, {base})")
        return default

    @property
    def adapters(self) -> dict[str, str]:
        """The adapters to serve, name -> directory, in the order given."""
        return dict(_named(entry) for entry in self.adapter)

    @cached_property
    def adapter_configs(self) -> dict[str, dict]:
        """Each adapter's adapter_config.json, name -> its settings, read once: load_engine checks them before the
        model loads, and the engine looks in them for an adapter that hides the base model."""
        return {name: adapter_config(path) for name, path in self.adapters.items()}

    @property
    def default_adapter_name(self) -> str | None:
        """The adapter a /process request without X-Adapter gets (None: the base model)."""
        if self.default_adapter is not None:
            return None if self.default_adapter not in self.adapters and self._names_base else self.default_adapter
        return next(iter(self.adapters)) if len(self.adapter) == 1 else None

    @property
    def base_name(self) -> str:
        """What names the base model, as the engine names it (in `model` of OpenAI requests, X-Adapter)."""
        return model_id(self.model)

    @classmethod
    def given(cls, **values) -> ServerSettings:
        """These values and the defaults alone, as a command line naming only them gives them (the image's CMD,
        which `llmkit submission` checks): this shell's LLMKIT_* variables are not read."""
        return _GivenOnly(**values)

    @property
    def _names_base(self) -> bool:
        """Whether --default-adapter names the base model (a relative folder path too)."""
        return self.default_adapter is not None and model_id(self.default_adapter) == self.base_name


class _GivenOnly(ServerSettings):
    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_other_sources):
        return (init_settings,)


def _named(entry: str) -> tuple[str, str]:
    """NAME=DIR, or a bare DIR named after its folder (a folder whose name holds `=` too)."""
    name, sep, path = entry.partition("=")
    if not sep or (user_path(entry).is_dir() and not user_path(path).is_dir()):
        return user_path(entry).resolve().name or "default", str(user_path(entry))
    if not name or not path:
        raise ValueError(f"{entry!r} is neither NAME=DIR nor a directory")
    return name, str(user_path(path))
