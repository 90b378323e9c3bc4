"""The tokenizer a config trains with: the base model's (or `tokenizer_config`'s), plus the config's special and
added tokens, a pad token and the chat template; and what `llmkit validate` finds in it without training.

Training, preprocessing and the benchmark take it from `load_tokenizer`; `llmkit validate` from `validation_tokenizer`,
which loads it once for all the checks that read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from tokenizers import AddedToken

from llmkit.config.plan import TokenizedSplit
from llmkit.config.schema import AXOLOTL_TOKEN_ROWS, AxolotlConfig, ConfigError
from llmkit.core.files import user_path
from llmkit.core.models import resolve_model
from llmkit.core.shapes import ModelConfigNotFound, ModelShape, model_shape
from llmkit.data.chat import ChatDefaults, check_template_name, config_template
from llmkit.data.prompts import CHAT_TYPES
from llmkit.data.sources import source_name


def load_tokenizer(cfg: AxolotlConfig) -> Any:
    """The base model's tokenizer with the config's special and added tokens; a pad token is always set (EOS)."""
    return _configured_tokenizer(cfg, _pretrained_tokenizer(cfg), lambda: _base_shape(cfg))


@dataclass(frozen=True)
class CheckedTokenizer:
    """The tokenizer `llmkit validate` checks, loaded once for all its checks (`validation_tokenizer`)."""

    configured: Any  # as training configures it: the config's special and added tokens, pad token, chat template
    loaded_size: int  # its tokens as loaded, before the config's: what the model's embedding rows must cover


def validation_tokenizer(cfg: AxolotlConfig, base: ModelShape | None) -> CheckedTokenizer | None:
    """The tokenizer training uses, loaded once for validate's checks (count_training_tokens,
    trained_tokenizer_size, tokenizer_problems); None where it is not here offline or does not load (training says
    why). `base`: the base model's shape as the plan has it (None: unknown), for the special-tokens rule.

    Raises:
        ConfigError: the config's own settings cannot be used with it (tokenizer_type, special_tokens, chat_template).
    """
    from llmkit.config.plan import tokenizer_here

    if not tokenizer_here(cfg):
        return None
    try:
        tokenizer = _pretrained_tokenizer(cfg)
    except ConfigError:  # a ValueError too, but the config's own (tokenizer_type): validate says it
        raise
    except (OSError, ValueError, AttributeError):  # not loadable here: training says why
        return None
    loaded_size = len(tokenizer)  # before _configured_tokenizer adds the config's tokens to it
    return CheckedTokenizer(_configured_tokenizer(cfg, tokenizer, lambda: base), loaded_size)


def tokenizer_problems(cfg: AxolotlConfig, vocab_size: int | None, checked: CheckedTokenizer | None) -> list[str]:
    """What training would meet in the tokenizer, found without training (`llmkit validate`): more tokens than the
    model has embedding rows (`vocab_size`, None: unknown), a dataset it cannot build rows for (no chat template).
    Empty where the tokenizer is not here offline (the plan's token count has the same limit) or does not load.

    Args:
        checked: the tokenizer (`validation_tokenizer`); None where it is not here or does not load.
    """
    from llmkit.config.plan import tokenizer_here
    from llmkit.data import spec_problems

    if not tokenizer_here(cfg):
        return _template_name_problems(cfg)
    if checked is None:  # not loadable here: training says why
        return []
    problems = []
    if vocab_size is not None and checked.loaded_size > vocab_size:  # a smaller tokenizer leaves rows unused: fine
        problems.append(
            f"{cfg.tokenizer_key}: the tokenizer has {checked.loaded_size:,} tokens but the model has {vocab_size:,} "
            f"embedding rows (vocab_size in config.json): token ids from {vocab_size:,} up index past the embeddings; "
            "use the model's own tokenizer or a model whose vocab_size covers this one"
        )
    return problems + spec_problems(cfg, checked.configured)


def _template_name_problems(cfg: AxolotlConfig) -> list[str]:
    """The chat templates the config names that cannot be used whatever the tokenizer (a name this project does not
    ship, a missing chat_template_jinja file); where the tokenizer is here, building the rows checks them."""
    defaults = ChatDefaults.from_config(cfg)
    problems = []
    if top := defaults.template or ("jinja" if defaults.jinja else None):
        try:
            check_template_name(top, defaults.jinja, defaults.base_dir, "chat_template")
        except ValueError as err:
            problems.append(str(err))
    for key, position, spec in cfg.dataset_entries():
        if cfg.rl or spec.base_type not in CHAT_TYPES:  # as spec_problems: preference rows check their own
            continue
        choice, jinja, name = spec.template_choice(None, None)  # its own choice; the config's is checked above
        try:
            check_template_name(choice, jinja, defaults.base_dir, name)
        except ValueError as err:
            problems.append(f"{key}[{position}].{err} ({source_name(spec)})")
    return problems


# What a folder holds where a tokenizer loads from it: fast (tokenizer.json), sentencepiece (tokenizer.model,
# spiece.model), BPE or WordPiece vocabularies (vocab.json + merges.txt, vocab.txt), tiktoken files.
_TOKENIZER_FILES = ("tokenizer.json", "*.model", "vocab*", "merges.txt", "*tiktoken*")


def _pretrained_tokenizer(cfg: AxolotlConfig) -> Any:
    """The tokenizer as loaded (`tokenizer_type`'s class, else AutoTokenizer), before the config's tokens.

    Raises:
        ConfigError: `tokenizer_type` names a class that reads these files unlike the model's own class.
    """
    source = _tokenizer_source(cfg)
    key = cfg.tokenizer_key
    if source.is_dir() and not any(next(source.glob(pattern), None) for pattern in _TOKENIZER_FILES):
        # AutoTokenizer stopped train on transformers' "Couldn't instantiate the backend tokenizer" traceback
        raise ConfigError(
            [f"{key}: {source} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}): nothing to tokenize with"],
            cfg.source,
        )
    tokenizer_cls = getattr(transformers, cfg.tokenizer_type or "AutoTokenizer")
    options: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.tokenizer_legacy is not None:
        options["legacy"] = cfg.tokenizer_legacy
    tokenizer = tokenizer_cls.from_pretrained(source, **options)
    if cfg.tokenizer_type not in (None, "AutoTokenizer"):
        _check_tokenizer_type(cfg, tokenizer, source, options)
    if not tokenizer.encode(_READING_SAMPLE, add_special_tokens=False):
        # LlamaTokenizer.from_pretrained on a folder holding config.json alone loads, and gives [] for every text:
        # validate and train said only that no row had a trained token ("every token masked ...").
        raise ConfigError(
            [
                f"{key}: {source}: its tokenizer ({type(tokenizer).__name__}) encodes text to no tokens "
                f"({_READING_SAMPLE!r} gives []): the folder holds no tokenizer files it reads, so every training "
                "row would be empty"
            ],
            cfg.source,
        )
    return tokenizer


# Spaces, a line break and characters outside ASCII: what a tokenizer class of another kind loses. The shipped
# Mistral and Llama-2 configs name LlamaTokenizer; on a byte-level BPE base (Qwen2, SmolLM) it drops all three, and
# validate, preprocess and train went on to train on the garbled text.
_READING_SAMPLE = "The sky is blue.\nÜber 🙂"


def _check_tokenizer_type(cfg: AxolotlConfig, tokenizer: Any, source: Path, options: dict[str, Any]) -> None:
    """Refuses `tokenizer_type` where its class reads `_READING_SAMPLE` unlike AutoTokenizer on the same files (the
    class the model's own tokenizer_config.json names)."""
    try:
        own = transformers.AutoTokenizer.from_pretrained(source, **options)
    except (OSError, ValueError):  # only the named class reads these files: nothing to compare it with
        return
    read, own_read = _read_back(tokenizer), _read_back(own)
    if read == own_read:
        return
    raise ConfigError(
        [
            f"tokenizer_type: {cfg.tokenizer_type} reads this model's tokenizer files unlike the model's own class "
            f"({type(own).__name__}): {_READING_SAMPLE!r} comes back as {read!r}, not {own_read!r}, so every "
            "training row would be garbled; remove tokenizer_type: the model's own tokenizer class is used"
        ],
        cfg.source,
    )


def _read_back(tokenizer: Any) -> str:
    """`_READING_SAMPLE` encoded and decoded: the text as the model would read it."""
    ids = tokenizer.encode(_READING_SAMPLE, add_special_tokens=False)
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def _tokenizer_source(cfg: AxolotlConfig) -> Path:
    """Where the tokenizer loads from: a local `tokenizer_config` folder as it is (tokenizer files alone will do, as
    axolotl's AutoTokenizer reads them; a model folder needs config.json), else the model `resolve_model` finds."""
    if cfg.tokenizer_config and (folder := user_path(cfg.tokenizer_config)).is_dir():
        return folder
    return resolve_model(cfg.tokenizer_source, cfg.revision_of_model).path


def _check_new_special_tokens_trained(
    cfg: AxolotlConfig, tokenizer: Any, tokens: dict[str, str], base: Callable[[], ModelShape | None]
) -> None:
    """`AxolotlConfig.check_new_tokens_trained` for a special token the tokenizer does not have as one token already
    (it gets a new embedding row); `base` gives the base model's shape. pad_token is exempt: it is never a target."""
    if cfg.adapter is None:
        return
    # more than 2 pieces, as axolotl counts: a token the vocabulary has is one (two after a prefix space)
    new = [
        key
        for key, value in tokens.items()
        if key != "pad_token"
        and getattr(tokenizer, key, None) != value
        and len(tokenizer.encode(value, add_special_tokens=False)) > 2
    ]
    if not new:
        return
    key = new[0]
    cfg.check_new_tokens_trained(
        _embedding_layers(base()),
        f"special_tokens.{key}: {tokens[key]!r} is a new token here, whose embedding an adapter leaves untrained",
        f", or use the tokenizer's own {key} ({getattr(tokenizer, key, None)!r})",
    )


def _embedding_layers(shape: ModelShape | None) -> list[str]:
    """The base model's input embeddings and output head by name, as lora_modules_to_save lists them (embed_in in
    GPT-NeoX, whose head transformers 5 names lm_head, not axolotl's embed_out; wte in GPT-2; a tied model's head
    too); axolotl's default names, embed_tokens and lm_head, where the model's shape is unknown."""
    return shape.token_rows if shape else list(AXOLOTL_TOKEN_ROWS)


def _base_shape(cfg: AxolotlConfig) -> ModelShape | None:
    """The base model's shape from its config.json; None where it is not here or cannot be built (training says
    what is wrong with the model)."""
    try:
        return model_shape(cfg.base_model_config or cfg.base_model, cfg.revision_of_model)
    except (ModelConfigNotFound, ValueError):
        return None


def _configured_tokenizer(cfg: AxolotlConfig, tokenizer: Any, base: Callable[[], ModelShape | None]) -> Any:
    """`tokenizer` with the config's special and added tokens, pad token and chat template; `base` gives the base
    model's shape (None: unknown) where a new special token needs its embeddings' names."""
    if cfg.special_tokens:
        tokens = {k: v for k, v in cfg.special_tokens.model_dump().items() if v is not None}
        _check_new_special_tokens_trained(cfg, tokenizer, tokens, base)
        tokenizer.add_special_tokens(tokens)
    if cfg.tokens:
        cfg.check_new_tokens_trained(_embedding_layers(base()))  # before the data, as the special tokens' rule
        # As axolotl adds them: whole tokens, matched as written (not normalised, no stripped spaces).
        tokenizer.add_tokens([AddedToken(token, rstrip=False, lstrip=False, normalized=False) for token in cfg.tokens])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        template = config_template(tokenizer, ChatDefaults.from_config(cfg))
    except ValueError as err:
        raise ConfigError([str(err)], cfg.source) from None
    if template:  # as axolotl does: the saved tokenizer (and so the served model) carries the configured template
        tokenizer.chat_template = template
    return tokenizer


def trained_tokenizer_size(cfg: AxolotlConfig, checked: CheckedTokenizer | None) -> int | None:
    """How many tokens the tokenizer training uses has, `special_tokens` and `tokens` added (training grows the
    embeddings to it); None where the config adds none, or the tokenizer (`validation_tokenizer`) is not here
    offline or does not load (training says why)."""
    if not (cfg.special_tokens or cfg.tokens) or checked is None:
        return None
    return len(checked.configured)


def check_untokenized(cfg: AxolotlConfig) -> str | None:
    """Where the tokenizer is not here offline: the local datasets read and their rows checked as far as no
    tokenizer is needed (`check_local_rows`: a file that cannot be read, a bad JSON line, a row without the fields
    its type needs), where validate had read no local data at all; returns the line saying what stayed unchecked
    and how to check it. None where the tokenizer is here (the data is tokenized) or no dataset is local.

    Raises:
        ConfigError: bad data training would stop on, with the data pipeline's message.
    """
    from llmkit.config.plan import tokenizer_here
    from llmkit.data import DataError
    from llmkit.data.pipeline import check_local_rows

    if tokenizer_here(cfg) or not any(spec.read_here for _, _, spec in cfg.dataset_entries()):
        return None
    try:
        unread = check_local_rows(cfg)
    except DataError as err:
        raise ConfigError([str(err)], cfg.source) from None
    key, source = cfg.tokenizer_key, cfg.tokenizer_source
    rows = f" (nor {', '.join(unread)}'s rows at all: only the tokenizer builds them)" if unread else ""
    return (
        f"{key}: {source}: the tokenizer is not a folder here (validate downloads no model), so the local data's "
        f"files and rows' fields were checked but not tokenized{rows}: rows longer than sequence_len or with nothing "
        f"to train, the chat template's rendering and the token count are unchecked; to check them, download it "
        f"(hf download {source} --local-dir <folder>) and set {key} to that folder"
    )


def count_training_tokens(cfg: AxolotlConfig, checked: CheckedTokenizer | None) -> TokenizedSplit | None:
    """One epoch of the training split as training prepares it, for the plan's steps and training-time projection
    (preference pairs: the longer sequence of each pair training keeps); None when the data cannot be tokenized here
    offline (a hub dataset or tokenizer, a tokenizer that does not load: `checked` is None). Beside a hub dataset,
    the local ones are read and tokenized alone (`check_local_datasets`): their bad rows are training's refusal too.

    Raises:
        ConfigError: bad data (a file, row or field; nothing left to train on): training would stop on it, so
            `llmkit validate` refuses the config with the data pipeline's message.
    """
    from llmkit.config.plan import tokenizer_here, tokens_countable_here
    from llmkit.data import DataError, epoch_tokens
    from llmkit.data.pipeline import check_local_datasets

    if checked is None or not tokenizer_here(cfg):
        return None
    try:
        if not tokens_countable_here(cfg):  # a hub dataset, never downloaded here: its rows stay uncounted
            check_local_datasets(cfg, checked.configured)
            return None
        if cfg.rl:
            from llmkit.data.preference import epoch_pair_tokens

            return epoch_pair_tokens(cfg, checked.configured)
        return epoch_tokens(cfg, checked.configured)
    except DataError as err:
        raise ConfigError([str(err)], cfg.source) from None
    except ConfigError:  # a ValueError too, but the config's own: validate says it
        raise
    except (OSError, ValueError):
        return None
