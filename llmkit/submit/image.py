"""What goes into the submission image: the Dockerfile for a track and engine, its requirements, the server's code.

The built-in engine's image installs docker/requirements.txt (every package pinned) into a uv-managed Python on the
track's CUDA base image. vLLM's image (`--engine vllm`) is vLLM's own release image, vllm/vllm-openai at
VLLM_VERSION, plus the server's code and the few packages the server imports that vLLM does not depend on.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import jinja2
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llmkit.core.assets import DOCKER_DIR
from llmkit.core.challenge import CONTAINER_PORT, CONTEXT_TOKENS, PYPI, TRACKS, Loading, Track
from llmkit.core.project import pinned_version
from llmkit.server.settings import EngineName, ServerSettings
from llmkit.server.vllm_venv import LAUNCHER, VLLM_EXTRAS, VLLM_VERSION
from llmkit.submit.imports import run_time_imports
from llmkit.submit.manifest import IMAGE_ADAPTER_DIR, IMAGE_MODEL_DIR, ZIP_ADAPTER_DIR, ZIP_MODEL_DIR
from llmkit.submit.sources import Weights

SERVER_MODULE = "llmkit.server"  # `python -m llmkit.server`; the zip holds it and every llmkit module it imports
# The built-in engine's image and the training image: uv installs a pinned python-build-standalone Python into a venv.
UV_IMAGE = "ghcr.io/astral-sh/uv:0.13.9"
PYTHON_VERSION = "3.11.18"
IMAGE_PYTHON = "/opt/venv/bin/python"
IMAGE_UID = 10001  # the image's non-root user; the BuildKit secret is mounted readable for it
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
# vLLM's image installs vLLM into the Python first on PATH (`uv pip install --system`); its Dockerfile does the same.
VLLM_PYTHON = "python3"
# A BuildKit secret: mounted as a file for this one RUN, never in a layer, ENV or ARG. huggingface_hub reads the
# token from HF_TOKEN_PATH; without the secret the file is absent and the download is anonymous.
_WITH_TOKEN = (
    f"RUN --mount=type=secret,id=hf_token,uid={IMAGE_UID} export HF_TOKEN_PATH=/run/secrets/hf_token \\\n    && "
)


def render_dockerfile(
    track: Track, model: Weights, adapter: Weights | None, loading: Loading, engine: EngineName = EngineName.builtin
) -> str:
    """docker/Dockerfile.template (a Jinja template) filled in for the track, the weights, the loading and engine."""
    spec = TRACKS[track]
    served = model.name if model.bundled else f"{model.name}@{model.revision}"
    title = f"LLM Efficiency Challenge submission, {spec.name} track ({spec.gpu}): {served}, {loading.value}"
    values = {
        "title": title + (f", vLLM {VLLM_VERSION}" if engine is EngineName.vllm else ""),
        "engine": engine.value,
        "base_image": VLLM_IMAGE if engine is EngineName.vllm else spec.cuda_base_image,
        "vllm_version": VLLM_VERSION,
        # The extras are listed without their installed version, so requirements.txt's pins apply to them.
        "unheld": " ".join(f"--exclude {name}" for name in VLLM_EXTRAS),
        "python": image_python(engine),
        "uid": str(IMAGE_UID),
        "port": str(CONTAINER_PORT),
        "weights": "\n".join(_weights_steps(model, adapter, image_python(engine))),
        "cmd": json.dumps(server_command(model, adapter, loading, engine)),
    }
    return render_template("Dockerfile.template", values)


def render_template(name: str, values: dict[str, str | bool]) -> str:
    """docker/<name>, a Jinja template, filled in with `values` and the constants every image shares."""
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,  # a placeholder with no value is an error, not an empty string
        keep_trailing_newline=True,
        trim_blocks=True,  # a line holding only {% if %}/{% else %}/{% endif %} leaves nothing behind
        lstrip_blocks=True,
        autoescape=False,
    )
    shared = {"uv_image": UV_IMAGE, "python_version": PYTHON_VERSION}
    return environment.from_string((DOCKER_DIR / name).read_text()).render(shared | values)


def image_python(engine: EngineName) -> str:
    """The interpreter the image runs the server with: the built-in engine's venv, or vLLM's image's Python."""
    return VLLM_PYTHON if engine is EngineName.vllm else IMAGE_PYTHON


