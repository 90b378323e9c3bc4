"""OpenAI's wire format: the bodies of /v1/completions, /v1/chat/completions and /v1/models, and its error shape.

Field names and meanings follow OpenAI's API reference (the legacy completions logprobs format: tokens,
token_logprobs, top_logprobs, text_offset; chat's content[{token, logprob, bytes, top_logprobs}]). Like HELM's
models (protocol.py) types are strict and unknown fields are accepted and listed in `X-Ignored-Fields`; options this
server cannot honour (penalties, logit_bias, suffix, best_of above n, tools, JSON response formats) are refused with a
400 rather than ignored, so a client never gets a silently different answer. Torch-free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_serializer, model_validator

from llmkit.server.protocol import SEED_RANGE, Integer, Text, WireModel, integer

MAX_CHOICES = 16  # n, as HELM's num_return_sequences
MAX_LOGPROBS = 20  # alternatives per token (OpenAI allows 5 for completions, 20 for chat)


class StreamOptions(WireModel):
    include_usage: bool = Field(False, description="Send a last chunk with the usage and no choices.")


class _Sampling(WireModel):
    """What completions and chat requests share."""

    model: str | None = Field(None, description="The base model or an adapter (GET /v1/models); empty: the default.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: Integer = Field(1, ge=1, le=MAX_CHOICES, description="Choices per prompt; with a seed, choice i uses seed + i.")
    stop: Text | list[Text] | None = Field(None, description="Up to 16 sequences; the text ends before the first.")
    seed: integer(**SEED_RANGE) | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted and ignored.")
    presence_penalty: float = Field(0.0, description="Only 0 (no penalty) is served.")
    frequency_penalty: float = Field(0.0, description="Only 0 (no penalty) is served.")
    logit_bias: dict[str, float] | None = Field(None, description="Not served: only empty.")

    @field_validator("temperature", "top_p", "n", "presence_penalty", "frequency_penalty", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: object, info: ValidationInfo) -> object:
        # OpenAI's API marks these nullable, and clients that write every field send null for "unset"
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported by this server; send 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict | None) -> dict | None:
        if value:
            raise ValueError("logit_bias is not supported by this server")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError(f"at most 16 stop sequences, got {len(value)}")
        return value

    @property
    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: Text | list[Text] | list[Integer] | list[list[Integer]] = Field(
        description="A text, texts, a token-id list (taken as is, no BOS added) or token-id lists."
    )
    max_tokens: integer(ge=0) | None = Field(
        None, description="Empty: 16 (OpenAI's default) or the server's limit if lower; 0 with echo scores the prompt."
    )
    logprobs: integer(ge=0, le=MAX_LOGPROBS) | None = Field(
        None, description="Return each token's logprob and this many likeliest alternatives."
    )
    echo: bool = Field(False, description="Return the prompt before the completion (and its logprobs).")
    best_of: integer(ge=1) | None = Field(None, description="Only equal to n (or empty) is served.")
    suffix: str | None = Field(None, description="Not served: only empty.")

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value):
        if isinstance(value, list) and (not value or any(isinstance(p, list) and not p for p in value)):
            raise ValueError("prompt holds no text or tokens")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (insertion) is not supported by this server")
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text or a token-id list."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class TextPart(WireModel):
    type: Literal["text"]
    text: Text

    @field_validator("type", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        if isinstance(value, str) and value != "text":  # "Input should be 'text'" did not say images are not served
            raise ValueError(f"content parts of type {value!r} are not served: this server takes text parts only")
        return value


class ChatMessage(WireModel):
    # As OpenAI: only an assistant's turn may come without content, absent, null or an empty list of parts (the schema
    # says so too, for clients and fuzzers); an empty text is content, as OpenAI takes it.
    model_config = WireModel.model_config | ConfigDict(
        json_schema_extra={
            "if": {"properties": {"role": {"const": "assistant"}}},
            "else": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}, "minItems": 1}}},
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = Field(None, validate_default=True)  # validated when absent too
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content_given(cls, content: str | list[TextPart] | None, info: ValidationInfo) -> str | list[TextPart] | None:
        role = info.data.get("role")  # absent when the role itself was refused
        if (content is None or content == []) and role not in (None, "assistant"):
            raise ValueError(f"a {role} message needs content")
        return content

    def template_form(self) -> dict:
        """The message as a chat template reads it: content as one text."""
        content = self.content if not isinstance(self.content, list) else "".join(p.text for p in self.content)
        role = "system" if self.role == "developer" else self.role  # OpenAI's newer name for system
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: integer(ge=0) | None = Field(None, description="Empty: as many as the context allows.")
    max_completion_tokens: integer(ge=0) | None = Field(None, description="OpenAI's newer name for max_tokens.")
    logprobs: bool = Field(False, description="Return each content token's logprob.")
    top_logprobs: integer(ge=0, le=MAX_LOGPROBS) | None = Field(
        None, description="Alternatives per token; needs logprobs true."
    )
    tools: list[dict] | None = Field(None, description="Not served (no tool calling): only empty.")
    tool_choice: str | dict | None = Field(None, description='Not served: only "none" or "auto" without tools.')
    functions: list[dict] | None = Field(None, description="Not served (OpenAI's older tools): only empty.")
    function_call: str | dict | None = Field(None, description='Not served: only "none" or "auto".')
    response_format: dict | None = Field(None, description='Only {"type": "text"}: no JSON mode or schema.')

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list | None) -> list | None:
        if value:
            raise ValueError("tool calling is not supported by this server; send no tools")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: str | dict | None) -> str | dict | None:
        if value not in (None, "none", "auto"):
            raise ValueError("tool calling is not supported by this server; only 'none' or 'auto' is accepted")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict | None) -> dict | None:
        if value is not None and "type" not in value:
            raise ValueError('type is missing: only {"type": "text"} is served (no JSON mode or schema)')
        if value is not None and value.get("type") != "text":
            raise ValueError(f"only type 'text' is served, not {value.get('type')!r} (no JSON mode or schema)")
        return value

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(WireModel):
    """Legacy format: one entry per token; the first prompt token (nothing to condition on) has null."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(WireModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(WireModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(WireModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(WireModel):
    content: list[TokenLogprob]


class AssistantMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(WireModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(WireModel):
    role: Literal["assistant"] | None = None  # the first chunk of a choice only
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None}  # as OpenAI sends it


class ChatChunkChoice(WireModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmkit"
    root: str = Field(description="The base model's name, or the adapter's directory.")
    parent: str | None = Field(None, description="An adapter's base model; null for the base.")


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(WireModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(WireModel):
    error: ErrorDetail
