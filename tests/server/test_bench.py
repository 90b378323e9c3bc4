"""`llmkit bench --stage serving`'s engine comparison: the side-by-side table, its ratios, and a missing vLLM venv.

Benchmarks print ratios; these tests check what is measured and printed, never how fast anything is.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.server.bench import measure_server, measure_vllm, print_engines, run, side_by_side


def _printed(results: dict) -> str:
    console = Console(file=io.StringIO(), width=240)
    print_engines(results, console)
    return console.file.getvalue()


def test_builtin_is_measured_and_a_missing_vllm_venv_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_VENV", str(tmp_path / "no-vllm-here"))
    servers = {
        "builtin": measure_server(clients=(1, 2), generated=4),
        "vllm": measure_vllm(clients=(1, 2), generated=4),
    }
    builtin = servers["builtin"]
    assert builtin["engine"] == "builtin" and builtin["startup_s"] > 0
    # Each client count works through the same 4 prompts (counting never ends within 4 tokens).
    assert [(row["clients"], row["generated_tokens"]) for row in builtin["clients"]] == [(1, 16), (2, 16)]
    assert "make vllm-setup" in servers["vllm"]["skipped"]
    assert str(tmp_path / "no-vllm-here") in servers["vllm"]["skipped"]

    rows = side_by_side(servers)
    assert [row["clients"] for row in rows] == [1, 2]
    assert rows[0]["builtin_vs_one_client"] == 1.0
    assert all(row["builtin_tokens_per_s"] > 0 and "vllm_vs_builtin" not in row for row in rows)
    printed = _printed({"model": builtin["model"], "engines": {"servers": servers, "side_by_side": rows}})
    assert "built-in vs 1 client" in printed and "vLLM / built-in" not in printed
    assert "vLLM not measured:" in printed and "make vllm-setup" in printed
    assert "4-token greedy generations" in " ".join(printed.split())  # the table's title wraps
    assert "built-in (transformers" in printed  # the engine's versions, with its start time


def test_side_by_side_puts_both_engines_their_scaling_and_the_ratio_in_one_table():
    def server(engine: str, tokens_per_s: list[float]) -> dict:
        """What `measure_server` returns, with these figures at 1, 4 and 16 clients."""
        rows = [
            {"clients": c, "tokens_per_s": t, "generated_tokens": 128 * max(c, 4)}
            for c, t in zip((1, 4, 16), tokens_per_s, strict=True)
        ]
        return {
            "engine": engine,
            "version": "v",
            "model": "m",
            "device": "cpu",
            "dtype": "float32",
            "startup_s": 9.0,
            "max_new_tokens": 128,
            "clients": rows,
        }

    servers = {"builtin": server("builtin", [20.0, 50.0, 80.0]), "vllm": server("vllm", [10.0, 40.0, 120.0])}
    rows = side_by_side(servers)
    assert [row["vllm_vs_builtin"] for row in rows] == pytest.approx([0.5, 0.8, 1.5])
    assert [row["builtin_vs_one_client"] for row in rows] == pytest.approx([1.0, 2.5, 4.0])
    assert [row["vllm_vs_one_client"] for row in rows] == pytest.approx([1.0, 4.0, 12.0])
    printed = _printed({"model": "m", "engines": {"servers": servers, "side_by_side": rows}})
    header = next(line for line in printed.splitlines() if line.startswith("┃ clients"))
    assert [h.strip() for h in header.strip("┃│ ").split("┃")] == [
        "clients",
        "built-in",
        "built-in vs 1 client",
        "vLLM",
        "vLLM vs 1 client",
        "vLLM / built-in",
    ]
    assert "16" in printed and "1.50x" in printed and "12.00x" in printed


def test_bench_names_an_unknown_engine():
    result = CliRunner().invoke(app, ["bench", "--stage", "serving", "--engine", "tgi"])
    assert result.exit_code == 2
    message = " ".join(line.strip("│╭╮╰╯─ ") for line in result.output.splitlines())  # rich's error box, unwrapped
    assert "Invalid value for '--engine'" in message and "'tgi' is not one of 'builtin', 'vllm'" in message


def test_bench_names_a_model_folder_it_cannot_serve(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # an adapter's or a half-copied folder: no tokenizer files
    result = CliRunner().invoke(app, ["bench", "--stage", "serving", "--quick", "--model", str(tmp_path)])
    assert result.exit_code == 1 and f"Error: --model: {tmp_path} holds no tokenizer" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bench_names_a_missing_folder_with_a_slash_as_a_folder(tmp_path):
    """`bench --model outputs/merged` (a folder not made yet) got the hub's message alone, as if meant as a hub id."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache, no network
    command = [sys.executable, "-m", "llmkit.cli", "bench", "--model", "outputs/merged"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(
        "Error: --model: There is no folder outputs/merged here, and the hub cannot be reached: Cannot download "
        "outputs/merged from the Hugging Face hub (offline?)"
    ), result.stderr


@pytest.mark.parametrize("command", [["bench", "--stage", "merging"], ["decontaminate", "x.yml"]])
def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path, command):
    """bench's and decontaminate's --out: a file where a folder goes was a traceback (FileExistsError)."""
    (tmp_path / "ofile").write_text("")
    for out in (tmp_path / "ofile", tmp_path / "ofile" / "results"):
        result = CliRunner().invoke(app, [*command, "--out", str(out)])
        assert result.exit_code == 1 and f"Error: --out {out}: {tmp_path / 'ofile'} is a file, not a folder" in (
            result.output.replace("\n", "")
        )
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_ctrl_c_during_the_serving_bench_stops_it_cleanly(tmp_path):
    """Ctrl-C while the in-process engine ran: the command ended without a word of what was stopped, and now and then
    in an abort ("terminate called without an active exception") from the model thread left inside torch as the
    interpreter exited."""
    command = [sys.executable, "-m", "llmkit.cli", "bench", "--stage", "serving", "--engine", "builtin"]
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr_file:
        process = subprocess.Popen(
            [*command, "--out", str(tmp_path / "out")],
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's foreground job
        )
        deadline = time.monotonic() + 120
        while "serving: the built-in engine in-process" not in stderr_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.2)
        time.sleep(3)  # the model loading or measuring on its thread
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    stderr = stderr_path.read_text()
    assert process.returncode == 130, stderr
    assert stderr.rstrip().endswith("interrupted during serving") and "Traceback" not in stderr
    assert not (tmp_path / "out" / "server.json").exists()


