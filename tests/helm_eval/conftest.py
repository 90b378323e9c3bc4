"""Fixtures for the HELM tests: the HELM venv (made by `make helm-setup`) and small offline confs."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.helm_eval import confgen
from llmkit.helm_eval.setup import HelmSetupError, require_helm


@pytest.fixture(scope="session")
def helm_venv() -> Path:
    """crfm-helm's venv; a missing install fails the test with the command that fixes it (no hang, no skip)."""
    try:
        return require_helm()
    except HelmSetupError as err:
        pytest.fail(str(err))


@pytest.fixture
def mcqa_conf(tmp_path) -> Path:
    """simple_mcqa with 4 instances: offline, one request per instance."""
    tasks = confgen.TaskList(families=[confgen.TaskFamily(name="simple_mcqa", scenario="simple_mcqa")])
    return confgen.write_conf(confgen.generate(tasks, budget=4), tmp_path / "mcqa.conf")
