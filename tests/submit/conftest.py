"""Fixtures for the submission tests: real zips built by build_submission into temporary folders."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from llmkit.core.files import sha256_bytes
from llmkit.core.models import DEFAULT_MODEL_ID
from llmkit.submit.manifest import MANIFEST_NAME
from llmkit.submit.package import build_submission


@pytest.fixture(scope="session")
def default_zips(tmp_path_factory) -> dict[str, Path]:
    """Both tracks' submissions for the default model's hub id (the image would download it)."""
    root = tmp_path_factory.mktemp("submissions")
    return {track: build_submission(track, model=DEFAULT_MODEL_ID, out_root=root) for track in ("4090", "A100")}


@pytest.fixture(scope="session")
def bundled_zip(tiny_model_dir, tmp_path_factory) -> Path:
    """A 4090 submission with the tiny model's weights in the zip (COPY model/ /opt/model/)."""
    root = tmp_path_factory.mktemp("bundled-submission")
    return build_submission("4090", model=str(tiny_model_dir), bundle_weights=True, out_root=root)


@pytest.fixture(scope="session")
def vllm_zips(tmp_path_factory) -> dict[str, Path]:
    """Both tracks' vLLM submissions (`--engine vllm`) for the default model's hub id at revision main."""
    root = tmp_path_factory.mktemp("vllm-submissions")
    return {
        track: build_submission(track, model=DEFAULT_MODEL_ID, revision="main", engine="vllm", out_root=root)
        for track in ("4090", "A100")
    }


@pytest.fixture(scope="session")
def broken_zip(default_zips, tmp_path_factory) -> Path:
    """The 4090 default zip with an invalid --dtype in its CMD: it passes verification, but its server cannot start."""
    with zipfile.ZipFile(default_zips["4090"]) as archive:
        dockerfile = archive.read("Dockerfile").decode().replace('"bfloat16"', '"bfloat17"')
    target = tmp_path_factory.mktemp("broken") / "bad.zip"
    return _rewrite_zip(default_zips["4090"], target, {"Dockerfile": dockerfile.encode()})


@pytest.fixture()
def rewrite_zip():
    """Factory: copy a submission zip with some files changed (see _rewrite_zip)."""
    return _rewrite_zip


def _rewrite_zip(source: Path, target: Path, changes: dict[str, bytes | None], *, fix_manifest: bool = True) -> Path:
    """Copy a submission zip with files replaced, added (bytes) or removed (None); re-hash the manifest if asked."""
    with zipfile.ZipFile(source) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    for name, data in changes.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    if fix_manifest and MANIFEST_NAME in files:
        manifest = json.loads(files[MANIFEST_NAME])
        manifest["files"] = {n: sha256_bytes(d) for n, d in sorted(files.items()) if n != MANIFEST_NAME}
        files[MANIFEST_NAME] = json.dumps(manifest, indent=2).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    target.write_bytes(buffer.getvalue())
    return target