def test_quick_serving_on_another_model_measures_scaling_and_the_decode_bound_only(tmp_path, tiny_model_dir, capsys):
    model = str(tiny_model_dir)
    results = run(tmp_path, engines=["builtin"], model=model, quick=True, clients=(1, 2), generated=4)
    server = results["engines"]["servers"]["builtin"]
    assert results["model"] == server["model"] == model and server["max_new_tokens"] == 4
    assert [row["clients"] for row in server["clients"]] == [1, 2]
    # 4 prompts of at most 4 tokens each (a random model may end one early, at EOS or at a newline)
    assert all(0 < row["generated_tokens"] <= 16 for row in server["clients"])
    assert "workloads" not in results and "concurrency" not in results  # no baselines in quick mode
    decode = results["decode"]
    assert decode["tokens_per_s"] == server["clients"][0]["tokens_per_s"]  # one client's rate over HTTP
    params = sum(t.numel() for t in load_file(tiny_model_dir / "model.safetensors").values())
    assert decode["model_bytes"] == params * 4  # float32 on the CPU
    assert decode["bound_tokens_per_s"] == pytest.approx(decode["bandwidth_bytes_per_s"] / decode["model_bytes"])
    assert decode["fraction_of_bound"] == pytest.approx(decode["tokens_per_s"] / decode["bound_tokens_per_s"])
    assert json.loads((tmp_path / "server.json").read_text())["decode"] == decode
    printed = " ".join(capsys.readouterr().out.split())
    assert "Decode (one HTTP client's tokens/s):" in printed and "of the bound)" in printed
    title = f"The builtin engine: {model}, 4-token greedy generations"  # one engine measured
    assert "".join(title.split()) in "".join(printed.split())  # wrapped to the table's width, within the path too


def test_the_full_serving_bench_measures_workloads_baselines_and_scaling(tmp_path, tiny_model_dir, capsys):
    results = run(tmp_path, repeats=1, engines=["builtin"], model=str(tiny_model_dir), clients=(1, 2), generated=4)
    assert set(results["workloads"]) == {"multiple_choice_400", "generation_128"}
    for row in results["workloads"].values():
        assert row["engine_s"] > 0 and row["http_s"] > 0 and row["transformers_generate_s"] > 0
        assert row["http_overhead"] == pytest.approx(row["http_s"] / row["engine_s"] - 1)
    assert results["workloads"]["multiple_choice_400"]["prompt_tokens"] >= 400
    assert results["decode"]["measured_as"] == "generation_128, in-process"
    rows = results["concurrency"]
    assert [row["clients"] for row in rows] == [1, 2] and rows[0]["vs_one_client"] == 1.0
    for row in rows:
        assert row["vs_no_batching"] == pytest.approx(row["batching_tokens_per_s"] / row["no_batching_tokens_per_s"])
        assert row["vs_transformers"] == pytest.approx(row["batching_tokens_per_s"] / row["transformers_tokens_per_s"])
    # the batching server's figures are the side-by-side table's built-in column
    builtin = results["engines"]["servers"]["builtin"]
    assert [r["tokens_per_s"] for r in builtin["clients"]] == [row["batching_tokens_per_s"] for row in rows]
    printed = " ".join(capsys.readouterr().out.split())
    assert "Decode (generation_128, in-process):" in printed
    assert "Concurrent HELM-shaped clients, 4-token greedy generations" in printed
