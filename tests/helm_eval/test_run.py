"""helm-run against the real server with the embedded model, and the failures that must not hang."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from llmkit.helm_eval import confgen
from llmkit.helm_eval.evaluate import helm_eval
from llmkit.helm_eval.report import project_open_eval, write_report
from llmkit.helm_eval.run import HelmRunError, check_run_specs, run_helm
from llmkit.helm_eval.setup import HELM_VERSION
from llmkit.server.launch import ServerProcess, free_port


def _server_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if "server" in " ".join(p.cmdline())}


@pytest.mark.slow
def test_offline_helm_run_scores_the_embedded_model(helm_venv, mcqa_conf, tmp_path):
    before = _server_children()
    scores = run_helm(model=None, url=None, conf_path=mcqa_conf, suite="ci-mcqa", out_dir=tmp_path)
    assert _server_children() <= before, "the server run_helm started is still running"

    [row] = scores.rows
    assert (row.run, row.metric, row.instances, row.requests) == (
        "simple_mcqa:model=neurips_local,max_eval_instances=4",
        "exact_match",
        4,
        4,
    )
    assert 0.0 <= row.score <= 1.0 and row.mean_request_s > 0
    assert len(row.per_instance) == 4 and set(row.per_instance.values()) <= {0.0, 1.0}
    assert sum(row.per_instance.values()) / 4 == pytest.approx(row.score)  # what HELM's mean is made of
    assert (tmp_path / "benchmark_output/runs/ci-mcqa/schema.json").is_file()  # helm-summarize ran

    report = write_report([scores], tmp_path, "ci")
    assert "| simple_mcqa | exact_match |" in report.markdown.read_text()
    assert report.chart.read_bytes()[:4] == b"\x89PNG"
    projection = project_open_eval(scores)
    assert projection.open_requests == 1464 and projection.projected_s > 0


def test_failed_server_start_is_a_clear_error(tmp_path, mcqa_conf):
    started = time.monotonic()
    with pytest.raises(HelmRunError, match="the server did not start"):
        run_helm(model=str(tmp_path / "no-such-model"), url=None, conf_path=mcqa_conf, suite="x", out_dir=tmp_path)
    assert time.monotonic() - started < 120


def test_no_server_at_url_is_a_clear_error(tmp_path, mcqa_conf, monkeypatch):
    monkeypatch.setattr("llmkit.helm_eval.run._URL_HEALTH_WAIT_S", 2.0)  # the wait itself: 10 s, twice over
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(HelmRunError, match=f"no healthy HELM server at {url}"):
        run_helm(model=None, url=url, conf_path=mcqa_conf, suite="x", out_dir=tmp_path)
    assert 2.0 <= time.monotonic() - started < 30
    # through helm-eval: refused before the set-up and the conf, so the output folder stays as it was
    with pytest.raises(HelmRunError, match=f"no healthy HELM server at {url}"):
        helm_eval(url=url, conf="quick", out_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()
    for bad, message in (
        ("http://[::1", "not a URL"),
        ("localhost:9", "give the server's address as http://HOST:PORT"),
    ):
        started = time.monotonic()
        with pytest.raises(HelmRunError, match=re.escape(f"--url {bad}: {message}")):
            helm_eval(url=bad, conf="quick", out_dir=tmp_path / "results")
        assert time.monotonic() - started < 5  # at once, not after 10 s of retries


@pytest.mark.slow
def test_server_dying_during_helm_run_stops_it_quickly(helm_venv, mcqa_conf, tmp_path):
    server = ServerProcess().start()
    killed_at: list[float] = []

    def kill_once_helm_calls():
        deadline = time.monotonic() + 180
        while '"method": "POST"' not in server.log_tail() and time.monotonic() < deadline:  # the access log
            time.sleep(0.2)
        os.killpg(server.process.pid, signal.SIGKILL)  # a crash, not a graceful shutdown
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_once_helm_calls, daemon=True)
    killer.start()
    try:
        with pytest.raises(HelmRunError, match="stopped answering /health during helm-run"):
            run_helm(model=None, url=server.url, conf_path=mcqa_conf, suite="dies", out_dir=tmp_path)
    finally:
        server.stop()
    assert killed_at and time.monotonic() - killed_at[0] < 30
    assert not [p for p in psutil.Process().children(recursive=True) if "helm-run" in " ".join(p.cmdline())]


def test_an_unknown_run_spec_is_one_line_before_a_server_starts(helm_venv, tmp_path):
    """helm-run found an unknown scenario only once the server was up (14 s), and said so with HELM's traceback."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        "families:\n  - {name: a, scenario: simple_mcqa}\n  - {name: b, scenario: no_such_scenario}\n"
        "  - {name: c, scenario: mmlu, args: {subjet: anatomy}}\n"  # a misspelt arg: HELM's TypeError, as late
    )
    out = tmp_path / "out"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["helm-eval", "--conf", str(tasks), "--suite", "s", "--out", str(out)])
    assert time.monotonic() - started < 30  # one short process in HELM's venv
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == (
        f"Error: {out / 'confs/s.conf'}: HELM {HELM_VERSION} has no run spec named no_such_scenario; "
        "mmlu:model=neurips/local,subjet=anatomy: got an unexpected keyword argument 'subjet'"
    )
    assert sorted(p.name for p in out.iterdir()) == ["confs"]  # no server log, no HELM output
    for name in ("open", "quick", "skill"):  # what the project ships passes, with HELM's own args
        conf = confgen.write_conf(confgen.generate(confgen.load_task_list(name)), tmp_path / f"{name}.conf")
        check_run_specs(conf)
    bad = tmp_path / "bad.conf"
    bad.write_text('entries: [{description: "simple_mcqa:x", priority: 1}]\n')
    with pytest.raises(HelmRunError, match=re.escape(f"the conf {bad}: ValueError: Expected <key>=<value>, got 'x'")):
        check_run_specs(bad)


