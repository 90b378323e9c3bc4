"""The Makefile's command lines (`make -n`): paths keep their spaces and quotes, and yes/no variables mean the same
in any case or are refused by name before any set-up."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make(*args: str) -> subprocess.CompletedProcess:
    # Under `make test` the parent's MAKEFLAGS/MAKELEVEL would add "make[1]: Entering directory" lines.
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)


def make_n(*args: str) -> subprocess.CompletedProcess:
    return make("-n", "--no-print-directory", *args)


def command_line(*args: str) -> list[str]:
    result = make_n(*args)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout.strip().splitlines()[-1])


def test_paths_with_spaces_and_quotes_reach_the_cli_whole():
    zip_path = "/tmp/my subs/it's here.zip"
    assert command_line("verify-submission", f"ZIP={zip_path}", "SMOKE=Yes")[1:] == [
        "verify-submission",
        zip_path,
        "--smoke",
    ]
    line = command_line("submission", "TRACK=4090", "MODEL=/models/mérged 1", "ADAPTER=run one")
    assert line[line.index("--model") + 1] == "/models/mérged 1" and line[line.index("--adapter") + 1] == "run one"
    assert command_line("validate", "CONFIG=my configs/a.yml", "MODEL_CONFIG=x y.json")[1:] == [
        "validate",
        "my configs/a.yml",
        "--model-config",
        "x y.json",
    ]
    line = command_line("submission", "TRACK=4090", "CONFIG=a b.yml", "ARGS=--cpu-fallback")  # as `make train` does
    assert line[line.index("--config") + 1] == "a b.yml" and line[-1] == "--cpu-fallback"
    assert command_line("train", "CONFIG=a b.yml", "ARGS=--max-steps 5")[1:] == [
        "train",
        "a b.yml",
        "--max-steps",
        "5",
    ]


@pytest.mark.parametrize("target", [["submission", "TRACK=4090"], ["merge", "ADAPTER=run"], ["helm-eval"]])
def test_out_reaches_the_cli_as_out_for_every_target_that_writes_a_folder(target):
    """`make submission OUT=...` dropped OUT and wrote into submissions/, where merge and helm-eval took it."""
    line = command_line(*target, "OUT=/tmp/my subs")
    assert line[line.index("--out") + 1] == "/tmp/my subs"


@pytest.mark.parametrize(
    ("yes_no", "flags"),
    [
        (["SMOKE=False", "BUNDLE=True", "TRAINING=YES"], {"--no-smoke", "--bundle-weights", "--training"}),
        (["SMOKE=0", "BUNDLE=1", "TRAINING=on"], {"--no-smoke", "--bundle-weights", "--training"}),
        (["SMOKE=Yes", "BUNDLE=No", "TRAINING=off"], set()),
    ],
)
def test_yes_no_variables_mean_the_same_in_any_case(yes_no, flags):
    line = command_line("submission", "TRACK=4090", *yes_no)
    assert {"--no-smoke", "--bundle-weights", "--training"} & set(line) == flags


def test_a_yes_no_variable_that_is_neither_stops_make_naming_it():
    result = make_n("submission", "TRACK=4090", "SMOKE=maybe")
    assert result.returncode != 0 and "llmkit" not in result.stdout
    assert "SMOKE=maybe: write SMOKE=1" in result.stderr


def test_the_suite_runs_on_a_worker_per_core_unless_told_otherwise():
    cores = min(len(os.sched_getaffinity(0)), 4)  # as nproc counts them
    line = command_line("test", "PYTEST_ARGS=-k merge")
    assert line[line.index("-n") + 1 : line.index("-n") + 4] == [str(cores), "--dist", "loadgroup"] and line[-2:] == [
        "-k",
        "merge",
    ]
    assert "-n" not in command_line("test", "WORKERS=0") and "3" in command_line("test-fast", "WORKERS=3")


def test_the_suites_workers_start_a_shared_server_once(tmp_path, python):
    """tests/conftest.py's groups under `make test`'s --dist loadgroup: a package-scoped server used by two modules
    and a module-scoped one each start on one worker, once (the groups were lost, as conftest's hook ran after
    xdist's, and again on pytest 9.2: both workers started each server)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    package = tmp_path / "tests" / "server"
    package.mkdir(parents=True)
    (package / "conftest.py").write_text(
        "import os, pytest\n"
        "def started(name):\n"
        "    with open(os.environ['STARTS'], 'a') as starts: starts.write(name + '\\n')\n"
        "@pytest.fixture(scope='package', params=['builtin', 'vllm'])\n"
        "def server(request):\n"
        "    started(request.param)\n"
        "    return request.param\n"
        "@pytest.fixture(scope='module')\n"
        "def client(server):\n"
        "    return server\n"
        "@pytest.fixture(scope='module')\n"
        "def own_server():\n"
        "    started('own')\n"
    )
    for module in ("api", "observe"):
        tests = [f"def test_{module}_{n}(server, client): pass\n" for n in range(4)]
        (package / f"test_{module}.py").write_text("".join(tests))
    (package / "test_batching.py").write_text("".join(f"def test_{n}(own_server): pass\n" for n in range(6)))
    starts, result = _run_with_the_suites_conftest(tmp_path, python)
    assert sorted(starts.read_text().split()) == ["builtin", "own", "vllm"], result.stdout


def test_the_shared_training_is_scheduled_first_without_the_other_tests_of_its_modules(tmp_path, python):
    """The tests using a SHARED_RUNS fixture (default_run, minutes of training) are the first group xdist hands out,
    and they alone: with their whole modules in their group, it was scheduled among the last (the groups went largest
    first by test count) and the other worker idled at the end. A module-scoped fixture one of them uses keeps its
    other users with them, so that it is still made once."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers = slow\n")
    tests = tmp_path / "tests"
    tests.mkdir()
    logged = (  # each test's id (its xdist group after the "@") and each fixture made, by worker
        "import os, pytest\n"
        "def log(what):\n"
        "    with open(os.environ['STARTS'], 'a') as starts:\n"
        "        starts.write(os.environ['PYTEST_XDIST_WORKER'] + ' ' + what + '\\n')\n"
        "@pytest.fixture(autouse=True)\n"
        "def each(request):\n"
        "    log(request.node.nodeid)\n"
    )
    (tests / "test_merge.py").write_text(
        logged + "@pytest.fixture(scope='session')\n"
        "def default_run():\n"
        "    log('made:default_run')\n"
        "@pytest.fixture(scope='module')\n"
        "def merged(default_run):\n"
        "    log('made:merged')\n"
        "@pytest.fixture(scope='module')\n"
        "def server():\n"
        "    log('made:server')\n"
        "def test_learns(default_run, server): pass\n"
        "def test_merged(merged): pass\n"
        "def test_served(server): pass\n" + "".join(f"def test_other_{n}(): pass\n" for n in range(4))
    )
    (tests / "test_big.py").write_text(logged + "".join(f"def test_{n}(): pass\n" for n in range(10)))
    (tests / "test_end_to_end.py").write_text(logged + "@pytest.mark.slow\ndef test_long(): pass\n")
    starts, result = _run_with_the_suites_conftest(tmp_path, python)
    lines = [line.split(" ", 1) for line in starts.read_text().splitlines()]
    made = sorted(what for _, what in lines if what.startswith("made:"))
    assert made == ["made:default_run", "made:merged", "made:server"], result.stdout
    ran = {what.split("::")[1].split("@")[0]: (worker, what.split("@")[1]) for worker, what in lines if "::" in what}
    shared = {name for name, (_, group) in ran.items() if group == "default_run"}
    assert shared == {"test_learns", "test_merged", "test_served"}, ran
    assert all(ran[f"test_other_{n}"][1] == "tests/test_merge.py" for n in range(4)), ran
    # each worker's first test: the shared run's on one; on the other the group with a test marked slow, before the
    # ten quick ones
    firsts = {on: what.split("::")[1].split("@")[0] for on, what in reversed(lines) if "::" in what}
    assert firsts[ran["test_learns"][0]] in shared and firsts[ran["test_long"][0]] == "test_long", lines


def _run_with_the_suites_conftest(tmp_path: Path, python: str) -> tuple[Path, subprocess.CompletedProcess]:
    """Run the tests under tmp_path as `make test` does, in two workers, with the suite's conftest.py as a plugin (its
    hooks, not its folder's tests); their fixtures write to the file returned (environment variable STARTS)."""
    starts = tmp_path / "starts.txt"
    env = os.environ | {"PYTHONPATH": str(ROOT / "tests"), "STARTS": str(starts)}
    command = [python, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "conftest", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return starts, result


def test_make_help_gives_every_phony_target_its_usage_line():
    database = make("-pRrq", ":").stdout  # make's own reading of the Makefile (-q: nothing runs)
    [phony] = [line.split(":", 1)[1].split() for line in database.splitlines() if line.startswith(".PHONY:")]
    helped = make("--no-print-directory", "help")
    assert helped.returncode == 0, helped.stderr
    usage = {line.split()[1].rstrip(":") for line in helped.stdout.splitlines() if line.startswith("  make ")}
    assert set(phony) <= usage and "help" in phony, helped.stdout
