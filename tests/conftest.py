"""Fixtures shared by every test area: the real embedded model and its tokenizer, a tiny random Llama and data to
train it on, configs written to tmp_path, and a real server on a loopback port."""

from __future__ import annotations

import collections
import gc
import itertools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

# pytest-xdist's workers share the cores: each worker's torch (and the servers and commands its tests start) gets
# its share of them. Two OpenMP teams as wide as the machine on the same cores ran the suite slower than one worker.
if (workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT")) and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // int(workers)))

import httpx
import pytest
import yaml

from llmkit.core.assets import DEFAULT_CONFIG
from llmkit.core.models import resolve_model
from llmkit.server.launch import ServerProcess

if TYPE_CHECKING:
    from llmkit.config.schema import AxolotlConfig

ROOT = Path(__file__).resolve().parents[1]
# Seconds one HTTP request of a test may take (httpx's default is 5 s): generous, because a loaded 2-core machine
# without a GPU can take minutes for a long generation. A test that hangs is still stopped by pytest-timeout.
HTTP_TIMEOUT = 300.0


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection made (the imported libraries: over half a million objects) out of the garbage
    collector's view. transformers' Trainer runs a full `gc.collect()` at the start of every `train()`, and the suite
    trains many times: each collection then walks only what the tests made since, which took a fifth off the CPU time
    of the training tests."""
    gc.collect()
    gc.freeze()


# Session fixtures too slow to make twice (a real training run): the tests using one run on one worker, first.
SHARED_RUNS = {"default_run"}


def pytest_configure(config: pytest.Config) -> None:
    """xdist's loadgroup hands out the groups largest first by test count (its --loadscope-reorder), which put the
    shared run's few tests, the longest group, near the end (the other worker idled for minutes at the end of the
    run): the scheduler takes them in collection order instead, which pytest_collection_modifyitems sets."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# First: xdist's own hook turns the xdist_group mark into the test id's "@group" suffix, the scheduler's only sign of
# it, and this conftest is registered before xdist's worker plugin, so by default its hook ran after xdist's and every
# test was scheduled alone (module-scoped servers and trainings ran on both workers).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist (`make test` runs a worker per core, `--dist loadgroup`): a module's tests stay on one
    worker, so each module-scoped server starts once; tests using a package-scoped fixture (tests/server's shared
    servers, one per engine) stay together, so that vLLM starts once for them all; the tests using a SHARED_RUNS
    fixture are one group, so that it is made once (a session fixture is made once per worker), and only they: the
    other tests of their modules stay in their module's group, free to run on another worker meanwhile.

    The groups are ordered as xdist's scheduler hands them out, the longest first, so that the short ones even out
    the workers' ends: the shared run's first (its training is the longest set-up of the suite: started last, it set
    the end of the run), then those with the most tests marked slow (end to end: a group of two such tests, the
    default pipeline's, took minutes, and xdist's own order, most tests first, handed it out last), then the rest,
    most tests first."""
    groups = {item: _xdist_group(item) for item in items}
    shared = _sharing_a_run(items, groups)
    name = " + ".join(sorted(SHARED_RUNS & {name for item in shared for name in item.fixturenames}))
    for item in shared:
        groups[item] = name
    sizes = collections.Counter(groups.values())
    slow = collections.Counter(groups[item] for item in items if item.get_closest_marker("slow"))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # in one process the order changes nothing: the files' own is kept
        # stable: each group's own order is kept
        items.sort(key=lambda item: (groups[item] != name, -slow[groups[item]], -sizes[groups[item]]))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item]))


def _sharing_a_run(items: list[pytest.Item], groups: dict[pytest.Item, str]) -> set[pytest.Item]:
    """The tests using a SHARED_RUNS fixture, and those that must run beside them to make nothing twice: the tests
    of a package fixture's group, and those of their module using a module-scoped fixture that one of them uses."""
    shared = {item for item in items if SHARED_RUNS & set(item.fixturenames)}
    while True:
        packages = {groups[item] for item in shared if groups[item].startswith("package fixture")}
        modules = {(item.path, name) for item in shared for name in _scoped(item, "module")}
        more = {item for item in items if groups[item] in packages}
        more |= {item for item in items if {(item.path, name) for name in _scoped(item, "module")} & modules}
        if more <= shared:
            return shared
        shared |= more


def _scoped(item: pytest.Item, scope: str) -> list[str]:
    """The fixtures of this scope that the test uses (directly or through other fixtures)."""
    return sorted(name for name, defs in item._fixtureinfo.name2fixturedefs.items() if defs[-1].scope == scope)


def _xdist_group(item: pytest.Item) -> str:
    shared = _scoped(item, "package")
    return f"package fixture {', '.join(shared)}" if shared else item.nodeid.split("::")[0]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors directory (converted once, then cached)."""
    return resolve_model(None).path


@pytest.fixture(scope="module")
def start_server():
    """Factory: start `python -m llmkit.server <args>` on a free loopback port; stopped when the test module ends
    (a vLLM server holds about 3 GB: kept for the whole session, they filled this 24 GiB machine)."""
    started: list[ServerProcess] = []

    def _start(*args: str, **kwargs) -> ServerProcess:
        server = ServerProcess(args, cwd=ROOT, **kwargs).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def http():
    """The tests' HTTP client (absolute URLs) with HTTP_TIMEOUT; `http.timeout` sizes any other client a test makes."""
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        yield client


