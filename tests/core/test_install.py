"""`pip install .` (not editable) into a fresh venv, then the README's commands from another folder: the installed
tool finds its own files (default config and data, Dockerfile template, HELM task lists) with no checkout beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding a non-editable install of the checkout; dependencies come from the test's own venv."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    where = [venv / "bin" / "python", "-c", "import site; print(site.getsitepackages()[0])"]
    site = Path(subprocess.check_output(where, text=True).strip())
    # The heavy dependencies (torch, transformers, ...) are the ones this venv has; a .pth line adds them as a plain
    # path, so this venv's editable-install hook is not run and only the fresh install provides `llmkit`.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # setuptools builds inside the source tree (build/, *.egg-info): build from a copy so the checkout stays clean.
    source = tmp_path_factory.mktemp("source") / "llm-effchal"
    skip = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "outputs", "tests", "*_track")
    shutil.copytree(ROOT, source, ignore=skip)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-compile"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([*pip, "--target", str(site), str(source)], check=True, timeout=600, cwd=source, env=env)
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Console scripts of the dependencies (hadolint) are where the dependencies are.
    env = {**os.environ, "COLUMNS": "200", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    command = [venv / "bin" / "python", "-m", "llmkit.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_the_installed_tool_runs_from_another_folder(installed, tmp_path):
    probe = [installed / "bin" / "python", "-c", "import llmkit.server, llmkit; print(llmkit.__file__)"]
    where = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout, where.stdout

    config = ROOT / "axolotl_configs" / "smollm2-135m-qlora.yml"
    validated = _run(installed, "validate", str(config), cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr[-2000:]
    assert "4090" in validated.stdout

    conf = _run(installed, "helm-conf", "quick", cwd=tmp_path)  # the task lists are package data
    assert conf.returncode == 0 and "simple_mcqa" in conf.stdout, conf.stderr[-2000:]

    model = ["--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--revision", "main"]
    built = _run(installed, "submission", "--track", "4090", *model, "--no-smoke", "--out", "subs", cwd=tmp_path)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    zip_path = tmp_path / "subs" / "4090_track" / "4090_submission_1.zip"
    with zipfile.ZipFile(zip_path) as archive:  # the Dockerfile template and the server code came from the install
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
    assert {"Dockerfile", ".dockerignore", "requirements.txt", "llmkit/server/__main__.py"} <= names
    assert manifest["model"]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
