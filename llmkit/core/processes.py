"""Stopping a child together with everything it spawned (the HELM server, helm-run and their workers),
SIGTERM to this process unwinding like Ctrl-C, and this process's log on stderr saying each record once.

Children are started with `start_new_session=True`, so each leads its own process group and one signal to the
group reaches its whole tree. Standard library only: this module sits in the common base.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

from llmkit.core.interrupted import is_ctrl_c


def stop_process_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process's group, wait up to `grace_s` seconds for the process, then SIGKILL the group.

    `process` must lead its own group (started with `start_new_session=True`); one that already exited is left
    alone, since its pid, and so the group id, may belong to someone else by now.
    """
    if process.poll() is not None:
        return
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def exit_description(returncode: int) -> str:
    """'exited with code 3', or 'was killed by SIGKILL' for Popen's negative return codes."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    # The group is gone if the process exited and another thread reaped it since our poll().
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def exit_on_sigterm() -> tuple[object, object]:
    """From now on SIGTERM raises SystemExit(143) in the main thread, unwinding as Ctrl-C does (`finally` blocks,
    `core.files.staging_dir`); a signal Python drops inside a garbage-collector callback is sent again. Returns what
    it replaced: the SIGTERM handler and sys.unraisablehook."""
    previous = signal.signal(signal.SIGTERM, _exit), sys.unraisablehook
    sys.unraisablehook = functools.partial(_redeliver, previous[1])
    return previous


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """`exit_on_sigterm` for a block, so `core.files.staging_dir` cleans up (SIGKILL leaves it to `clean_stale`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler, hook = exit_on_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)
        sys.unraisablehook = hook


def interrupted_exit_code(err: BaseException) -> int | None:
    """The shell's exit status for Ctrl-C (KeyboardInterrupt: 130) or SIGTERM (`exit_on_sigterm`'s SystemExit:
    143); None for any other exit (a message, or argparse's sys.exit(0) after --help), which is no interruption."""
    if is_ctrl_c(err):  # an ImportError too, where an extension's import met the Ctrl-C
        return 130
    sigterm = 128 + signal.SIGTERM
    return sigterm if isinstance(err, SystemExit) and err.code == sigterm else None


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _redeliver(previous_hook, unraisable) -> None:
    # A signal that lands while the garbage collector runs a weakref callback or a __del__ raises there, where Python
    # prints the exception ("Exception ignored in") and goes on: the command would finish as if never stopped. Send
    # the signal again, a moment later, to land where it unwinds.
    exc = unraisable.exc_value
    resend = {SystemExit: signal.SIGTERM, KeyboardInterrupt: signal.SIGINT}.get(type(exc))
    if resend is signal.SIGTERM and exc.code != 128 + signal.SIGTERM:
        resend = None
    if resend is None:
        previous_hook(unraisable)
        return
    threading.Timer(0.05, os.kill, (os.getpid(), resend)).start()


def no_bars_when_piped() -> None:
    """Piped (CI, `| tee`, a file, a container's log): a bar redrawn with carriage returns and cursor-up codes is
    noise in a log. The hub's switch also turns off transformers' bars (loading weights; the Trainer's follows it:
    run.training_arguments); datasets has its own. Called before a command imports them; a value the user set wins."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def log_to_stderr(level: int, format: str = logging.BASIC_FORMAT) -> None:
    """logging.basicConfig(level=, format=) for a command's process, whose stderr handler leaves out the records a
    library's own handler has written to stderr already: transformers' (which lets them on to the root logger too
    where the CI variable is true, as GitHub Actions sets it) and huggingface_hub's (always) were printed twice, once
    as the library prints them ("[transformers] ..."), once in this format. Nothing is imported for it: the
    libraries' handlers are looked up as each record passes. A root logger with handlers already is left as it is,
    as basicConfig leaves it."""
    root = logging.getLogger()
    configured = bool(root.handlers)
    logging.basicConfig(level=level, format=format)
    if not configured:
        for handler in root.handlers:
            handler.addFilter(_PrintedByItsLibrary(handler))


class _PrintedByItsLibrary(logging.Filter):
    """Passes a record unless a handler below the root logger, on the record's way up to it, wrote it to the same
    stream as `handler` (a handler of llmkit's own that collects records, as the data stage's, writes to none)."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.stream = getattr(handler, "stream", None)

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger.parent is not None:  # the root's own handlers are not "its library's"
            mine = (h for h in logger.handlers if record.levelno >= h.level)
            if self.stream is not None and any(getattr(h, "stream", None) is self.stream for h in mine):
                return False
            logger = logger.parent if logger.propagate else None
        return True
