"""Start the HELM server as a child process on a loopback port and wait until it is healthy.

Used by `helm_eval` (serve a model for helm-run), by the submission smoke test and by the tests.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from llmkit.core.processes import exit_description, stop_process_group

LOG = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The server process exited or never became healthy; the message carries its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_command(args: Sequence[str] = (), python: str = sys.executable) -> list[str]:
    """The command line that runs `python -m llmkit.server` with extra CLI flags."""
    return [python, "-m", "llmkit.server", *args]


def wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> dict:
    """Poll `GET {url}/health` until it answers 200; fail early if `process` dies."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerStartError(f"server {exit_description(process.returncode)} before becoming healthy")
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:  # another kind of server (vllm serve answers an empty 200): no use waiting
                    raise ServerStartError(f"{url}/health answered 200 without JSON: not llmkit's server") from None
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            last_error = str(err) or type(err).__name__
        time.sleep(0.5)
    raise ServerStartError(f"server at {url} not healthy after {timeout:.0f} s ({last_error})")


class ServerProcess:
    """Context manager: a server child process on a free loopback port; stopped on exit, even on errors.

    Args:
        args: extra flags for `python -m llmkit.server` (for example ["--model", path]).
        command: a full command line instead (the submission smoke test runs the Dockerfile's CMD); it must
            contain the literal `{port}`, which is replaced by the chosen port.
        cwd, env: where and with which environment the process runs.
        startup_timeout: seconds to wait for /health.
        log_path: where the server's output goes and stays; without it, a temporary file that is removed on
            stop() unless the server failed to start (its path is in the error).
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        command: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 300,
        log_path: Path | None = None,
    ):
        self.host = host
        self.port = port or free_port(host)
        if command is None:
            command = server_command([*args, "--host", host, "--port", str(self.port)])
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.info: dict = {}
        self._keep_log = log_path is not None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "wb")  # the child writes to it until stop()
        else:
            self._log = tempfile.NamedTemporaryFile(prefix="llmkit-server-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    def log_tail(self, chars: int = 3000) -> str:
        """The log's last `chars` characters, from the start of a line."""
        text = self.log_path.read_text(errors="replace")
        if len(text) <= chars:
            return text
        tail = text[-chars:]
        return tail[tail.find("\n") + 1 :] if "\n" in tail else tail

    def start(self) -> ServerProcess:
        LOG.info("Starting %s", " ".join(self.command))
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() also ends anything it spawned
        )
        try:
            self.info = wait_healthy(self.url, self.startup_timeout, self.process)
        except ServerStartError as err:
            self._keep_log = True  # the error names it
            self.stop()
            raise ServerStartError(f"{err}\n--- server log ({self.log_path}) ---\n{self.log_tail()}") from None
        except BaseException:  # Ctrl-C or SIGTERM while it starts: `with` never reaches __exit__, so stop it here
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace_s=20)
        self._log.close()
        if not self._keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
