"""HELM's own venv (helm_eval/setup.py): torch's CPU build where there is no NVIDIA GPU."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from llmkit.core.cpu_torch import CPU_TORCH_INDEX, cpu_torch_index
from llmkit.core.venvs import has_cuda
from llmkit.helm_eval import setup
from llmkit.helm_eval.setup import HELM_VERSION


def test_with_cuda_the_venv_is_crfm_helm_as_published():
    venv = setup.helm_venv(cuda=True)
    assert venv.requirements == (f"crfm-helm=={HELM_VERSION}",) and not venv.requirements_file and not venv.remove
    assert venv.path.name == f"helm-venv-{HELM_VERSION}"


def test_without_cuda_the_venv_pins_this_torch_in_its_cpu_build_and_drops_torchvision():
    venv = setup.helm_venv(cuda=False)
    torch_version = version("torch").split("+")[0]
    lines = venv.requirements_file.splitlines()
    assert f"crfm-helm=={HELM_VERSION}" in lines and venv.remove == ("torchvision",)
    if cpu_torch_index() is None:  # pip takes the pin as it finds it: a local CPU wheel here
        assert f"torch=={torch_version}" in lines
    else:
        assert lines[0] == f"--extra-index-url {CPU_TORCH_INDEX}" and f"torch=={torch_version}+cpu" in lines
    assert venv.path.name == f"helm-venv-{HELM_VERSION}-cpu" and "CPU build" in venv.description


def test_the_installed_venv_holds_torch_cpu_build_and_no_torchvision(helm_venv):
    """What `make helm-setup` installed on this machine (no NVIDIA GPU in CI): no CUDA wheels, no torchvision."""
    if has_cuda():
        pytest.skip("this machine has an NVIDIA GPU: HELM's venv holds torch's CUDA build")
    site = next((helm_venv / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("nvidia*")) and not list(site.glob("triton*"))
    assert not list(site.glob("torchvision*")) and list(site.glob("torch-*.dist-info"))
