"""The main job end to end: `make submission TRACK=...` with no CONFIG or MODEL trains, merges and packages;
run again, it finds each stage done and writes the same bytes."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from llmkit.core.models import DEFAULT_MODEL_ID
from llmkit.submit.package import build_submission
from llmkit.submit.smoke import run_smoke
from llmkit.submit.verify import verify_submission


@pytest.mark.slow
def test_default_pipeline_trains_merges_and_packages_a_working_zip(tmp_path, caplog):
    # The embedded default config, cut to one optimizer step on one packed sequence with no evaluation (4-bit
    # training runs on the CPU here), and kept inside tmp_path.
    overrides = {
        "max_steps": 1,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "val_set_size": 0.0,
        "output_dir": str(tmp_path / "run"),
        "dataset_prepared_path": str(tmp_path / "prep"),
    }
    zip_path = build_submission("A100", config_overrides=overrides, out_root=tmp_path / "submissions")
    assert zip_path == tmp_path / "submissions" / "A100_track" / "A100_submission_1.zip"
    assert "the challenge does not accept it" in caplog.text  # merged weights exist only here: bundled, with a warning
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file() and (tmp_path / "run" / "merged").is_dir()
    with zipfile.ZipFile(zip_path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        names = archive.namelist()
    assert manifest["bundled_weights"] and manifest["model"]["base_model"] == DEFAULT_MODEL_ID
    # the bundled folder is named relative to the folder holding submissions/
    assert manifest["model"]["id"] == "run/merged" and "model/config.json" in names
    assert any(n.startswith("model/") and n.endswith(".safetensors") for n in names)
    assert verify_submission(zip_path) == []
    assert not [f"{r.name}: {r.detail}" for r in run_smoke(zip_path).failed]

    # The same command again, as N=2: training and merging find their work done, and the zip has the same bytes.
    caplog.clear()
    caplog.set_level(logging.INFO)
    second = build_submission("A100", config_overrides=overrides, number=2, out_root=tmp_path / "submissions")
    assert second.name == "A100_submission_2.zip" and second.read_bytes() == zip_path.read_bytes()
    assert "Training already complete" in caplog.text and "already holds this merge (inputs unchanged)" in caplog.text
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1"]
    # Rebuilding an existing number with unchanged inputs leaves its zip alone.
    caplog.clear()
    written = zip_path.stat().st_mtime_ns
    again = build_submission("A100", config_overrides=overrides, number=1, out_root=tmp_path / "submissions")
    assert again == zip_path
    assert "already holds this submission" in caplog.text and zip_path.stat().st_mtime_ns == written
    # Without N, the same submission is found under its first number, not copied to a third.
    assert build_submission("A100", config_overrides=overrides, out_root=tmp_path / "submissions") == zip_path


@pytest.mark.slow
def test_an_interrupted_submission_says_what_is_left(tmp_path):
    """SIGTERM or Ctrl-C during its training ended `llmkit submission` without a word (exit 143, the log cut)."""
    llmkit = str(Path(sys.executable).parent / "llmkit")  # the console script, as a user runs it
    command = [llmkit, "submission", "--track", "4090", "--out", "subs", "--no-smoke"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.monotonic() + 300
    while "training rows" not in seen and time.monotonic() < deadline:  # the data is ready: training starts
        seen += process.stdout.readline()
    process.send_signal(signal.SIGTERM)
    seen += process.communicate(timeout=120)[0]
    assert process.returncode == 143, seen
    flat = " ".join(seen.split())
    assert (
        "interrupted before the zip was written: nothing of it is left, and a zip already there is as it was." in flat
    )
    assert "it goes on from what finished (training from its last checkpoint, a finished merge as it is)" in flat
    assert not (tmp_path / "subs").exists()
