"""`llmkit random-model`: a randomly initialised model of a base model's shape, saved as a model folder.

For measuring a base model's speed and memory without its weights: `llmkit bench --model DIR` (serving and
training), or a submission's memory fit on a track's card. The shape is the base's config.json, found as
`llmkit validate` finds it (`core.shapes.find_model_config`: a folder, the HF cache, the ones shipped with llmkit,
the hub). The weights are random, so the model generates noise at the real model's cost per token.

The tokenizer is another model's (default: the embedded default's), since a tokenizer cannot be made up. Where
the shape's vocabulary is smaller than that tokenizer's, it is widened to it, so that every id the tokenizer
makes has an embedding row; the summary says so (Llama-2-7B with SmolLM2's 49,152-token tokenizer: 2% more
parameters than the real model).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmkit.core import devices
from llmkit.core.files import (
    check_replaceable,
    clean_stale,
    said_if_it_did_not_fit,
    staging_dir,
    swap_in,
    user_path,
)
from llmkit.core.models import DEFAULT_MAX_SHARD_SIZE

MARKER = "llmkit_random_model.json"  # what the folder was made from; an --out holding it may be replaced


@dataclass(frozen=True)
class RandomModel:
    """What `write_random_model` wrote, for its summary."""

    path: Path
    shape_from: str  # the config.json's source, as find_model_config says it
    model_type: str
    params: int
    dtype: str
    vocab_size: int
    widened_from: int | None  # the shape's own vocabulary size, where it was widened to the tokenizer's
    tokenizer_from: str


def write_random_model(
    shape: str,
    out: Path,
    *,
    tokenizer: str | None = None,
    dtype: str = "bfloat16",
    device: str = "auto",
    seed: int = 0,
) -> RandomModel:
    """Write a model of `shape`'s architecture and sizes with random weights, and a tokenizer, to `out`.

    Args:
        shape: hub id or folder whose config.json gives the architecture, or a config.json file.
        out: the model folder written: new, empty or an earlier random model (replaced whole; nothing is left
            half-written).
        tokenizer: hub id or folder of the tokenizer saved beside the weights; default: the embedded model's.
        dtype: the weights' dtype (bfloat16, float16 or float32).
        device: where the weights are initialised ("auto": CUDA when there is one, which is much faster for
            billions of parameters); they are saved from there.
        seed: the random initialisation's seed.

    Raises:
        FileExistsError: `out` holds other files (not an earlier random model).
        ModelConfigNotFound: no config.json for `shape`.
        ValueError: the config.json is not a causal LM transformers can build, or `tokenizer` is neither a path
            here nor a hub id, or holds no tokenizer transformers can load (said as the flag's: `--tokenizer X: ...`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmkit.core.models import embedded_model_dir, is_hub_id
    from llmkit.core.shapes import find_model_config, shape_from_config

    if tokenizer and not user_path(tokenizer).exists() and not is_hub_id(tokenizer):
        # transformers would take it for a hub id and answer "Repo id must use alphanumeric chars..."
        raise ValueError(f"--tokenizer {tokenizer}: no such folder here, and not a hub id (owner/name)")
    shape_path = user_path(shape)
    explicit = shape if shape_path.is_file() else None
    found = find_model_config(shape, explicit=explicit, how_to_give="as SHAPE: a config.json file, or a folder")
    shape_from_config(found.config)  # a clear ValueError for an architecture that is not a causal LM
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or str(embedded_model_dir()))
    except (OSError, ValueError) as err:
        if not tokenizer:  # the embedded model's: no flag to name (a cache it cannot write says so itself)
            raise
        # transformers' words name the file, not the flag ("the config file at 'afile' is not a valid JSON file")
        raise ValueError(f"--tokenizer {tokenizer}: {err}") from None
    config = AutoConfig.for_model(**found.config)
    own_vocab = config.vocab_size
    if len(tok) > own_vocab:
        config.vocab_size = len(tok)
    # The shape's own special ids name other tokens of this tokenizer, or none (OLMo-2's EOS 50279 is past the
    # embedded one's 49,152): the model ends and pads where its tokenizer does.
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tok, name))
    device = devices.resolve_device(device)
    torch_dtype = devices.torch_dtype(dtype)
    torch.manual_seed(seed)
    out = user_path(out)
    check_replaceable(out, MARKER, "an earlier random model")
    clean_stale(out)
    with said_if_it_did_not_fit(out, f"the random model for {out}"), staging_dir(out, "random") as staged:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        params = sum(p.numel() for p in model.parameters())
        model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        model.save_pretrained(staged, max_shard_size=DEFAULT_MAX_SHARD_SIZE)
        tok.save_pretrained(staged)
        del model
        written = RandomModel(
            path=out,
            shape_from=found.where,
            model_type=config.model_type,
            params=params,
            dtype=str(torch_dtype).removeprefix("torch."),
            vocab_size=config.vocab_size,
            widened_from=own_vocab if config.vocab_size != own_vocab else None,
            tokenizer_from=tokenizer or "the embedded default model",
        )
        record = {**asdict(written), "path": str(out), "seed": seed}
        (staged / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        swap_in(staged, out)
    if devices.is_cuda(device):
        torch.cuda.empty_cache()
    return written
