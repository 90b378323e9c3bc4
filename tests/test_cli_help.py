"""`llmkit --help`, every subcommand's --help and the server's read cleanly: no type labels in angle brackets."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from llmkit.cli import app

SHIPPED_CONFIG = Path(__file__).parents[1] / "axolotl_configs" / "smollm2-135m-qlora.yml"

COMMANDS = sorted(get_command(app).commands)
# What typer 0.29 prints by itself ("--help <bool>", "<int>", "{config}") and pydantic-settings ("{str,null}").
ARTEFACTS = re.compile(r"<(bool|str|int|float|list\[\w+\])>|\{\w+\}|\bnull\}")


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="llmkit")
    assert result.exit_code == 0, result.output
    assert not ARTEFACTS.search(result.output), result.output
    return result.output


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_exits_0_without_artefacts(command):
    output = _help(*filter(None, [command]))
    assert "usage:" in output.lower()
    assert re.search(r"--help\s+(Show|show) this", output), output  # a flag: no value after it


def test_options_flags_and_arguments_show_classic_metavars():
    train = _help("train")
    assert "Usage: llmkit train [OPTIONS] CONFIG" in train
    assert re.search(r"--max-steps\s+INTEGER\s", train) and re.search(r"--output-dir\s+TEXT\s", train)
    assert re.search(r"--cpu-fallback\s+--no-cpu-fallback\s+Without CUDA", train)
    assert "Usage: llmkit merge [OPTIONS] [CONFIG]" in _help("merge")
    submission = _help("submission")
    assert re.search(r"--track\s+\[4090\|A100\]", submission)
    assert re.search(r"--cpu-fallback\s+--no-cpu-fallb.*\s+Training\s", submission)  # typer cuts it at this width


def test_serve_shows_the_servers_own_help():
    served = _help("serve")
    direct = subprocess.run(
        [sys.executable, "-m", "llmkit.server", "--help"], capture_output=True, text=True, timeout=120
    )
    assert direct.returncode == 0, direct.stderr
    assert served.split() == direct.stdout.split() and not ARTEFACTS.search(direct.stdout)  # wrapped to its width
    assert "--model str " in direct.stdout and "--port int " in direct.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["submission", "--track", "4090", "--loading", "xx"],
            "'--loading': 'xx' is not one of 'bf16', 'int8', 'nf4'.",
        ),
        # typer's case-insensitive check listed them lowercased ('a100'), where the README and Makefile write A100
        (["submission", "--track", "3090"], "'--track': '3090' is not one of '4090', 'A100'."),
        (["bench", "--stage", "typing"], "'--stage': 'typing' is not one of 'serving', 'training', 'merging'."),
        (["random-model", "x", "--out", "y", "--device", "tpu"], "'--device': 'tpu' is not one of 'auto', 'cpu',"),
        (["bench", "--steps", "0"], "'--steps': Input should be greater than or equal to 1"),
        # read as ".", and refused for the current folder's files: not what was wrong
        (["train", "c.yml", "--output-dir", ""], "'--output-dir': an empty folder name; give a folder"),
    ],
)
def test_a_bad_option_value_is_a_usage_error_in_plain_words(args, said):
    """typer 0.29 checks option values with pydantic and showed its wording: "Value error, 'xx' is not one of"."""
    result = CliRunner().invoke(app, args, prog_name="llmkit", env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {said}" in result.output and "Value error" not in result.output, result.output


def test_a_bad_serve_flag_value_is_a_usage_error_on_one_line():
    """`serve --port abc` exited 1 over two lines, where every other command's bad value (and serve's unknown flag,
    argparse's) is a usage error: 2."""
    result = CliRunner().invoke(app, ["serve", "--port", "abc", "--max-context", "0"], prog_name="llmkit")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "Error: invalid settings: --max-context: Input should be greater than 0 (got '0'); --port: Input should be a "
        "valid integer, unable to parse string as an integer (got 'abc')"
    ]