def test_failed_download_says_the_suite_needs_the_internet(tmp_path):
    from llmkit.helm_eval import confgen
    from llmkit.helm_eval.run import _failure_message

    conf = confgen.write_conf(confgen.generate(confgen.load_task_list("open"), cap=1), tmp_path / "open.conf")
    log = tmp_path / "helm-run.log"  # the last lines of a real offline helm-run of the open suite
    log.write_text(
        '  File ".../helm/common/general.py", line 111, in ensure_file_downloaded\n'
        "    urllib.request.urlretrieve(source_url, tmp_path)\n"
        "urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>\n"
    )
    message = _failure_message(log, conf, 1)
    assert "could not download the datasets of bbq, big_bench, gsm, mmlu" in message
    assert "need the internet" in message and "Name or service not known" in message
    quick = confgen.write_conf(confgen.generate(confgen.load_task_list("quick")), tmp_path / "quick.conf")
    assert _failure_message(log, quick, 1).startswith("helm-run exited with code 1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"suite": "../../escape"}, "--suite '../../escape': use letters, digits"),
        ({"suite": "taken"}, "suite taken already has results in"),
        ({"out_dir": "a-file"}, "a-file is a file, not a folder; give a folder you can write in"),
        ({"out_dir": "a-file/results"}, "a-file is a file, not a folder"),  # was a traceback when writing the conf
        # found before the first model's evaluation (minutes), not after it
        ({"compare": "/no/such-model"}, "--compare /no/such-model: no such model folder, and not a hub id"),
        ({"model": "."}, "--model .: the folder holds no config.json (an adapter goes in --adapter)"),
        # options that would have been dropped without a word
        (
            {"url": "http://127.0.0.1:9", "server_args": ["--dtype", "bfloat16"]},
            "which --dtype bfloat16 cannot change",
        ),
        ({"budget": 5}, "--budget shares a task list's instances;"),
    ],
)
def test_helm_eval_refuses_a_suite_or_folder_it_would_mix_up(tmp_path, mcqa_conf, kwargs, message):
    from llmkit.helm_eval import helm_eval

    (tmp_path / "benchmark_output/runs/taken/simple_mcqa:model=neurips_local").mkdir(parents=True)
    (tmp_path / "benchmark_output/runs/taken/simple_mcqa:model=neurips_local/stats.json").write_text("[]")
    (tmp_path / "a-file").write_text("")
    options = {"conf": str(mcqa_conf), "out_dir": tmp_path, **kwargs}
    options["out_dir"] = tmp_path / options["out_dir"]
    with pytest.raises(HelmRunError, match=re.escape(message)):
        helm_eval(**options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "benchmark_output", "mcqa.conf"]


