"""HELM's wire format: the request and response bodies of /process, /tokenize and /decode.

The consumer defines the fields: crfm-helm 0.5.x `helm/clients/http_model_client.py` (/process) and
`helm/tokenizers/http_model_tokenizer.py` (/tokenize, /decode). Torch-free, so tests and clients import it cheaply.

Unknown fields are accepted, logged and listed in the `X-Ignored-Fields` response header (percent-encoded, never
raw client text) rather than refused: a newer HELM that adds a field must not abort a whole evaluation run. Types
are strict (a string where a number belongs is a 422), because a silently coerced request would be scored as if it
were something else; floats must be finite, and text must be valid Unicode (no unpaired surrogates).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

from llmkit.core.challenge import CONTEXT_TOKENS

GREEDY_TEMPERATURE = 1e-5  # HELM sends 1e-7 when a task asks for temperature 0


SEED_RANGE = {"ge": -(2**63), "le": 2**64 - 1}  # what torch.Generator.manual_seed takes


def _valid_unicode(value: object) -> object:
    """JSON can carry lone UTF-16 surrogates ("\\ud800"); no tokenizer can encode them. Checked before pydantic's
    own checks of the string (min_length), which would fail on it without saying where."""
    try:
        if isinstance(value, str):
            value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"text is not valid Unicode: unpaired surrogate at character {err.start}") from None
    return value


Text = Annotated[str, BeforeValidator(_valid_unicode)]


def _integral(value: object) -> object:
    """JSON Schema counts 1.0 as an integer, so the server does too; 1.5, NaN, "1" and true stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]


def integer(**limits):
    """An Integer with limits, for list items and optional fields (there the limits must sit inside the type to
    reach the OpenAPI schema as minimum/maximum)."""
    return Annotated[int, Field(**limits), BeforeValidator(_integral)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class ProcessRequest(WireModel):
    """POST /process. Defaults serve the challenge harness's probe, which sends only `prompt`."""

    # The fields HELM sends, every time (http_model_client.py):
    prompt: Text = Field(min_length=1)
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="<= 1e-5 means greedy.")
    num_return_sequences: Integer = Field(1, ge=1, le=16, description="HELM reads one completion; one is returned.")
    max_new_tokens: Integer = Field(50, ge=0, description="0 with echo_prompt scores the prompt alone.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    echo_prompt: bool = Field(False, description="Return the prompt's tokens and logprobs before the completion.")
    top_k_per_token: Integer = Field(1, ge=0, le=100, description="How many alternatives `top_logprob` lists.")
    stop_sequences: list[Text] = Field(default_factory=list, max_length=100, description="Each is checked per token.")
    # Fields of the challenge's 2023 sample servers, kept so older clients still work:
    num_samples: integer(ge=1, le=16) | None = Field(None, description="Old name of num_return_sequences.")
    top_k: integer(ge=0) | None = Field(None, description="Sampling: keep the k most likely tokens (0/None: all).")
    seed: integer(**SEED_RANGE) | None = Field(None, description="Makes sampling reproducible.")

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE


class Token(WireModel):
    text: str
    logprob: float
    top_logprob: dict[str, float] = Field(
        description="The likeliest tokens at this position by text; one that is part of a character is named by its "
        "bytes, as OpenAI names it (`bytes:\\xe3\\x83`)."
    )
    _bytes: bytes = PrivateAttr(b"")  # the token's own UTF-8 bytes (OpenAI's chat `bytes`), not sent to HELM


class ProcessResponse(WireModel):
    text: str
    tokens: list[Token]
    logprob: float = Field(description="Sum of the returned tokens' logprobs (an echoed prompt's included).")
    request_time: float = Field(description="Seconds the server spent on the request, queueing included.")


class TokenizeRequest(WireModel):
    text: Text
    truncation: bool = False
    max_length: Integer = Field(CONTEXT_TOKENS, ge=1)


class TokenizeResponse(WireModel):
    tokens: list[int]
    request_time: float


class DecodeRequest(WireModel):
    tokens: list[integer(ge=0, lt=2**63)]


class DecodeResponse(WireModel):
    text: str
    request_time: float


class ErrorResponse(WireModel):
    detail: str | list = Field(description="What was wrong with the request.")


class BatchStats(WireModel):
    """The batch in flight. null: the engine does not report this figure (vLLM schedules inside its own process)."""

    running: int = Field(
        description="Sequences in the decode batch (vLLM: derived from the requests in flight, up to max_batch_size)."
    )
    prefilling: int | None = Field(description="Admitted sequences whose prompt is being prefilled.")
    waiting: int | None = Field(
        description="Requests queued for a batch row (vLLM: derived, the requests in flight past max_batch_size)."
    )
    max_batch_size: int
    max_queue: int
    kv_cache_bytes_used: int | None
    kv_cache_bytes_budget: int | None


class HealthResponse(WireModel):
    status: str
    engine: str = Field(description="builtin or vllm.")
    engine_version: str = Field(description="The versions of what generates.")
    model: str
    revision: str
    adapter: str | None = Field(description="The directory of the adapter /process uses by default.")
    adapters: dict[str, str] = Field(description="Every adapter served, name -> directory (X-Adapter, OpenAI model).")
    default_adapter: str | None = Field(description="The name of the adapter /process uses without X-Adapter.")
    dtype: str
    quantization: str
    device: str
    max_context: int
    model_positions: int | None = Field(
        description="The model's own position limit (max_position_embeddings), None where it has none: a prompt and "
        "its completion fit within the smaller of it and max_context."
    )
    stop_at_newline: bool
    memory: dict[str, int] = Field(description="Bytes in use: process RSS, and CUDA allocated where present.")
    batch: BatchStats


def helm_body(prompt: str, **fields: object) -> dict:
    """A /process body with every field crfm-helm's HTTPModelClient sends (greedy: temperature 1e-7), as the
    smoke test and the tests send it; `fields` replace HELM's values."""
    body = {
        "prompt": prompt,
        "temperature": 1e-7,
        "num_return_sequences": 1,
        "max_new_tokens": 20,
        "top_p": 1.0,
        "echo_prompt": False,
        "top_k_per_token": 1,
        "stop_sequences": [],
    }
    return {**body, **fields}
