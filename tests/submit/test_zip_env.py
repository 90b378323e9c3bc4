"""The smoke test's environment: the zip's requirements.txt alone (llmkit/submit/zip_env.py), and `docker build`."""

from __future__ import annotations

import fcntl
import os
import tempfile
import zipfile

import pytest

from llmkit.core.cpu_torch import CPU_TORCH_INDEX, cpu_requirements
from llmkit.core.venvs import ToolVenv, ToolVenvError, venv_lock
from llmkit.submit.smoke import run_smoke
from llmkit.submit.zip_env import docker_build, missing_module, prune_venvs, zip_environment

_PINS = (
    "# image pins\n"
    "torch==2.13.0\ntransformers==5.24.0\nnvidia-cublas==13.1.1.3\ncuda-toolkit==13.0.3.0\n"
    "triton==3.7.1\n"
)


def test_cpu_requirements_drop_the_cuda_wheels_and_take_torch_cpu_build():
    text, source = cpu_requirements(_PINS, CPU_TORCH_INDEX)
    assert text.splitlines() == [
        f"--extra-index-url {CPU_TORCH_INDEX}",
        "# image pins",
        "torch==2.13.0+cpu",
        "transformers==5.24.0",
    ]
    assert source == f"torch 2.13.0+cpu from {CPU_TORCH_INDEX}, its CUDA wheels left out"
    unreachable, why = cpu_requirements(_PINS, None)  # the pin as written: pip finds a local CPU wheel, or PyPI's
    assert unreachable.splitlines() == ["# image pins", "torch==2.13.0", "transformers==5.24.0"]
    assert "did not answer" in why
    unpinned, why = cpu_requirements("torch>=2.6\ntriton==3.7.1\n", CPU_TORCH_INDEX)  # no version to build on
    assert unpinned.splitlines() == ["torch>=2.6"] and "not pinned with ==" in why


def test_the_venv_is_keyed_by_the_requirements_hash():
    first, second = zip_environment(_PINS, cuda=True), zip_environment(_PINS + "peft==0.21.2\n", cuda=True)
    assert first.venv.path != second.venv.path and first.venv.path.name.endswith("-cuda")
    assert first.venv.requirements_file == _PINS  # with CUDA: installed as written
    assert zip_environment(_PINS, cuda=True).venv.path == first.venv.path


def test_a_requirements_file_venv_keeps_other_venvs_stamps(tmp_path, monkeypatch):
    # The stamp of a venv without a requirements file is what it was before the field existed.
    monkeypatch.setenv("LLMKIT_TEST_VENV", str(tmp_path / "v"))
    venv = ToolVenv("x", "LLMKIT_TEST_VENV", ("crfm-helm==0.5.16",), "bin/helm-run", "llmkit helm-setup")
    assert venv._stamp_text() == "crfm-helm==0.5.16\n"
    assert "is not installed" in pytest.raises(ToolVenvError, venv.require).value.args[0]


def test_only_the_most_recently_used_zip_venvs_stay_and_one_being_installed_is_spared(tmp_path):
    venvs = [tmp_path / f"submission-venv-{i:016x}-cpu" for i in range(5)]
    for age, venv in enumerate(venvs):  # venvs[0] used last
        (venv / "bin").mkdir(parents=True)
        os.utime(venv, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (tmp_path / "helm-venv-0.5.16-cpu").mkdir()  # not a zip's venv: never pruned
    with open(venv_lock(venvs[4]), "w") as lock:  # another process installs the oldest one
        fcntl.flock(lock, fcntl.LOCK_EX)
        removed = prune_venvs(tmp_path, keep=2)
    assert removed == [venvs[3], venvs[2]]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(
        [venvs[0].name, venvs[1].name, venvs[4].name, "helm-venv-0.5.16-cpu"]
    )
    assert prune_venvs(tmp_path, keep=2) == [venvs[4]]  # its install is over


def test_missing_module_is_read_from_the_server_log():
    log = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'pydantic_settings'\n"
    assert missing_module(log) == "pydantic_settings"
    assert missing_module("ValueError: bfloat17") is None


def test_docker_build_is_skipped_with_a_note_where_no_engine_answers(tmp_path):
    result = docker_build(tmp_path, "llmkit-submission:test")
    if result.ran:
        pytest.skip("a Docker engine answers here: the build ran")
    assert result.ok and result.detail.startswith("skipped: ")


@pytest.mark.slow
@pytest.mark.timeout(
    900
)  # a fresh venv of the zip's requirements less one package: about a minute with a warm pip cache
def test_a_requirement_missing_from_the_zip_fails_naming_the_module(default_zips, rewrite_zip, tmp_path, monkeypatch):
    with zipfile.ZipFile(default_zips["4090"]) as archive:
        requirements = archive.read("requirements.txt").decode()
    lines = [line for line in requirements.splitlines() if not line.startswith("pydantic-settings==")]
    assert len(lines) == len(requirements.splitlines()) - 1
    lacking = "\n".join(lines)
    broken = rewrite_zip(default_zips["4090"], tmp_path / "lacking.zip", {"requirements.txt": lacking.encode()})
    # This venv serves no other test or run: it goes with tmp_path (1.3 GB) instead of staying in the cache.
    venv = zip_environment(lacking, cuda=False).venv
    monkeypatch.setenv(venv.env_var, str(tmp_path / "venv"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the log a failed start keeps, kept out of /tmp
    report = run_smoke(broken, startup_timeout=120)
    [result] = report.results
    assert not result.ok
    assert "cannot import 'pydantic_settings'" in result.detail and "requirements.txt lacks" in result.detail