def test_a_suite_folder_with_no_finished_run_does_not_refuse_the_suite(tmp_path, mcqa_conf):
    """An older version, stopped before a run finished, left the suite's folder empty: the same --suite was refused
    as "already has results" until the user found and removed it."""
    from llmkit.helm_eval import helm_eval

    left = tmp_path / "benchmark_output/runs/left/simple_mcqa:model=neurips_local"
    left.mkdir(parents=True)
    with pytest.raises(HelmRunError, match="--budget shares a task list's instances"):  # the next check, reached
        helm_eval(conf=str(mcqa_conf), out_dir=tmp_path, suite="left", budget=5)
    assert not left.parent.exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_ctrl_c_keeps_the_finished_runs_and_says_so(helm_venv, tmp_path, signum):
    """SIGINT to `llmkit helm-eval` as a terminal sends it: exit 130, a count of the finished runs and their scores,
    no empty run folder, and the server it started stopped, with its log kept beside HELM's. SIGTERM (`timeout`, a
    scheduler) the same, exit 143: it said nothing at all."""
    from llmkit.helm_eval import confgen

    tasks = confgen.TaskList(
        families=[
            confgen.TaskFamily(name="mcqa", scenario="simple_mcqa"),
            confgen.TaskFamily(name="reasoning", scenario="synthetic_reasoning", args={"mode": "induction"}),
        ]
    )
    conf = confgen.write_conf(confgen.generate(tasks, budget=40), tmp_path / "two.conf")
    out = tmp_path / "out"
    before = _server_children()
    command = [sys.executable, "-m", "llmkit.cli", "helm-eval", "--conf", str(conf), "--suite", "cc"]
    command += ["--out", str(out)]
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr_file:
        # A foreground job's Ctrl-C: a suite started in the background by a non-interactive shell (nohup ... &)
        # hands its children SIGINT ignored, and Python then installs no KeyboardInterrupt for it.
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        runs = out / "benchmark_output/runs/cc"
        deadline = time.monotonic() + 600
        # Without a terminal there is no progress bar: a line per finished run instead.
        while "helm-run: 1 of 2 runs finished" not in stderr_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, stderr_path.read_text()
            time.sleep(0.5)
        os.killpg(process.pid, signum)  # what Ctrl-C in a terminal does: the whole foreground group
        process.wait(timeout=120)
    stderr = stderr_path.read_text()
    assert process.returncode == 128 + signum, stderr
    assert f"interrupted: 1 of the suite's runs had finished; HELM's output so far is in {runs}" in stderr
    flat = " ".join(stderr.split())
    assert "the runs finished when stopped" in flat and "simple_mcqa" in stderr  # their scores, shown
    assert "Traceback" not in stderr
    assert [p.name for p in runs.iterdir() if p.is_dir() and not any(p.iterdir())] == []
    assert (out / "logs/cc.server.log").read_text().count('"method": "POST"') >= 1
    assert _server_children() <= before


@pytest.mark.slow
def test_a_server_that_dies_mid_suite_keeps_and_shows_the_finished_runs(helm_venv, tmp_path):
    """The error was right, but the run in progress left an empty folder and the finished runs' scores were not
    shown, as they are after Ctrl-C."""
    from llmkit.helm_eval import confgen

    tasks = confgen.TaskList(
        families=[
            confgen.TaskFamily(name="mcqa", scenario="simple_mcqa"),
            confgen.TaskFamily(name="reasoning", scenario="synthetic_reasoning", args={"mode": "induction"}),
        ]
    )
    conf = confgen.write_conf(confgen.generate(tasks, budget=40), tmp_path / "two.conf")
    out, before = tmp_path / "out", _server_children()
    command = [sys.executable, "-m", "llmkit.cli", "helm-eval", "--conf", str(conf), "--suite", "died"]
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr_file:
        process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=stderr_file)
        deadline = time.monotonic() + 600
        while "helm-run: 1 of 2 runs finished" not in stderr_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, stderr_path.read_text()
            time.sleep(0.5)
        for pid in _server_children() - before:
            if "llmkit.server" in psutil.Process(pid).cmdline():  # not the test's own folder name
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=300)
    stderr, runs = stderr_path.read_text(), out / "benchmark_output/runs/died"
    assert process.returncode == 1 and "the server was killed by SIGKILL" in stderr, stderr
    assert "the runs finished when stopped" in " ".join(stderr.split()) and "simple_mcqa" in stderr
    assert [p.name for p in runs.iterdir() if p.is_dir() and not any(p.iterdir())] == []


