"""The image's pinned requirements are what this project is tested with, and cover everything the server imports."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llmkit.core.challenge import Track
from llmkit.core.project import pinned_version
from llmkit.submit import image
from llmkit.submit.image import DOCKER_DIR, PYTHON_VERSION, render_requirements, server_files

# The image's platform, for evaluating dependency markers.
IMAGE_ENV = {
    "python_version": PYTHON_VERSION.rpartition(".")[0],
    "python_full_version": PYTHON_VERSION,
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
CUDA_ONLY = ("cuda-", "nvidia-", "triton")  # torch's CUDA wheels: not in this CPU environment


def _pins() -> dict[str, str]:
    lines = (DOCKER_DIR / "requirements.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line and not line.startswith("#")]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pins), "unpinned line"
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in pins}


def test_pins_are_the_tested_versions():
    for name, version in _pins().items():
        if name.startswith(CUDA_ONLY):
            continue
        assert metadata.version(name) == version, f"docker/requirements.txt pins {name}=={version}"
    local_torch = metadata.version("torch").split("+")[0]
    assert pinned_version("torch") == local_torch


def test_pins_include_every_dependency():
    pins = _pins() | {"torch": pinned_version("torch")}
    for name in list(pins):
        if name.startswith(CUDA_ONLY):
            continue
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(IMAGE_ENV):
                assert canonicalize_name(requirement.name) in pins, f"{name} needs {requirement.name}: not pinned"


def test_pins_cover_every_module_the_shipped_server_imports():
    distributions = metadata.packages_distributions()
    imported = set()
    for source, _ in server_files():
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    # vllm: the package ships server/vllm_engine.py, which only vLLM's image runs (tests/submit/test_vllm_image.py).
    third_party = imported - set(sys.stdlib_module_names) - {"llmkit", "vllm"}
    assert {"torch", "transformers", "fastapi"} <= third_party
    assert {"bitsandbytes", "accelerate"} <= set(_pins())  # loaded by transformers for nf4/int8 and device_map
    pins = _pins() | {"torch": "any"}
    for module in third_party:
        assert any(canonicalize_name(d) in pins for d in distributions[module]), f"{module} is not pinned"


def test_requirements_per_track_carry_the_torch_build():
    for track in Track:
        rendered = render_requirements(track)
        assert f"torch=={pinned_version('torch')}\n" in rendered
        assert rendered.endswith((DOCKER_DIR / "requirements.txt").read_text())


def test_only_the_server_and_the_core_it_uses_ship():
    # The image runs the server alone: llmkit.server and the part of the common base it imports, never a training
    # stage (whose imports, peft and datasets, the image does not install).
    shipped = {Path(zip_path).parent.as_posix() for _, zip_path in server_files()}
    assert shipped == {"llmkit", "llmkit/server", "llmkit/core"}
    names = {zip_path for _, zip_path in server_files()}
    assert {"llmkit/__init__.py", "llmkit/server/__main__.py", "llmkit/core/models.py"} <= names


def test_a_module_imported_only_for_type_checking_does_not_ship(tmp_path, monkeypatch):
    """The image followed `if TYPE_CHECKING:` imports, which never run, while verify-submission does not require
    them; an optional import (try/except ImportError) ships, as the checkout's server imports it where it is."""
    package = tmp_path / "llmkitdemo"
    package.mkdir()
    main = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llmkitdemo import typed\n"
        "try:\n    from . import optional\nexcept ImportError:\n    pass\n\ndef run():\n    from . import used\n"
    )
    for name, source in {"__init__": "", "__main__": main, "typed": "", "optional": "", "used": ""}.items():
        (package / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(image, "SERVER_MODULE", "llmkitdemo")
    assert sorted(path for _, path in server_files()) == [
        f"llmkitdemo/{name}.py" for name in ("__init__", "__main__", "optional", "used")
    ]
