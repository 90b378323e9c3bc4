"""Directories that appear whole or not at all: build beside the target, rename into place, clean up after kills.

Temporary directories are named `.<target>.<kind>-<pid>-<random>` so that a later run can tell which ones a
killed process left behind (its pid is gone) and remove them, or restore a good target it had moved aside.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import psutil

LOG = logging.getLogger(__name__)


@contextmanager
def staging_dir(target: Path, kind: str):
    """A temp dir beside `target`, named with our pid; removed on any exit (SIGKILL aside)."""
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-{os.getpid()}-", dir=target.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def swap_in(built: Path, target: Path) -> None:
    """Rename `built` to `target`; an existing target is moved aside first and deleted only after the swap."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale(target: Path) -> None:
    """Remove what a killed process left beside `target`; restore a good target it had moved aside."""
    for path in target.parent.glob(f".{target.name}.*-*"):
        parts = path.name.removeprefix(f".{target.name}.").split("-")
        if len(parts) < 2 or not parts[1].isdigit() or psutil.pid_exists(int(parts[1])):
            continue
        if parts[0] == "old" and not target.exists():
            LOG.warning("Restoring %s from %s (a run was killed while swapping it)", target, path)
            path.rename(target)
        else:
            LOG.info("Removing %s, left by a killed run", path)
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def sigterm_as_exit():
    """Let SIGTERM unwind like Ctrl-C, so `staging_dir` cleans up (SIGKILL leaves it to `clean_stale`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
