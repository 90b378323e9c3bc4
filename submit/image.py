"""What goes into the submission image: the Dockerfile for a track, its pinned requirements, the server's code."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from submit.manifest import IMAGE_ADAPTER_DIR, IMAGE_MODEL_DIR, ZIP_ADAPTER_DIR, ZIP_MODEL_DIR
from submit.sources import ROOT, Weights
from submit.tracks import PYPI, TRACKS, Loading, Track

DOCKER_DIR = ROOT / "docker"
SERVER_DIR = ROOT / "server"
IMAGE_PYTHON = "/opt/venv/bin/python"
IMAGE_UID = 10001  # the image's non-root user; the BuildKit secret is mounted readable for it
_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")
# A BuildKit secret: mounted as a file for this one RUN, never in a layer, ENV or ARG. huggingface_hub reads the
# token from HF_TOKEN_PATH; without the secret the file is absent and the download is anonymous.
_WITH_TOKEN = (
    f"RUN --mount=type=secret,id=hf_token,uid={IMAGE_UID} export HF_TOKEN_PATH=/run/secrets/hf_token \\\n    && "
)


def render_dockerfile(track: Track, model: Weights, adapter: Weights | None, loading: Loading) -> str:
    """docker/Dockerfile.template filled in for the track, the weights and the loading."""
    spec = TRACKS[track]
    served = model.name if model.bundled else f"{model.name}@{model.revision}"
    values = {
        "title": f"LLM Efficiency Challenge submission, {spec.name} track ({spec.gpu}): {served}, {loading.value}",
        "cuda_base_image": spec.cuda_base_image,
        "uid": str(IMAGE_UID),
        "weights": "\n".join(_weights_steps(model, adapter)),
        "cmd": json.dumps(server_command(model, adapter, loading)),
    }
    template = (DOCKER_DIR / "Dockerfile.template").read_text()
    missing = set(_PLACEHOLDER.findall(template)) - set(values)
    if missing:
        raise KeyError(f"docker/Dockerfile.template has placeholders with no value: {sorted(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _weights_steps(model: Weights, adapter: Weights | None) -> list[str]:
    copies, downloads = [], []
    if model.bundled:
        copies.append(f"COPY {ZIP_MODEL_DIR}/ {IMAGE_MODEL_DIR}/")
    else:  # the server's own resolver downloads, so the cache holds exactly what it looks up at start-up
        downloads.append(
            f'{IMAGE_PYTHON} -c "from server.models import resolve_model; '
            f"print(resolve_model('{model.name}', '{model.revision}').path)\""
        )
    if adapter is not None and adapter.bundled:
        copies.append(f"COPY {ZIP_ADAPTER_DIR}/ {IMAGE_ADAPTER_DIR}/")
    elif adapter is not None:
        downloads.append(
            f'{IMAGE_PYTHON} -c "from huggingface_hub import snapshot_download; '
            f"snapshot_download('{adapter.name}', revision='{adapter.revision}', local_dir='{IMAGE_ADAPTER_DIR}')\""
        )
    if downloads:  # one RUN, one secret mount
        copies.append(_WITH_TOKEN + " \\\n    && ".join(downloads))
    return copies


def server_command(model: Weights, adapter: Weights | None, loading: Loading) -> list[str]:
    """The image's CMD: the server on port 80 of every interface, with the weights and the track's loading."""
    command = [IMAGE_PYTHON, "-m", "server", "--host", "0.0.0.0", "--port", "80"]
    command += ["--model", IMAGE_MODEL_DIR] if model.bundled else ["--model", model.name, "--revision", model.revision]
    if adapter is not None:
        command += ["--adapter", IMAGE_ADAPTER_DIR]
    return command + loading.server_flags


def render_requirements(track: Track) -> str:
    """docker/requirements.txt with the track's torch build added."""
    spec = TRACKS[track]
    lines = [f"# Pinned requirements of the {spec.name} track's image (docker/requirements.txt + submit/tracks.py)."]
    if spec.torch_index != PYPI:
        lines.append(f"--extra-index-url {spec.torch_index}")
    lines.append(f"torch=={spec.torch_version}")
    return "\n".join(lines) + "\n" + (DOCKER_DIR / "requirements.txt").read_text()


def server_files() -> list[tuple[Path, str]]:
    """(source, path in the zip) of every `server` module `python -m server` can import, following its imports."""
    todo, found = ["__main__", "__init__"], set()
    while todo:
        name = todo.pop()
        path = SERVER_DIR / f"{name}.py"
        if name in found or not path.is_file():
            continue
        found.add(name)
        todo += _server_imports(path)
    return [(SERVER_DIR / f"{name}.py", f"server/{name}.py") for name in sorted(found)]


def _server_imports(path: Path) -> list[str]:
    """Names of the `server` submodules a module imports, at the top or inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("server.")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import inside the package
                module = "server." + module if module else "server"
            if module == "server":
                names += [alias.name for alias in node.names]
            elif module.startswith("server."):
                names.append(module.split(".")[1])
    return names
