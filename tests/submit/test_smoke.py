"""The container-equivalent smoke test: the zip's own server, started as its Dockerfile's CMD says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from llmkit.core.challenge import Loading, Track
from llmkit.core.memory import estimate_memory
from llmkit.core.models import DEFAULT_MODEL_ID, resolve_model
from llmkit.core.shapes import model_shape
from llmkit.submit.dockerfile import DockerfileError
from llmkit.submit.manifest import Manifest, WeightsSource
from llmkit.submit.smoke import CHECKS, SmokeError, local_command, run_smoke


def _manifest(model: WeightsSource) -> Manifest:
    return Manifest(
        track=Track.rtx4090,
        gpu="x",
        model=model,
        loading=Loading.nf4,
        quantization="nf4",
        estimated_gpu_memory=estimate_memory(model_shape(DEFAULT_MODEL_ID), Loading.nf4, Track.rtx4090),
        bundled_weights=model.bundled,
        files={},
    )


def test_cmd_is_rewritten_for_a_loopback_port_and_local_weights(tmp_path):
    cmd = [
        "/opt/venv/bin/python",
        "-m",
        "llmkit.server",
        "--host",
        "0.0.0.0",
        "--port",
        "80",
        "--model",
        "/opt/model",
        "--dtype",
        "bfloat16",
        "--quantization",
        "nf4",
    ]
    bundled = _manifest(WeightsSource(id="outputs/merged", bundled=True))
    assert local_command(cmd, bundled, tmp_path) == [
        *(sys.executable, "-m", "llmkit.server", "--host", "127.0.0.1", "--port", "{port}"),
        *("--model", str(tmp_path / "model"), "--dtype", "bfloat16", "--quantization", "nf4"),
    ]
    hub = _manifest(WeightsSource(id=DEFAULT_MODEL_ID, revision="main"))
    hub_cmd = [*cmd[:8], DEFAULT_MODEL_ID, "--revision", "main"]
    # Offline, the default's hub id stands for the embedded copy; the revision flag goes with the hub.
    assert local_command(hub_cmd, hub, tmp_path)[7:] == ["--model", str(resolve_model(None).path)]
    with pytest.raises(SmokeError, match="not a python"):
        local_command(["uvicorn", *cmd[1:]], bundled, tmp_path)
    with pytest.raises(SmokeError, match="names no adapter"):
        local_command([*cmd, "--adapter", "/opt/adapter"], bundled, tmp_path)


def test_flags_written_with_an_equals_sign_are_read_as_verify_reads_them(tmp_path):
    """`--port=80` passed verify (it read both forms) and failed the smoke test with "CMD names no --port" (it read
    `--port 80` only); `--host=0.0.0.0` was run as it was, on every interface of this machine."""
    cmd = ["/opt/venv/bin/python", "-m", "llmkit.server", "--host=0.0.0.0", "--port=80", "--model=/opt/model"]
    bundled = _manifest(WeightsSource(id="outputs/merged", bundled=True))
    assert local_command([*cmd, "--dtype=bfloat16"], bundled, tmp_path) == [
        *(sys.executable, "-m", "llmkit.server", "--host", "127.0.0.1", "--port", "{port}"),
        *("--model", str(tmp_path / "model"), "--dtype=bfloat16"),
    ]
    with pytest.raises(DockerfileError, match="CMD serves port 8080"):
        local_command([*cmd, "--port=8080"], bundled, tmp_path)
    with pytest.raises(SmokeError, match="CMD ends with --model and no value"):
        local_command([*cmd, "--model"], bundled, tmp_path)


def test_wrong_answers_fail_the_checks_under_python_O(stand_in_server, python):
    """The checks were `assert` statements: under `python -O` a server answering nonsense passed every one of them
    that did not raise KeyError."""
    wrong = json.dumps({"text": "WRONG", "tokens": [{"logprob": 5.0}]}).encode()
    url = stand_in_server(lambda method, path: (200, {"Content-Type": "application/json"}, wrong))
    script = (
        "import json, sys\nfrom llmkit.submit.smoke import check_server\n"
        "print(json.dumps({r.name: [r.ok, r.detail] for r in check_server(sys.argv[1])}))"
    )
    done = subprocess.run([python, "-O", "-c", script, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert list(results) == list(CHECKS)
    assert results["harness probe"] == [True, "completion 'WRONG'"]  # a completion of the probe's shape
    assert results["echo scoring"] == [False, "SmokeCheckFailed: echo_prompt returned 'WRONG'"]
    assert results["/tokenize, /decode"] == [False, "SmokeCheckFailed: truncation to 8 gave 1 tokens"]
    assert not results["generation + stop"][0] and not results["multiple choice"][0]  # no logprob, no top_logprob


def test_the_zips_venv_takes_the_torch_build_for_the_gpu_the_driver_sees(default_zips, tmp_path, monkeypatch):
    """It asked torch (resolve_device) while helm's and vLLM's venvs ask the driver (has_cuda): on a GPU machine
    whose project torch is the CPU build, the zip's server got CPU torch."""
    driver = tmp_path / "bin" / "nvidia-smi"
    driver.parent.mkdir()
    driver.write_text("#!/bin/sh\n")
    driver.chmod(0o755)
    monkeypatch.setenv("PATH", f"{driver.parent}{os.pathsep}{os.environ['PATH']}")
    blocked = tmp_path / "cache"
    blocked.write_text("")  # a file: the venv's install fails at once, naming the venv it would have made
    monkeypatch.setenv("LLMKIT_CACHE", str(blocked / "llmkit"))
    report = run_smoke(default_zips["4090"], docker=False)
    assert report.failed[0].detail.startswith("ToolVenvError: cannot install")
    assert re.search(r"/submission-venv-[0-9a-f]{16}-cuda\b", report.error), report.error


