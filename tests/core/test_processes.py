"""Stopping a child's whole process group, on real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from llmkit.core.processes import stop_process_group

# A child that ignores SIGTERM and starts a grandchild that ignores it too (an ignored signal stays ignored across
# exec), then prints the grandchild's pid: the tree a stubborn server and its workers make.
_STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(grandchild.pid, flush=True)
time.sleep(120)
"""


@pytest.fixture
def start() -> Iterator[Callable[[str], subprocess.Popen]]:
    """Start `python -c code` leading its own group, as the server and helm-run are; clean up after the test."""
    children: list[subprocess.Popen] = []

    def _start(code: str) -> subprocess.Popen:
        children.append(
            subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
        )
        return children[-1]

    yield _start
    for child in children:
        stop_process_group(child, grace_s=0)  # a failed test's children do not outlive it
        child.stdout.close()


def _gone(pid: int, within_s: float = 10) -> bool:
    """The process ended (an orphan may stay a zombie until its new parent reaps it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace_period(start):
    child = start(_STUBBORN)
    grandchild = int(child.stdout.readline())  # printed once SIGTERM is ignored in both
    started = time.monotonic()
    stop_process_group(child, grace_s=1.0)
    assert time.monotonic() - started >= 1.0  # SIGTERM was given its grace period first
    assert child.returncode == -signal.SIGKILL
    assert _gone(grandchild), "the grandchild outlived its group's SIGKILL"


def test_a_cooperative_child_ends_on_sigterm_without_waiting_for_the_grace_period(start):
    child = start("import time; print('ready', flush=True); time.sleep(120)")
    child.stdout.readline()
    started = time.monotonic()
    stop_process_group(child, grace_s=30)
    assert child.returncode == -signal.SIGTERM and time.monotonic() - started < 10


def test_a_child_that_already_exited_is_left_alone(start):
    child = start("pass")
    child.wait()
    stop_process_group(child, grace_s=1)  # no signal to a group id that may be someone else's by now
    assert child.returncode == 0


# Under sigterm_as_exit, SIGTERM arrives while a weakref callback runs (as the garbage collector runs them), where
# Python drops what the handler raises. The program then sleeps: it should still stop, with 143, soon.
_SIGNAL_IN_A_WEAKREF_CALLBACK = """
import os, signal, sys, time, weakref
from llmkit.core.processes import sigterm_as_exit

class Thing:
    pass

def callback(_ref):
    os.kill(os.getpid(), {signum})
    for _ in range(100_000):  # the handler runs here, inside the callback
        pass

with sigterm_as_exit():
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    print("went on", flush=True)
    time.sleep(30)
print("finished", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_dropped_inside_a_weakref_callback_is_sent_again(signum):
    code = _SIGNAL_IN_A_WEAKREF_CALLBACK.format(signum=int(signum))
    started = time.monotonic()
    # A suite started in the background (nohup ... &) hands its children SIGINT ignored: give this one Ctrl-C's.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=default_sigint
    )
    assert result.returncode in (128 + signum, -signum), result  # SystemExit(143); Python ends on KeyboardInterrupt
    # by killing itself with SIGINT
    assert "finished" not in result.stdout and time.monotonic() - started < 20, result
    assert "Exception ignored" not in result.stderr, result.stderr


def test_a_command_says_each_library_warning_once_where_ci_is_set(tiny_config, tiny_model_dir, tmp_path):
    """With CI=true (GitHub Actions sets it) transformers passes its records on to the root logger as well as
    printing them itself: every warning of a real command came twice, "[transformers] ..." and "WARNING
    transformers....: ...". The CLI's start still imports no transformers."""
    import json
    import os
    import shutil

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    tokenizer_config = json.loads((base / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 8  # the data's rows are longer: transformers' tokenizer warns, once
    (base / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = tiny_config(base_model=str(base))
    command = [sys.executable, "-m", "llmkit.cli", "validate", str(config)]
    for ci in ("true", None):
        env = {key: value for key, value in os.environ.items() if key != "CI"} | ({"CI": ci} if ci else {})
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if "Token indices sequence length is longer" in line]
        assert len(said) == 1 and said[0].startswith("[transformers] "), (ci, result.stderr)
    started = "import sys, llmkit.cli; print(sorted({'transformers', 'torch'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", started], capture_output=True, text=True, timeout=60).stdout == "[]\n"