def test_a_stopped_suite_leaves_no_empty_folder_to_refuse_a_rerun(tmp_path):
    """Stopped before a run finished, the suite's empty folder made the same --suite "already has results"."""
    from llmkit.helm_eval.run import remove_unfinished

    suite = tmp_path / "runs" / "s"
    (suite / "simple_mcqa:model=neurips_local").mkdir(parents=True)
    assert remove_unfinished(suite) == 0 and not suite.exists()
    (suite / "simple_mcqa:model=neurips_local").mkdir(parents=True)
    (suite / "dyck_language:model=neurips_local").mkdir()
    (suite / "dyck_language:model=neurips_local" / "stats.json").write_text("[]")
    assert remove_unfinished(suite) == 1
    assert [p.name for p in suite.iterdir()] == ["dyck_language:model=neurips_local"]


def test_a_running_servers_report_names_what_it_serves(start_server):
    """A --url report was labelled with the URL alone: compared later, nobody could tell which model it was."""
    from llmkit.helm_eval.run import _label

    server = start_server()
    assert _label(None, server.url) == f"{server.url} (HuggingFaceTB/SmolLM2-135M-Instruct)"
    assert _label(None, "http://127.0.0.1:9") == "http://127.0.0.1:9"  # gone since: the URL alone


@pytest.mark.parametrize(("health", "said"), [(b"", "answered 200 without JSON"), (b"{}", "POST /tokenize answered")])
def test_a_url_that_is_not_a_helm_server_is_said_at_once(tmp_path, stand_in_server, health, said):
    """A server answering /health but not HELM's API: a JSONDecodeError traceback (an empty 200, as `vllm serve`
    answers), or helm-run retrying /process for 3 minutes before its own traceback."""
    url = stand_in_server(lambda method, path: (200, {}, health) if path == "/health" else (404, {}, b"{}"))
    started = time.monotonic()
    with pytest.raises(HelmRunError, match=re.escape(said)):
        helm_eval(url=url, conf="quick", out_dir=tmp_path / "results")
    assert time.monotonic() - started < 20 and not (tmp_path / "results").exists()


def test_a_conf_file_is_capped_as_helm_reads_it(helm_venv, tmp_path):
    """--max-eval-instances read a .conf with a regex: entries commented out came back (an mmlu entry ran, and
    needed the internet), and entries with quoted keys, valid HOCON that helm-run reads, were dropped."""
    from llmkit.helm_eval.run import conf_descriptions, conf_scenarios, prepare_conf

    conf = tmp_path / "mine.conf"
    conf.write_text(
        "entries: [\n"
        '  {description: "simple_mcqa:model=neurips/local,max_eval_instances=5", priority: 1}\n'
        '  # {description: "mmlu:model=neurips/local,subject=anatomy,max_eval_instances=5", priority: 1}\n'
        '  // {description: "mmlu:model=neurips/local,subject=virology", priority: 1}\n'
        '  {"description": "dyck_language:num_parenthesis_pairs=2,model=neurips/local", "priority": 1}\n'
        "]\n"
    )
    assert conf_scenarios(conf) == {"simple_mcqa", "dyck_language"}
    capped = conf_descriptions(prepare_conf(conf, tmp_path, "capped", cap=2))
    assert [confgen.split_description(d) for d in capped] == [
        ("simple_mcqa", {"model": "neurips/local", "max_eval_instances": "2"}),
        ("dyck_language", {"num_parenthesis_pairs": "2", "model": "neurips/local", "max_eval_instances": "2"}),
    ]
    check_run_specs(tmp_path / "confs" / "capped.conf")  # what is run is what HELM's run specs take
