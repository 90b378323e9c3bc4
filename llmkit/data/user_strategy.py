"""A dataset `type:` naming the user's own Python code, loaded and called as axolotl calls its prompt strategies.

`type: my_prompts.load_rows` loads `my_prompts.py` from the config's folder (or the current directory) and calls
`load_rows(tokenizer, cfg)`, adding `ds_cfg=` (the dataset entry) when the function takes it. axolotl's own
spelling `type: pkg.module` (the function `load` of `pkg/module.py`) works too. The call returns a strategy whose
`tokenize_prompt(row)` gives `{input_ids, labels[, attention_mask]}` (a strategy whose `supports_batched` is true
gets the row as a batch of one and answers with lists of such lists). `cfg` and `ds_cfg` are dicts whose keys also
read as attributes, None when unset (axolotl's DictDefault). The pipeline adds its own attention mask and drops
overlong rows as for every type. The module runs without axolotl: a strategy that imports axolotl's classes
cannot load here.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from llmkit.core.files import sha256_bytes
from llmkit.data.fields import RowError
from llmkit.data.rows import RawRow, TokenizedRow

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmkit.config.schema import AxolotlConfig
    from llmkit.config.sections import DatasetSpec


class Strategy(Protocol):
    """What a user's load function returns (axolotl's PromptTokenizingStrategy, as far as it is used here)."""

    def tokenize_prompt(self, prompt: Any) -> Any: ...


class UserStrategyError(ValueError):
    """The user's module cannot be found, loaded or called; the message names the dataset's `type`."""


class ConfigView(dict):
    """A config as axolotl hands it to strategies: keys as attributes, None for keys never set, nested alike."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name)

    @classmethod
    def of(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return cls({key: cls.of(item) for key, item in value.items()})
        return [cls.of(item) for item in value] if isinstance(value, list) else value


def candidates(name: str, folders: list[Path]) -> list[tuple[Path, str]]:
    """(file, function) pairs `name` may mean, in the order tried: module.function, then axolotl's pkg.module."""
    parts = name.split(".")
    pairs = [(Path(*parts[:-1]).with_suffix(".py"), parts[-1]), (Path(*parts).with_suffix(".py"), "load")]
    return [(folder / file, function) for file, function in pairs for folder in folders]


def search_folders(cfg: AxolotlConfig) -> list[Path]:
    """The config's folder, then the current directory (axolotl imports from there)."""
    folders = [cfg.source.resolve().parent] if cfg.source else []
    return [*folders, *([Path.cwd()] if Path.cwd() not in folders else [])]


def find_module(name: str, cfg: AxolotlConfig, key: str = "type") -> tuple[Path, str]:
    """The file and function `type: name` (or another `key`: name) names.

    Raises:
        UserStrategyError: no candidate file exists.
    """
    tried = candidates(name, search_folders(cfg))
    for path, function in tried:
        if path.is_file():
            return path, function
    raise UserStrategyError(f"{key} {name!r}: no such Python file: {', '.join(str(path) for path, _ in tried)}")


def module_digest(name: str, cfg: AxolotlConfig) -> str | None:
    """sha256 of the file `type: name` runs (for the prepared-data cache), None when there is none."""
    try:
        path, _ = find_module(name, cfg)
    except UserStrategyError:
        return None
    return sha256_bytes(path.read_bytes())


@contextmanager
def _importable_from(folder: Path) -> Iterator[None]:
    # The module may import its neighbours, as it could when axolotl ran from its folder.
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _import(path: Path) -> ModuleType:
    module_name = f"llmkit_user_{path.stem}_{sha256_bytes(str(path).encode())[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    spec.loader.exec_module(module)
    return module


def user_function(name: str, cfg: AxolotlConfig, key: str) -> tuple[Path, Callable[..., Any]]:
    """The function `name` (module.function) names, imported from its file beside the config or in the current
    directory, as axolotl imports a dataset transform or a reward function; errors start with `key` and the name.

    Raises:
        UserStrategyError: the file is missing, fails to import, or lacks the function.
    """
    path, function = find_module(name, cfg, key)
    with _importable_from(path.parent):
        try:
            module = _import(path)
        except Exception as err:  # the user's code may raise anything while importing
            raise UserStrategyError(f"{key} {name!r}: importing {path} failed: {type(err).__name__}: {err}") from err
    found = getattr(module, function, None)
    if not callable(found):
        defined = sorted(attr for attr, value in vars(module).items() if callable(value) and not attr.startswith("_"))
        raise UserStrategyError(f"{key} {name!r}: {path} has no function {function!r} (it defines {defined})")
    return path, found


def load_strategy(spec: DatasetSpec, cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> Strategy:
    """Import the user's module and call its load function, as axolotl does.

    Raises:
        UserStrategyError: the file is missing, fails to import, lacks the function, or returns no strategy.
    """
    name = str(spec.type)
    path, load = user_function(name, cfg, "type")
    function = load.__name__
    kwargs = {"ds_cfg": ConfigView.of(spec.model_dump(mode="json"))} if takes(load, "ds_cfg") else {}
    with _importable_from(path.parent):
        try:
            strategy = load(tokenizer, ConfigView.of(cfg.model_dump(mode="json")), **kwargs)
        except Exception as err:  # the user's code
            problem = f"{path}:{function}() raised {type(err).__name__}: {err}"
            raise UserStrategyError(f"type {name!r}: {problem}") from err
    if not callable(getattr(strategy, "tokenize_prompt", None)):
        raise UserStrategyError(
            f"type {name!r}: {path}:{function}() returned {type(strategy).__name__}, not a strategy with "
            "tokenize_prompt(row) -> {input_ids, labels}"
        )
    return strategy


def takes(function: Any, parameter: str) -> bool:
    """Whether `function` has a parameter of that name (a **kwargs catch-all does not count)."""
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C function without a signature
        return False


class RowProblem(RowError):
    """The strategy failed on a row, or returned something that is no tokenized row."""


def tokenize_row(strategy: Strategy, row: RawRow) -> list[TokenizedRow]:
    """A row through the strategy; a batched one (axolotl's `supports_batched`) gets it as a batch of one."""
    if getattr(strategy, "supports_batched", False) is not True:
        return [_checked(_call(strategy, row))]
    out = _call(strategy, {key: [value] for key, value in row.items()})
    if not isinstance(out, Mapping) or not all(isinstance(out.get(key), list) for key in ("input_ids", "labels")):
        raise RowProblem("a batched tokenize_prompt must return {input_ids: [[...], ...], labels: [[...], ...]}")
    pairs = zip(out["input_ids"], out["labels"], strict=False)
    return [_checked({"input_ids": ids, "labels": labels}) for ids, labels in pairs]


def _call(strategy: Strategy, prompt: RawRow | dict[str, list[Any]]) -> Any:
    try:
        return strategy.tokenize_prompt(prompt)
    except Exception as err:  # the user's code may raise anything
        raise RowProblem(f"tokenize_prompt raised {type(err).__name__}: {err}") from err


def _checked(result: Any) -> TokenizedRow:
    if not isinstance(result, Mapping) or "input_ids" not in result or "labels" not in result:
        got = sorted(result) if isinstance(result, Mapping) else type(result).__name__
        raise RowProblem(f"tokenize_prompt must return {{input_ids, labels}}, got {got}")
    ids, labels = result["input_ids"], result["labels"]
    if not _ints(ids) or not _ints(labels) or len(ids) != len(labels):
        raise RowProblem("tokenize_prompt's input_ids and labels must be lists of ints of one length")
    return TokenizedRow(input_ids=list(ids), labels=list(labels))


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(value, int) for value in values)