@pytest.fixture
def stand_in_server():
    """Factory: a real HTTP server on a free loopback port whose answers `answer(method, path)` gives as
    (status, headers, body): another service where a test needs one (the hub's API, a server that is not HELM's).
    Returns its base URL; stopped when the test ends."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._reply("GET")

            def do_POST(self):
                self._reply("POST")

            def _reply(self, method):
                status, headers, body = answer(method, self.path)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    """The embedded model's real tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture
def write_rows(tmp_path):
    """Factory: write `rows` (dicts, or anything JSON for bad-data cases) as json, jsonl, parquet or csv."""
    counter = itertools.count()

    def write(rows: list, fmt: str) -> Path:
        path = tmp_path / f"rows{next(counter)}.{fmt}"
        if fmt == "json":
            path.write_text(json.dumps(rows))
        elif fmt == "jsonl":
            path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
        else:
            import pandas as pd  # a column missing from a row becomes an empty cell, as in a hand-made file

            frame = pd.DataFrame(rows)
            frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
        return path

    return write


@pytest.fixture
def make_cfg():
    """Factory: an AxolotlConfig for the embedded model with these datasets (a placeholder if none) and keys."""
    from llmkit.config.schema import AxolotlConfig

    def make(datasets: list | None = None, **overrides):
        raw = {
            "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "learning_rate": 1e-4,
            "datasets": datasets or [{"path": "unused.jsonl", "type": "alpaca"}],
            **overrides,
        }
        return AxolotlConfig.model_validate(raw)

    return make


@pytest.fixture(scope="session")
def make_tiny_model(tmp_path_factory, default_model_dir):
    """Factory: a 2-layer, 64-wide random model of any architecture (its transformers config and model classes)
    with the default model's tokenizer, saved to a directory; `overrides` are config fields."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)

    def make(config_class, model_class, **overrides) -> Path:
        torch.manual_seed(0)
        sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
        sizes |= {"num_key_value_heads": 2, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id}
        config = config_class(**(sizes | overrides))
        path = tmp_path_factory.mktemp(f"tiny-{config.model_type}")
        model_class(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(make_tiny_model, tokenizer) -> Path:
    """A 2-layer, 64-wide random Llama with the default model's tokenizer: trains a step in well under a second."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return make_tiny_model(
        LlamaConfig,
        LlamaForCausalLM,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="session")
def tiny_family_dir(make_tiny_model, tokenizer):
    """Factory: the tiny random model directory of a family of `tiny_families.TINY_FAMILIES` (made once)."""
    import transformers
    from tiny_families import TINY_FAMILIES

    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            config_class, model_class, overrides, _ = TINY_FAMILIES[family]
            # the family's own token ids (GPT-2's 50256, Phi-3's 32000) would name other tokens of this tokenizer
            overrides = {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id, **overrides}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config_class, model_class = getattr(transformers, config_class), getattr(transformers, model_class)
                made[family] = make_tiny_model(config_class, model_class, **overrides)
        return made[family]

    return get


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """24 alpaca rows: short sums whose answer is one number."""
    rows = [
        {"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)}
        for a in range(4)
        for b in range(6)
    ]
    path = tmp_path_factory.mktemp("tiny-data") / "sums.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir, tiny_dataset):
    """Factory: write a LoRA config on the tiny model (2 steps) with `overrides`; returns the YAML path."""

    def write(**overrides) -> Path:
        config = {
            "base_model": str(tiny_model_dir),
            "adapter": "lora",
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_target_linear": True,
            "datasets": [{"path": str(tiny_dataset), "type": "alpaca"}],
            "sequence_len": 64,
            "micro_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_steps": 2,
            "learning_rate": 1e-3,
            "optimizer": "adamw_torch",
            "logging_steps": 1,
            "output_dir": str(tmp_path / "out"),
            "seed": 7,
        }
        config.update(overrides)
        path = tmp_path / "tiny.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def ddp_launch():
    """Factory: the command `make train CONFIG=<path> NPROC=2` runs (accelerate launch: two DDP processes, over gloo
    on a machine without CUDA), as make prints it: run as a test's subprocess with its own timeout."""
    import shlex
    import subprocess

    # Under `make test` the parent's MAKEFLAGS/MAKELEVEL would add "make[1]: Entering directory" lines.
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def command(config: Path) -> list[str]:
        dry_run = subprocess.run(
            ["make", "-n", "--no-print-directory", "train", f"CONFIG={config}", "NPROC=2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        launch = shlex.split(dry_run.stdout.strip().splitlines()[-1])
        assert launch[0].endswith("accelerate") and "--num_processes" in launch
        return launch

    return command


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> AxolotlConfig:
    """The embedded default config as shipped (QLoRA), with max_steps cut to 6 and output in a temporary folder,
    trained: its loaded config (`source` is its YAML file). Training takes minutes on the CPU, so the tests that
    learn from this run share it (SHARED_RUNS keeps them on one worker); they add to its output_dir, never change it.
    6 steps are enough for what they check: the train loss fell to 0.15 of its first value and the held-out loss to
    0.16 (the tests ask for under 0.8), where 10 steps took 40% more of the suite's longest set-up.
    """
    from llmkit.config.schema import load_config
    from llmkit.train.run import train

    root = tmp_path_factory.mktemp("default-run")
    overrides = {
        "max_steps": 6,
        "logging_steps": 1,
        "eval_steps": 6,
        "save_steps": 6,
        "output_dir": str(root / "out"),
    }
    cfg = load_config(DEFAULT_CONFIG, overrides)  # resolves the dataset path against the config's folder
    path = root / "default-few-steps.yml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
    cfg = load_config(path)
    train(cfg)
    return cfg
