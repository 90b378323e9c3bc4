"""What goes into the submission image: the Dockerfile for a track, its pinned requirements, the server's code."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

from llmkit.core.assets import DOCKER_DIR
from llmkit.core.challenge import PYPI, TRACKS, Loading, Track
from llmkit.submit.manifest import IMAGE_ADAPTER_DIR, IMAGE_MODEL_DIR, ZIP_ADAPTER_DIR, ZIP_MODEL_DIR
from llmkit.submit.sources import Weights

SERVER_MODULE = "llmkit.server"  # `python -m llmkit.server`; the zip holds it and every llmkit module it imports
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
            f'{IMAGE_PYTHON} -c "from llmkit.core.models import resolve_model; '
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
    command = [IMAGE_PYTHON, "-m", "llmkit.server", "--host", "0.0.0.0", "--port", "80"]
    command += ["--model", IMAGE_MODEL_DIR] if model.bundled else ["--model", model.name, "--revision", model.revision]
    if adapter is not None:
        command += ["--adapter", IMAGE_ADAPTER_DIR]
    return command + loading.server_flags


def render_requirements(track: Track) -> str:
    """docker/requirements.txt with the track's torch build added."""
    spec = TRACKS[track]
    lines = [
        f"# Pinned requirements of the {spec.name} track's image (docker/requirements.txt + llmkit/core/challenge.py)."
    ]
    if spec.torch_index != PYPI:
        lines.append(f"--extra-index-url {spec.torch_index}")
    lines.append(f"torch=={spec.torch_version}")
    return "\n".join(lines) + "\n" + (DOCKER_DIR / "requirements.txt").read_text()


def server_files() -> list[tuple[Path, str]]:
    """(source, path in the zip) of every llmkit module `python -m llmkit.server` can import, following its imports.

    The image runs the server alone: these modules (llmkit.server and the parts of llmkit.core it uses) and their
    packages' `__init__.py`, laid out as the package they are in, so the zip's code is the checkout's code.
    """
    todo, found = [f"{SERVER_MODULE}.__main__", SERVER_MODULE], set()
    while todo:
        name = todo.pop()
        if name in found or not name.startswith("llmkit"):
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # `from module import name`: name is not a submodule
            continue
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        found.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages holding it
        todo += _imports(Path(spec.origin), name, is_package=spec.submodule_search_locations is not None)
    files = []
    for name in sorted(found):
        origin = Path(importlib.util.find_spec(name).origin)
        relative = name.replace(".", "/") + ("/__init__.py" if origin.name == "__init__.py" else ".py")
        files.append((origin, relative))
    return files


def _imports(path: Path, module: str, *, is_package: bool) -> list[str]:
    """Absolute names of the modules a module imports, at the top or inside functions (and `from X import Y`'s
    X.Y, which may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                base = importlib.util.resolve_name("." * node.level + base, package)
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names