@pytest.mark.slow
def test_a_zip_whose_server_cannot_start_fails_loudly(broken_zip, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the log a failed start keeps, kept out of /tmp

    report = run_smoke(broken_zip, startup_timeout=120)
    [result] = report.results
    assert not result.ok and result.name == "server start" and result.detail.startswith("ServerStartError: ")
    assert "bfloat17" in report.error
    assert Path(broken_zip).is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "entrypoint",
    ['ENTRYPOINT ["/opt/venv/bin/python", "-m", "llmkit.server"]\nCMD [', 'ENTRYPOINT ["tini", "--"]\nCMD [{server}'],
)
def test_the_smoke_test_runs_an_entrypoint_and_cmd_as_docker_joins_them(
    default_zips, tmp_path, rewrite_zip, entrypoint
):
    """ENTRYPOINT + CMD is one command to Docker, and an init's ENTRYPOINT (tini) runs the CMD: the server they start
    answers every check (under 30 s each once the zip's venv is installed). tini's was skipped as a server of the
    zip's own."""
    zip_path = default_zips["4090"]
    with zipfile.ZipFile(zip_path) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    server = '"/opt/venv/bin/python", "-m", "llmkit.server", '
    assert f"CMD [{server}" in dockerfile
    edited = dockerfile.replace(f"CMD [{server}", entrypoint.format(server=server))
    report = run_smoke(
        rewrite_zip(zip_path, tmp_path / "entrypoint.zip", {"Dockerfile": edited.encode()}), docker=False
    )
    assert not report.skipped and report.results and not report.error, (report.skipped, report.error)
    assert all(result.ok for result in report.results), report.results


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ('"/opt/model"', '"/opt/modell"', "CMD --model /opt/modell, but the Dockerfile copies the bundled model/"),
        ('"/opt/venv/bin/python", "-m"', '"python", "-m"', "CMD runs python, but the Dockerfile installs"),
    ],
)
def test_the_smoke_test_runs_no_cmd_the_image_could_not(bundled_zip, tmp_path, rewrite_zip, old, new, said):
    """It replaced the CMD's --model with the manifest's model and any python* with its own: a server serving a
    folder the image lacks, or run by a python it lacks, passed the smoke test. Refused before any venv or server."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD ["))
    edited = dockerfile.replace(cmd, cmd.replace(old, new))
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    [result] = run_smoke(zip_path, docker=False).results
    assert not result.ok and result.detail.startswith(
        "SmokeError: the CMD would not run in the image: Dockerfile line "
    )
    assert said in result.detail, result.detail


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        (
            ', "--revision", "main"',
            "",
            "has no --revision, but manifest.json pins HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ('"--revision", "main"', '"--revision", "v2"', "CMD --revision v2, but the Dockerfile downloads"),
    ],
)
def test_the_smoke_test_refuses_a_cmd_serving_another_revision_than_the_manifest_pins(
    default_zips, tmp_path, rewrite_zip, old, new, said
):
    """A CMD without --revision passed verify and the smoke test while the manifest pinned one: the server would load
    whatever the image holds under the hub's main (and the RUN line that downloads need not pin it)."""
    zip_path = default_zips["4090"]
    with zipfile.ZipFile(zip_path) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD ["))
    assert old in cmd
    edited = dockerfile.replace(cmd, cmd.replace(old, new))
    zip_path = rewrite_zip(zip_path, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    [result] = run_smoke(zip_path, docker=False).results
    assert not result.ok and result.detail.startswith("SmokeError: the CMD would not run in the image: ")
    assert said in result.detail, result.detail