def _weights_steps(model: Weights, adapter: Weights | None, python: str) -> list[str]:
    copies, downloads = [], []
    if model.bundled:
        copies.append(f"COPY {ZIP_MODEL_DIR}/ {IMAGE_MODEL_DIR}/")
    else:  # the server's own resolver downloads, so the cache holds exactly what it looks up at start-up
        downloads.append(
            f'{python} -c "from llmkit.core.models import resolve_model; '
            f"print(resolve_model('{model.name}', '{model.revision}').path)\""
        )
    if adapter is not None and adapter.bundled:
        copies.append(f"COPY {ZIP_ADAPTER_DIR}/ {IMAGE_ADAPTER_DIR}/")
    elif adapter is not None:
        downloads.append(
            f'{python} -c "from huggingface_hub import snapshot_download; '
            f"snapshot_download('{adapter.name}', revision='{adapter.revision}', local_dir='{IMAGE_ADAPTER_DIR}')\""
        )
    if downloads:  # one RUN, one secret mount
        copies.append(_WITH_TOKEN + " \\\n    && ".join(downloads))
    return copies


def server_command(
    model: Weights, adapter: Weights | None, loading: Loading, engine: EngineName = EngineName.builtin
) -> list[str]:
    """The image's CMD: the server on CONTAINER_PORT of every interface, with the weights, the loading and engine."""
    command = [image_python(engine), "-m", "llmkit.server", "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
    command += ["--model", IMAGE_MODEL_DIR] if model.bundled else ["--model", model.name, "--revision", model.revision]
    if adapter is not None:
        command += ["--adapter", IMAGE_ADAPTER_DIR]
    command += loading.server_flags
    if engine is EngineName.vllm:  # spelled out, so the image does not depend on the server's defaults
        utilization = ServerSettings.model_fields["gpu_memory_utilization"].default
        command += ["--engine", engine.value, "--max-context", str(CONTEXT_TOKENS)]
        command += ["--gpu-memory-utilization", str(utilization)]
    return command


def render_requirements(track: Track, engine: EngineName = EngineName.builtin) -> str:
    """docker/requirements.txt with the track's torch build added; for vLLM, only its pins of VLLM_EXTRAS."""
    spec = TRACKS[track]
    if engine is EngineName.vllm:
        pins = image_pins()
        lines = [
            f"# What the {spec.name} track's image installs on {VLLM_IMAGE}, whose own packages keep their versions:",
            "# the server's imports that vLLM does not pin, at docker/requirements.txt's versions.",
            *(f"{name}=={pins[canonicalize_name(name)]}" for name in VLLM_EXTRAS),
        ]
        return "\n".join(lines) + "\n"
    lines = [
        f"# Pinned requirements of the {spec.name} track's image (docker/requirements.txt + llmkit/core/challenge.py)."
    ]
    if spec.torch_index != PYPI:
        lines.append(f"--extra-index-url {spec.torch_index}")
    lines.append(f"torch=={pinned_version('torch')}")
    return "\n".join(lines) + "\n" + (DOCKER_DIR / "requirements.txt").read_text()


def image_pins() -> dict[str, str]:
    """docker/requirements.txt's pins: {canonical name: version}."""
    lines = (DOCKER_DIR / "requirements.txt").read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in requirements}


def server_files(engine: EngineName = EngineName.builtin) -> list[tuple[Path, str]]:
    """(source, path in the zip) of every llmkit module `python -m llmkit.server` can import, following its imports.

    The image runs the server alone: these modules (llmkit.server and the parts of llmkit.core it uses) and their
    packages' `__init__.py`, laid out as the package they are in, so the zip's code is the checkout's code. A vLLM
    zip also holds LAUNCHER.
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
    if engine is EngineName.vllm:
        package = Path(importlib.util.find_spec(SERVER_MODULE).origin).parent
        files.append((package / LAUNCHER, f"{SERVER_MODULE.replace('.', '/')}/{LAUNCHER}"))
    return files


def _imports(path: Path, module: str, *, is_package: bool) -> list[str]:
    """Absolute names of the llmkit modules a module may import when it runs (optional ones too: the checkout's
    server imports them where they are), and `from X import Y`'s X.Y, which may be a submodule. One imported only
    under `if TYPE_CHECKING:` never runs, so the image does without it."""
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node, name in run_time_imports(ast.parse(path.read_text(), filename=str(path)), package, optional=True):
        names.append(name)
        if isinstance(node, ast.ImportFrom):
            names += [f"{name}.{alias.name}" for alias in node.names]
    return names