@pytest.mark.parametrize(
    ("args", "status", "said"),
    [
        # command-line input the command cannot take, found past click's parsing: 2, as click's own
        (["merge", "--dtype", "int3"], 2, "'--dtype': dtype 'int3': expected bfloat16, float16 or float32"),
        (["merge", "--adapter", "a", "--dry-run"], 2, "Error: --dry-run lists what --hub-model-id would upload"),
        (["merge"], 2, "Error: Nothing to merge: give a CONFIG, --adapter DIR, or --weighted FILE"),
        (["submission", "--track", "A100", "--number", "0", "--no-smoke"], 2, "Error: --number 0: submissions are"),
        (["train", "CONFIG", "--max-steps", "0"], 2, "  - --max-steps: Input should be greater than 0 (got 0)"),
        (["helm-eval", "--suite", "../x", "--url", "http://127.0.0.1:9"], 2, "Error: --suite '../x': use letters"),
        (["helm-conf", "--budget", "0"], 2, "Error: a budget of 0 instances cannot cover the"),
        (["helm-conf", "nosuch"], 2, "Error: no task list 'nosuch' (known: open, quick, skill"),
        (["decontaminate", str(SHIPPED_CONFIG), "--conf", "nosuch"], 2, "Error: no task list 'nosuch'"),
        (["helm-eval", "--budget", "0", "--out", "h"], 2, "Error: a budget of 0 instances cannot cover the"),
        # found by the settings, before vLLM's venv is started: it was an `Error: cannot serve:` once vLLM had loaded
        (
            ["serve", "--engine", "vllm", "--quantization", "int8"],
            2,
            "--quantization: int8 is not available with "
            "--engine vllm: use nf4 (bitsandbytes 4-bit) or a pre-quantized checkpoint (AWQ, GPTQ, FP8), which vLLM "
            "detects from its config.json (got 'int8')",
        ),
        # what the command cannot read or load: 1
        (["train", "missing.yml"], 1, "Error: cannot read the config missing.yml: No such file or directory"),
        (["validate", "missing.yml"], 1, "Error: cannot read the config missing.yml: No such file or directory"),
        (["merge", "--adapter", "missing"], 1, "Error: Adapter directory missing does not exist"),
        (["helm-conf", "missing.yaml"], 1, "Error: no task list 'missing.yaml'"),
    ],
)
def test_usage_errors_exit_2_and_failures_1_in_every_command(args, status, said, tmp_path, monkeypatch):
    """`merge --dry-run` without --hub-model-id, `train --max-steps 0` and `submission --number 0` exited 1, as a
    missing file does, where click's own usage errors (and `train --max-steps abc`) exit 2 (core.errors.UsageError,
    the CLI's _one_line_errors)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "CONFIG").write_text("base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    result = CliRunner().invoke(app, args, prog_name="llmkit", env={"COLUMNS": "200"})
    assert result.exit_code == status, result.output
    assert said in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("command", ["train", "preprocess", "validate", "merge", "decontaminate"])
def test_ctrl_c_while_a_command_reads_its_config_is_one_interrupted_line(command, tmp_path):
    """Ctrl-C in a command's first seconds (its imports, reading its config) exited 130 without a word: typer turns
    a KeyboardInterrupt no command catches into a bare exit, and train's own line waited for a read config. The
    config is a FIFO: once this test's open for writing returns, the command is reading it, a point it reaches
    every time."""
    import os
    import signal

    fifo = tmp_path / "config.yml"
    os.mkfifo(fifo)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731 (a suite run with nohup)
    run = subprocess.Popen(
        [sys.executable, "-m", "llmkit.cli", command, str(fifo)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        with open(fifo, "w"):  # returns when the command opens it to read
            run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("launch", ["llmkit", "python -m llmkit"])
def test_ctrl_c_while_the_cli_loads_is_the_same_interrupted_line(launch, delay, tmp_path):
    """Ctrl-C while `llmkit` loads llmkit.cli (typer, pydantic, the stages' settings: most of a second cold) printed
    a traceback, as the console script imported it where no handler ran yet. The real command (the venv's script,
    and `python -m llmkit`, which accelerate launches under DDP) gets SIGINT at moments after the interpreter's own
    start, where Python itself prints a traceback or carries on: timed from the import of the package `llmkit`,
    which -X importtime reports as it ends. The config is a FIFO never written: the command is alive at each moment.
    """
    import os
    import signal
    from pathlib import Path

    fifo = tmp_path / "config.yml"
    os.mkfifo(fifo)
    script = Path(sys.executable).with_name("llmkit")
    assert script.is_file(), f"{script}: the console script (pip install -e .)"
    command = [str(script)] if launch == "llmkit" else [sys.executable, "-m", "llmkit"]
    run = subprocess.Popen(
        [*command, "train", str(fifo)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a suite run with nohup ignores it
    )
    try:
        threading.Timer(60, run.kill).start()  # the marker never comes: the loop ends at the killed child's EOF
        for line in run.stderr:
            if line.split("|")[-1].strip() == "llmkit":
                break
        time.sleep(delay)
        run.send_signal(signal.SIGINT)
        # the rest through the same text reader: communicate() reads the pipe itself, past what the loop's reader
        # holds already, so it could begin mid-line (an import-time line's tail, taken for the command's output)
        stderr = run.stderr.read()
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    said = "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))
    assert "Traceback" not in said, said
    assert said.strip() == "interrupted: llmkit train stopped before it finished", said
    # The shell's 130: under -m, CPython 3.11 ends the process by SIGINT (which the shell reports as 130) after a
    # Ctrl-C that landed in an exec() of a string (dataclasses' generated methods), caught or not; a script exits 130
    assert run.returncode == 130 or (launch != "llmkit" and run.returncode == -signal.SIGINT), said


# Imitates numpy's extension as torch imports it: a Ctrl-C in its initialisation comes out of the import as an
# ImportError with nothing of the KeyboardInterrupt left (a real SIGINT, to the process, through llmkit's handler).
_CTRL_C_IN_AN_IMPORT = """
import os, signal, sys, time
from llmkit.entry import main

class CtrlCInTorch:
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)  # the handler raises here
        except KeyboardInterrupt:
            raise ImportError("cannot load module more than once per process") from None

sys.meta_path.insert(0, CtrlCInTorch())
sys.argv = ["llmkit", *sys.argv[1:]]
main()
"""


def test_ctrl_c_that_an_import_turns_into_an_import_error_is_the_interrupted_line(tmp_path):
    """Ctrl-C while merge imported torch exited 1 on numpy's "ImportError: cannot load module more than once per
    process" traceback: the import machinery had turned the KeyboardInterrupt into it. Without a Ctrl-C, an
    ImportError is still a failure."""
    import signal

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    command = [sys.executable, "-c", _CTRL_C_IN_AN_IMPORT, "merge", "--adapter", str(adapter), "--out", "merged"]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a suite run with nohup ignores it
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().startswith("interrupted: no merged model was written"), done.stderr
    failed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from llmkit.entry import main; import sys; sys.modules['torch'] = None; "
            "sys.argv = ['llmkit', 'merge', '--adapter', 'adapter', '--out', 'merged']; main()",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1 and "import of torch halted" in failed.stderr, (
        failed.stderr
    )  # no Ctrl-C: not interrupted
