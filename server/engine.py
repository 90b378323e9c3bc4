"""The model work behind the HTTP API, engine by engine: tokenize, check and answer here; generate in an engine.

`Engine` holds what both engines share: the tokenizer (a pool of copies, so request threads tokenize in parallel),
the prompt and limit checks, and the wire answer built from a finished `Sequence`. An engine adds `run`, which
generates a sequence's completion with raw (untempered) logprobs and top-k alternatives:
- `builtin` (server/builtin.py): the project's continuous-batching scheduler over a transformers model, the
  reference and the default;
- `vllm` (server/vllm_engine.py): vLLM, in its own virtual environment.
No FastAPI here.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar

import psutil

from llmkit.core import devices
from llmkit.core.challenge import HELM_CLIENT_THREADS
from llmkit.core.models import (
    PROMPT_LEARNING,
    LoadedModel,
    adapter_weight_shapes,
    named_adapter_key,
    peft_type,
)
from llmkit.server.protocol import ProcessRequest, ProcessResponse, Token
from llmkit.server.sequence import RequestError, Scores, Sequence, UnknownModel
from llmkit.server.settings import EngineName, ServerSettings
from llmkit.server.text import TokenBytes, TokenizerPool, prompt_pieces, token_key

LOG = logging.getLogger(__name__)


class Engine:
    """A loaded model and everything the routes ask of it; subclasses generate."""

    name: ClassVar[str]
    version: str
    close_s: ClassVar[float] = 0.0  # how long `close` may take; a SIGTERM's drain leaves it that much of docker's 10 s

    def __init__(self, loaded: LoadedModel, settings: ServerSettings):
        self.settings = settings
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.tokenizers = TokenizerPool(self.tokenizer, HELM_CLIENT_THREADS)  # one per request HELM has in flight
        self._token_bytes = TokenBytes(self.tokenizer)
        self.started = time.time()  # /v1/models' `created`
        self.base_name = loaded.source.model_id  # what a request names to get the base model without an adapter
        self.adapters = settings.adapters  # name -> directory
        # An adapter peft applies to every row (load_engine lets it be the only one): the base is not served apart
        self.base_hidden_by = next(
            (name for name, config in settings.adapter_configs.items() if applies_to_every_row(config)), None
        )
        self.position_limit = position_limit(loaded.source.path)
        if self.position_limit is not None and self.position_limit < settings.max_context:
            LOG.warning(
                "The model has %d positions (max_position_embeddings), fewer than --max-context %d: a prompt and "
                "its completion get at most %d tokens together, and a longer prompt is a 422",
                self.position_limit,
                settings.max_context,
                self.position_limit,
            )
        # A tokenizer with more tokens than the embedding has rows (tokens added without resizing it) cannot feed
        # those tokens to the model: prompts holding them are refused rather than failing inside the forward pass.
        embeddings = getattr(loaded.model, "get_input_embeddings", lambda: None)()
        self.embedding_rows: int | None = getattr(embeddings, "num_embeddings", None)
        if self.embedding_rows is not None and len(self.tokenizer) > self.embedding_rows:
            LOG.warning(
                "The tokenizer has %d tokens but the model's embedding only %d rows: a prompt holding token ids "
                "%d and up is refused with a 422",
                len(self.tokenizer),
                self.embedding_rows,
                self.embedding_rows,
            )

    # --- which model a request gets --------------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        """What requests may name: the base model (unless an adapter is applied to every row), then each adapter."""
        return [*([] if self.base_hidden_by else [self.base_name]), *self.adapters]

    def adapter_for(self, name: str | None) -> str | None:
        """The adapter a request naming `name` gets (None: the base model); no name (or an empty one): the server's
        default."""
        if not name:
            return self.settings.default_adapter_name
        if name == self.base_name and self.base_hidden_by:
            raise UnknownModel(
                f"model {name!r} is not served apart here: peft applies adapter {self.base_hidden_by!r} to every "
                f"request; choose {', '.join(self.model_names)}"
            )
        if name == self.base_name:
            return None
        if name in self.adapters:
            return name
        raise self.unknown_model(name)

    def unknown_model(self, name: str) -> UnknownModel:
        return UnknownModel(f"model {name!r} is not served here; choose one of: {', '.join(self.model_names)}")

    def check_room(self, sequences: int, field: str) -> None:
        """Refuse a request for more sequences than the batch and the wait queue together ever hold: a 503 would
        tell the client to retry what can never be served."""
        room = self.settings.max_batch_size + self.settings.max_queue
        if sequences > room:
            raise RequestError(
                f"{field}: this request asks for {sequences} sequences at once; this server holds at most {room} "
                f"(--max-batch-size {self.settings.max_batch_size} + --max-queue {self.settings.max_queue})",
                field=field,
            )

    async def run(self, seq: Sequence) -> None:
        """Generate `seq`'s completion (and its prompt's scores); cancelling the awaiting task drops the request."""
        raise NotImplementedError

    def stats(self) -> dict[str, int | None]:
        """The batch in flight, for /health (None where the engine does not report a figure)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def healthy(self) -> bool:
        """False once the engine cannot answer any more (vLLM's engine process died): /health then says so."""
        return True

    @property
    def stopped_message(self) -> str:
        """What /health and every request say (503) once `healthy()` is False."""
        return f"the {self.name} engine has stopped: restart the server"

    # --- tokenizer ---------------------------------------------------------------------------------------------
    def encode(self, text: str, *, special: bool = False) -> list[int]:
        with self.tokenizers.borrow() as tokenizer:
            return tokenizer.encode(text, add_special_tokens=special)

    def check_ids(self, ids: list[int], field: str = "tokens") -> None:
        vocab = len(self.tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise RequestError(f"tokens {bad[:5]} are outside the vocabulary (0..{vocab - 1})", field=field)

    def decode(self, ids: list[int], field: str = "tokens") -> str:
        """The text of `ids`; `field` names them in the error for an id outside the vocabulary."""
        self.check_ids(ids, field)
        with self.tokenizers.borrow() as tokenizer:
            return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def tokenize(self, text: str, truncation: bool, max_length: int) -> list[int]:
        ids = self.encode(text)
        return ids[:max_length] if truncation else ids

    def memory(self) -> dict[str, int]:
        """Bytes in use: this process and its children (vLLM's engine runs in one), and CUDA where torch sees it."""
        process = psutil.Process()
        used = {"rss_bytes": sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])}
        if devices.is_cuda(self.loaded.device):
            import torch

            used["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
        return used

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Chat messages as prompt ids, through the tokenizer's chat template (which writes any BOS itself)."""
        if not self.tokenizer.chat_template:
            raise RequestError("this model's tokenizer has no chat template: use /v1/completions")
        from jinja2 import TemplateError

        with self.tokenizers.borrow() as tokenizer:
            try:
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except TemplateError as err:  # the template refuses these messages (roles that must alternate...)
                raise RequestError(f"messages: this model's chat template refuses them: {err}") from None
        return self.encode(text)

    def document_start(self) -> list[int]:
        """What an empty OpenAI prompt conditions on, as OpenAI's models do on <|endoftext|>: the tokenizer's BOS,
        else its EOS (the token a base model saw between documents); none when it has neither."""
        token = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        return [] if token is None else [token]

    def prompt_room(self, added: int) -> int:
        """Tokens a prompt with `added` leading special tokens (its BOS) and its completion may take together.

        `--max-context` counts the prompt's own tokens, as /tokenize returns them: HELM sizes and truncates prompts
        with /tokenize, and its own HuggingFace client likewise adds the BOS on top. The model's positions bound it.
        """
        room = self.settings.max_context + added
        return room if self.position_limit is None else min(room, self.position_limit)

    # --- a request in flight -----------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> tuple[list[int], int]:
        """The prompt as the model sees it, and how many leading special tokens (BOS) the tokenizer added. A special
        token it appends (a tokenizer saved with add_eos_token) is left off: an EOS would end the document that
        the completion continues, and echo would score it as part of the prompt."""
        plain = self.encode(prompt)
        full = self.encode(prompt, special=True)
        added = leading_specials(full, plain)
        if added and plain[:added] == full[:added]:
            # the text writes its own BOS (a chat template rendered to text, lm-eval's --apply_chat_template):
            # the tokenizer's would be a second one, which the model never saw in training
            return plain, 0
        return full[: added + len(plain)] if plain else full, added

    def new_sequence(
        self,
        request: ProcessRequest,
        *,
        ids: list[int] | None = None,
        adapter: str | None = None,
        stop_at_newline: bool | None = None,
        max_tokens_field: str = "max_new_tokens",
    ) -> Sequence:
        """Check and tokenize a request (on the caller's thread), ready for `run`.

        Args:
            ids: the prompt as token ids, taken as they are (an OpenAI token prompt, a chat); else `request.prompt`
                is tokenized, with the tokenizer's leading special tokens.
            adapter: the adapter's name (`adapter_for`); None: the base model.
            stop_at_newline: HELM's newline rule; None: the server's setting (/process).
            max_tokens_field: what the client called max_new_tokens (OpenAI: max_tokens), for its error.
        """
        limit = self.settings.max_new_tokens_limit
        if "max_new_tokens" not in request.model_fields_set and request.max_new_tokens > limit:
            # the harness's probe sends only `prompt`: the wire default yields to this server's lower limit
            request = request.model_copy(update={"max_new_tokens": limit})
        if request.max_new_tokens > limit:
            raise RequestError(
                f"{max_tokens_field} {request.max_new_tokens} is over this server's limit {limit}",
                field=max_tokens_field,
            )
        if ids is None:
            ids, added = self.prompt_ids(request.prompt)
        else:
            self.check_ids(ids, "prompt")
            added = 0
        if not ids:
            raise RequestError("prompt is empty: there is no token to condition on", field="prompt")
        unembeddable = sorted({i for i in ids if self.embedding_rows is not None and i >= self.embedding_rows})
        if unembeddable:
            raise RequestError(
                f"prompt holds tokens {unembeddable[:5]} that the model has no embedding for (the tokenizer has "
                f"{len(self.tokenizer)} tokens, the model's embedding {self.embedding_rows} rows)",
                field="prompt",
            )
        room = self.prompt_room(added)
        if len(ids) > room:
            if room == self.settings.max_context + added:
                why = f"over the context limit of {self.settings.max_context}"
            else:
                why = f"over the {room} positions this model has (max_position_embeddings)"
                why += f", with the {added} special token(s) the tokenizer adds" if added else ""
            raise RequestError(f"prompt is {len(ids) - added} tokens, {why}", field="prompt")
        timeout = self.settings.request_timeout_s
        return Sequence(
            request=request,
            ids=ids,
            added=added,
            max_new=max(0, min(request.max_new_tokens, room - len(ids))),
            deadline=time.monotonic() + timeout if timeout else None,
            stop_at_newline=self.settings.stop_at_newline if stop_at_newline is None else stop_at_newline,
            adapter=adapter,
        )

    def prompt_tokens(self, seq: Sequence) -> list[Token]:
        """The echoed prompt's tokens (after `added`), with text pieces and top-k texts, off the model thread."""
        with self.tokenizers.borrow() as tokenizer:
            return self._tokens(
                tokenizer, prompt_pieces(tokenizer, seq.prompt.ids), seq.prompt, seq.request.top_k_per_token
            )

    def completion_tokens(self, seq: Sequence, start: int = 0, end: int | None = None) -> list[Token]:
        """Completion tokens start..end (a stream sends them as they settle), EOS not included."""
        end = len(seq.pieces) if end is None else end
        done = seq.completion
        scores = Scores(*(v[start:end] for v in (done.ids, done.logprobs, done.top_ids, done.top_logprobs)))
        with self.tokenizers.borrow() as tokenizer:
            return self._tokens(tokenizer, seq.pieces[start:end], scores, seq.request.top_k_per_token)

    def eos_tokens(self, seq: Sequence) -> list[Token]:
        """The EOS token that ended the completion, if one did, as its special token's text (not in the text)."""
        with self.tokenizers.borrow() as tokenizer:
            pieces = [tokenizer.decode(seq.eos.ids)] if seq.eos.ids else []
            return self._tokens(tokenizer, pieces, seq.eos, seq.request.top_k_per_token)

    def respond(self, seq: Sequence) -> ProcessResponse:
        """The wire answer for a finished sequence: text pieces and top-k texts are made here, off the model thread."""
        prompt = self.prompt_tokens(seq) if seq.request.echo_prompt else []
        tokens = prompt + self.completion_tokens(seq)
        return ProcessResponse(
            text="".join(t.text for t in tokens),
            tokens=tokens,
            logprob=sum(token.logprob for token in tokens),  # echoed: the prompt's too (helm-protocol.md)
            request_time=0.0,  # the route sets the wall time, queueing included
        )

    def _tokens(self, tokenizer, pieces: list[str], scores: Scores, k: int) -> list[Token]:
        tokens = []
        for piece, token_id, logprob, ids, values in zip(
            pieces, scores.ids, scores.logprobs, scores.top_ids, scores.top_logprobs, strict=True
        ):
            token = Token(text=piece, logprob=logprob, top_logprob=self._top_texts(tokenizer, ids, values, k))
            token._bytes = self._token_bytes(tokenizer, token_id)
            tokens.append(token)
        return tokens

    def _top_texts(self, tokenizer, ids: list[int], values: list[float], k: int) -> dict[str, float]:
        """The first k distinct texts among a position's candidates (`text.TopCandidates`), likeliest first."""
        top: dict[str, float] = {}
        vocabulary = len(tokenizer)
        for token, value in zip(ids, values, strict=True):
            if len(top) == k:
                break
            if token >= vocabulary:  # a padded embedding row: no token, never chosen (vLLM lists it)
                continue
            # Ids may share a text (SentencePiece's "A" and its byte token <0x41>): the likeliest keeps it, and
            # the next candidates fill the places, so that k texts are listed, as top_k_per_token asks
            top.setdefault(token_key(self._token_bytes(tokenizer, token)), value)
        return top


def load_engine(settings: ServerSettings) -> Engine:
    """The engine `settings.engine` names, with its model loaded (vLLM's import only happens when asked for).

    Raises:
        ValueError: an adapter the engine cannot serve (`check_adapters`).
    """
    check_adapters(settings)
    if settings.engine is EngineName.vllm:
        from llmkit.server.vllm_engine import VllmEngine

        return VllmEngine(settings)
    from llmkit.server.builtin import BuiltinEngine

    return BuiltinEngine.load(settings)


def check_adapters(settings: ServerSettings) -> None:
    """Refuse, before the model loads, an adapter of `settings` its engine cannot serve right, from the adapter's
    files alone (whether its weights fit the base is known once the base is loaded: `models.apply_adapter`);
    `llmkit submission` asks the same of the adapter it bundles, before the zip is built.

    Raises:
        ValueError: a DoRA adapter, which neither engine can apply per row of a batch (peft refuses per-row
            adapters with DoRA, vLLM has no DoRA): merging it is how it gets served; and the others below.
    """
    base_is_default = settings.default_adapter is not None and settings.default_adapter_name is None
    for name, path in settings.adapters.items():
        config = settings.adapter_configs[name]
        kind = peft_type(path, config)
        if config.get("use_dora"):
            raise ValueError(
                f"Adapter {path} is DoRA (use_dora), which cannot be applied per request in a batch (peft refuses "
                "it, vLLM has none): merge it into the base (llmkit merge --adapter DIR --base MODEL --out DIR) and "
                "serve the merged folder"
            )
        if targets := config.get("target_parameters"):
            # peft's ParamWrapper refuses the per-row adapter_names every batch passes ("does not support mixed
            # adapter batches yet"): each request was a 500, the base's too
            raise ValueError(
                f"Adapter {path} trains fused MoE expert parameters (target_parameters {targets}), which peft cannot "
                "apply per request in a batch: merge it into the base (llmkit merge --adapter DIR --base MODEL --out "
                "DIR) and serve the merged folder"
            )
        if (every_row := applies_to_every_row(config)) and (len(settings.adapters) > 1 or base_is_default):
            raise ValueError(
                f"Adapter {path} is {every_row}, which peft applies to every row of a batch (a request for another "
                "adapter or the base model would get it too): serve it alone (it is then the default), or, a LoRA, "
                "merge it and serve the merged folder"
            )
        if kind in PROMPT_LEARNING:
            raise ValueError(
                f"Adapter {path} is {kind} (prompt learning), which this server cannot apply: peft's "
                "forward adds its virtual tokens again at every cached decoding step, so the answers would not be "
                "the adapter's. Use it with peft's own generate"
            )
        if settings.engine is EngineName.vllm and kind != "LORA":
            raise ValueError(
                f"Adapter {path} is {kind}; vLLM serves LoRA adapters only: serve it with the built-in engine "
                "(--engine builtin)"
            )
        trained = trained_beside_lora(config)
        if trained and settings.engine is EngineName.vllm:
            # vLLM started, then its engine died at the adapter's first request ("... is unsupported LoRA weight",
            # "vLLM only supports modules_to_save being ... for classification models"): every later request a 503
            raise ValueError(
                f"Adapter {path} trains {trained}, which vLLM cannot load (it serves LoRA layers alone): serve it "
                "with the built-in engine (--engine builtin), or merge it and serve the merged folder"
            )
        if settings.engine is EngineName.vllm and (named := named_adapter_key(adapter_weight_shapes(path), path)):
            # the same: vLLM said "... is unsupported LoRA weight" at the first request, its engine dead
            raise ValueError(
                f"Adapter {path}: its weight {named[0]} carries peft's adapter name '{named[1]}' (a PeftModel's "
                "state_dict, not save_pretrained's file), which vLLM cannot load: serve it with the built-in engine "
                "(--engine builtin), which maps the keys, or write the adapter with peft's save_pretrained"
            )
        if trained and len(settings.adapters) > 1:
            # peft's per-row forward looks the module up for every adapter in the batch: the others' rows failed
            raise ValueError(
                f"Adapter {path} trains {trained}, which cannot be served beside other adapters in one batch: serve "
                "it alone, or merge it and serve the merged folder"
            )


def applies_to_every_row(config: dict) -> str | None:
    """What in an adapter peft cannot leave off per row of a batch (its forward ignores `adapter_names`, or the
    adapter changes the base layers themselves); None for a plain LoRA adapter, which it can (`config`: one
    load_engine has checked)."""
    kind = config["peft_type"]
    if kind != "LORA" and kind not in PROMPT_LEARNING:
        return kind  # VeRA, IA3, LoHa, LoKr...: no per-row adapter_names in their layers
    if config.get("bias", "none") != "none":
        return f"LoRA with bias: {config['bias']} (its trained biases are written into the base layers)"
    if config.get("layer_replication"):
        return "LoRA with layer_replication (its layers are copies the base model does not have)"
    return None


def trained_beside_lora(config: dict) -> str | None:
    """What an adapter trains outside its LoRA layers, kept by peft per adapter name (a copy of a module, rows of
    the embeddings); None when nothing is."""
    if modules := config.get("modules_to_save"):
        return f"{', '.join(modules)} fully (modules_to_save)"
    if config.get("trainable_token_indices"):
        return "single tokens' embeddings (trainable_token_indices)"
    return None


def leading_specials(full: list[int], plain: list[int]) -> int:
    """How many tokens the tokenizer put before the text's own (`plain`) in `full` (its BOS): 0 when the text's
    tokens are not found whole in it. Empty text: everything is the tokenizer's."""
    if not plain:
        return len(full)
    starts = (k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain)
    return next(starts, 0)


def position_limit(model_dir) -> int | None:
    """The model's own position limit (max_position_embeddings), which no sequence may pass; None: it has none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir).get_text_config()
    return getattr(config, "max_position_embeddings", None)
