"""Score a model the way the organisers do: `llmkit helm-eval [--model M | --url U] [--conf quick|open|PATH]`.

Starts the server on a free loopback port (or checks the one at --url), runs crfm-helm's `helm-run` against
it with HELM_HTTP_MODEL_BASE_URL set, then `helm-summarize`, and stops the server it started, also on Ctrl-C
or failure. While helm-run works, the server is watched: helm-run itself would retry a dead URL for minutes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmkit.core.challenge import HELM_CLIENT_THREADS
from llmkit.core.errors import UsageError
from llmkit.core.models import DEFAULT_MODEL_ID
from llmkit.core.processes import exit_description, interrupted_exit_code, stop_process_group
from llmkit.helm_eval import confgen
from llmkit.helm_eval.setup import HELM_VERSION, helm_executable, require_helm
from llmkit.helm_eval.summary import HelmReportError, SuiteScores, load_suite
from llmkit.server.launch import ServerProcess, ServerStartError, wait_healthy

LOG = logging.getLogger(__name__)
DEFAULT_MAX_EVAL_INSTANCES = 10  # per run, for entries whose conf sets no count of their own
# Scenarios that build their data in code (../shared/docs/helm-protocol.md) and run here without the internet; every
# other one downloads its data. simple_short_answer_qa builds its data in code too, but its metric downloads NLTK's
# punkt_tab, and simple1 hung after its requests here: neither is offered as offline.
OFFLINE_SCENARIOS = {
    "simple_mcqa",
    "simple_classification",
    "synthetic_reasoning",
    "synthetic_reasoning_natural",
    "dyck_language",
}
# What a failed dataset download looks like in helm-run's log (wget, urllib, requests, huggingface_hub).
_OFFLINE_SIGNS = re.compile(
    r"Failed to run: wget|unable to resolve host|Name or service not known|Temporary failure in name resolution|"
    r"NameResolutionError|Could not resolve host|Max retries exceeded|urlopen error|Network is unreachable|"
    r"LocalEntryNotFoundError|offline mode is enabled",
    re.IGNORECASE,
)
_HEALTH_FAILURES_ALLOWED = 3  # consecutive failed /health probes before the server counts as dead
_HEALTH_INTERVAL_S = 2.0
# How long --url may take to answer /health: a server started a moment ago still loads its model before it listens.
_URL_HEALTH_WAIT_S = 10.0
RUN_SPECS_CHECK_SCRIPT = Path(__file__).with_name("run_specs_check.py")


class HelmRunError(RuntimeError):
    """helm-run or helm-summarize failed, or the server died under it; the message says which and why. Raised by
    `run_helm`, `partial` holds the scores of the suite's runs that had finished (None when none had), `finished`
    the suites evaluated before this one (--compare's first model)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.partial: SuiteScores | None = None
        self.finished: list[SuiteScores] = []


class HelmRunInterrupted(HelmRunError):
    """Ctrl-C or SIGTERM during a run: the message says how many runs had finished and where their output is;
    `exit_code` is the shell's (130, 143)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class HelmUsageError(HelmRunError, UsageError):
    """Flags helm-eval cannot take (a suite name that is no file name, --url beside --model): a usage error, exit
    2; before any run, so nothing finished."""


def prepare_conf(
    conf: str | Path, out_dir: Path, suite: str, *, budget: int | None = None, cap: int | None = None
) -> Path:
    """A conf file for helm-run: `quick`/`open`/a task-list YAML are generated; a .conf path is used as is, or
    rewritten with at most `cap` instances per entry."""
    path = Path(conf)
    if confgen.is_conf_file(path):
        if not path.is_file():
            raise HelmRunError(f"conf file {path} does not exist")
        if budget is not None:
            raise HelmUsageError(
                f"--budget shares a task list's instances; {path} is a conf file, whose entries say their own "
                "(--max-eval-instances caps them)"
            )
        if cap is None:
            return path.resolve()
        entries = confgen.capped_entries(conf_descriptions(path), cap)
    else:
        entries = confgen.generate(confgen.load_task_list(conf), budget=budget, cap=cap)
    return confgen.write_conf(entries, out_dir / "confs" / f"{suite}.conf", own_folder=True).resolve()


def check_run_specs(conf_path: Path) -> None:
    """Every entry of the conf names a run spec of HELM's, with args its function takes: a few seconds in HELM's venv
    before any server starts (helm-run finds out only once the server is up, with a traceback)."""
    found = _read_conf(conf_path.resolve(), conf_path.stat().st_mtime_ns)
    problems = list(found["bad_args"])
    if found["unknown"]:
        problems.insert(0, f"HELM {HELM_VERSION} has no run spec named {', '.join(found['unknown'])}")
    if problems:
        raise HelmRunError(f"{conf_path}: {'; '.join(problems)}")


def conf_descriptions(conf_path: Path) -> list[str]:
    """The conf's run entries as helm-run reads them (HOCON: comments, quoted keys, `=`), from HELM's own parser."""
    return _read_conf(conf_path.resolve(), conf_path.stat().st_mtime_ns)["descriptions"]


@functools.cache
def _read_conf(conf_path: Path, mtime_ns: int) -> dict:
    """run_specs_check.py's answer for the conf (read again when the file changes: `mtime_ns` is in the key)."""
    require_helm()
    command = [str(helm_executable("python")), str(RUN_SPECS_CHECK_SCRIPT), str(conf_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # its HOCON, or a description HELM cannot split: the exception's line says which
        said = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise HelmRunError(f"HELM cannot read the conf {conf_path}: {said}")
    return json.loads(result.stdout.splitlines()[-1])


def conf_scenarios(conf_path: Path) -> set[str]:
    return {confgen.normalize_description(d)[0] for d in conf_descriptions(conf_path)}


def check_url(url: str) -> str:
    """The base URL of the healthy HELM server at `url` (HelmRunError when none answers there)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise HelmUsageError(f"--url {url}: not a URL ({err})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise HelmUsageError(f"--url {url}: give the server's address as http://HOST:PORT")
    try:
        wait_healthy(url.rstrip("/"), timeout=_URL_HEALTH_WAIT_S)
    except ServerStartError as err:
        raise HelmRunError(f"no healthy HELM server at {url}: {err}") from None
    _check_helm_api(url.rstrip("/"))
    return url.rstrip("/")


def _check_helm_api(url: str) -> None:
    """One /tokenize request, as HELM's client sends it: a server that answers /health but not HELM's API made
    helm-run retry for minutes before its traceback."""
    try:
        response = httpx.post(f"{url}/tokenize", json={"text": "a"}, timeout=30)
        tokens = response.json().get("tokens") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError) as err:
        raise HelmRunError(f"--url {url} is not a HELM server: POST /tokenize failed ({err})") from None
    if not isinstance(tokens, list):
        answer = f"HTTP {response.status_code}" if response.status_code != 200 else "no token list"
        raise HelmRunError(f"--url {url} is not a HELM server: POST /tokenize answered {answer}")


@contextlib.contextmanager
def serve(
    model: str | None,
    url: str | None,
    server_args: Sequence[str] = (),
    startup_timeout: float = 300,
    log_path: Path | None = None,
):
    """Yield (base URL, server process or None): a server started here (its output in `log_path`), or the
    healthy one at `url`."""
    if url:
        yield check_url(url), None
        return
    args = [*(["--model", model] if model else []), *server_args]
    server = ServerProcess(args, startup_timeout=startup_timeout, log_path=log_path)
    try:  # stop() also when Ctrl-C lands while it is still starting
        try:
            server.start()
        except ServerStartError as err:
            raise HelmRunError(f"the server did not start: {err}") from None
        yield server.url, server
    finally:
        server.stop()


def _helm_run(
    *,
    conf_path: Path,
    suite: str,
    base_url: str,
    server: ServerProcess | None,
    out_dir: Path,
    max_eval_instances: int = DEFAULT_MAX_EVAL_INSTANCES,
    num_threads: int = HELM_CLIENT_THREADS,
) -> float:
    """helm-run against a live server (watched: the process if started here, /health either way), then
    helm-summarize; return helm-run's wall seconds. `num_threads` concurrent requests, as in the challenge."""
    require_helm()  # a clear error naming `make helm-setup` when it is missing
    log_path = out_dir / "logs" / f"{suite}.helm-run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(helm_executable("helm-run")),
        "--conf-paths",
        str(conf_path),
        "--suite",
        suite,
        "--max-eval-instances",
        str(max_eval_instances),
        "--num-threads",
        str(num_threads),
        "--output-path",
        str(out_dir / "benchmark_output"),
        "--local-path",
        str(out_dir / "prod_env"),
        # No response cache: every model is "neurips/local" to HELM, so a cache would mix base and tuned answers.
        "--disable-cache",
        "--exit-on-error",
    ]
    env = {**os.environ, "HELM_HTTP_MODEL_BASE_URL": base_url}
    started = time.monotonic()
    with open(log_path, "w") as log, _process(command, env, log, cwd=out_dir) as helm:
        _watch(helm, log_path, base_url, server, total=len(conf_descriptions(conf_path)))
    wall_s = time.monotonic() - started
    if helm.returncode != 0:
        raise HelmRunError(_failure_message(log_path, conf_path, helm.returncode))
    _summarize(suite, out_dir)
    return wall_s


@contextlib.contextmanager
def _process(command: list[str], env: dict, log, cwd: Path) -> Iterator[subprocess.Popen]:
    """A child in its own process group, killed with everything it spawned if we leave early (Ctrl-C, errors)."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop_process_group(process, grace_s=10)


def _watch(helm: subprocess.Popen, log_path: Path, base_url: str, server: ServerProcess | None, total: int) -> None:
    """Wait for helm-run with a progress bar (finished runs), raising as soon as the server is gone."""
    columns = (TextColumn("helm-run"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"), TimeElapsedColumn())
    failures, finished = 0, 0
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("helm-run", total=total)
        while helm.poll() is None:
            time.sleep(_HEALTH_INTERVAL_S)
            done = log_path.read_text(errors="replace").count("/stats.json")
            progress.update(task, completed=done)
            if done > finished and not progress.console.is_terminal:  # no bar without a terminal: a line per run
                LOG.info("helm-run: %d of %d runs finished", done, total)
            finished = done
            if server is not None and server.process.poll() is not None:
                raise HelmRunError(
                    f"the server {exit_description(server.process.returncode)} during helm-run\n"
                    f"--- server log ({server.log_path}) ---\n{server.log_tail()}"
                )
            failures = 0 if _healthy(base_url) else failures + 1
            if failures >= _HEALTH_FAILURES_ALLOWED:
                raise HelmRunError(f"the server at {base_url} stopped answering /health during helm-run")


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _failure_message(log_path: Path, conf_path: Path, returncode: int) -> str:
    log = log_path.read_text(errors="replace")
    if offline := download_failure("helm-run", conf_path, log):
        return f"{offline}\nFull log: {log_path}"
    tail = "\n".join(log.splitlines()[-25:])
    return f"helm-run {exit_description(returncode)}\n--- helm-run log ({log_path}) ---\n{tail}"


def download_failure(program: str, conf_path: Path, log: str) -> str | None:
    """What to say when `program`'s output `log` shows a failed download and the conf has scenarios that need the
    internet (helm-run, or crfm-helm building the instances for decontaminate); None for any other failure."""
    online = sorted(conf_scenarios(conf_path) - OFFLINE_SCENARIOS)
    offline_lines = [line.strip() for line in log.splitlines() if _OFFLINE_SIGNS.search(line)]
    if not (online and offline_lines):
        return None
    return (
        f"{program} could not download the datasets of {', '.join(online)}: these scenarios need the internet "
        f"(only {', '.join(sorted(OFFLINE_SCENARIOS))} run offline; try --conf quick).\n"
        f"Last download error: {offline_lines[-1]}"
    )


def _summarize(suite: str, out_dir: Path) -> None:
    log_path = out_dir / "logs" / f"{suite}.helm-summarize.log"
    command = [
        str(helm_executable("helm-summarize")),
        "--suite",
        suite,
        "--output-path",
        str(out_dir / "benchmark_output"),
        "--local-path",
        str(out_dir / "prod_env"),
    ]
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=out_dir, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise HelmRunError(f"helm-summarize failed with exit code {result.returncode}\n{tail}")


def run_helm(
    *,
    model: str | None,
    url: str | None,
    conf_path: Path,
    suite: str,
    out_dir: Path,
    server_args: Sequence[str] = (),
    max_eval_instances: int = DEFAULT_MAX_EVAL_INSTANCES,
) -> SuiteScores:
    """Serve one model (or reach the server at `url`), run helm-run and helm-summarize, read back the scores.

    Args:
        model: what the server loads (hub id or local directory; None: the embedded default). Ignored with url.
        url: a running server to evaluate instead of starting one.
        conf_path: HELM conf file (see `prepare_conf`).
        suite: HELM suite name; results land in `out_dir/benchmark_output/runs/<suite>/`.
        out_dir: HELM's output root (benchmark_output/, prod_env/, logs/).
        server_args: extra `python -m llmkit.server` flags (--dtype, --quantization, --adapter, ...).
        max_eval_instances: helm-run's --max-eval-instances, for entries that set no count themselves.
    """
    out_dir = out_dir.resolve()  # helm-run runs inside it
    suite_dir = out_dir / "benchmark_output" / "runs" / suite
    try:
        with serve(model, url, server_args, log_path=out_dir / "logs" / f"{suite}.server.log") as (base_url, server):
            wall_s = _helm_run(
                conf_path=conf_path,
                suite=suite,
                base_url=base_url,
                server=server,
                out_dir=out_dir,
                max_eval_instances=max_eval_instances,
            )
    except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, or SIGTERM (the CLI's exit_on_sigterm)
        finished = remove_unfinished(suite_dir)
        code = interrupted_exit_code(err)
        message = (
            f"interrupted: {finished} of the suite's runs had finished; HELM's output so far is in {suite_dir}"
            if finished
            else "interrupted before a run of the suite had finished"
        )
        stopped = HelmRunInterrupted(message, 1 if code is None else code)
        stopped.partial = _finished_runs(out_dir, suite, model, url)
        raise stopped from None
    except HelmRunError as err:  # the server died, helm-run failed: what finished is kept, and said
        remove_unfinished(suite_dir)
        err.partial = _finished_runs(out_dir, suite, model, url)
        raise
    return load_suite(out_dir / "benchmark_output", suite, label=_label(model, url), wall_s=wall_s)


def _finished_runs(out_dir: Path, suite: str, model: str | None, url: str | None) -> SuiteScores | None:
    try:
        return load_suite(out_dir / "benchmark_output", suite, label=_label(model, url))
    except HelmReportError:  # no run had finished
        return None


def _label(model: str | None, url: str | None) -> str:
    if url:  # what the server said it serves, so that a saved report still names the model
        try:
            health = httpx.get(f"{url.rstrip('/')}/health", timeout=10).json()
            served = " + ".join(str(health[key]) for key in ("model", "adapter") if health.get(key))
        except (httpx.HTTPError, ValueError, AttributeError):
            served = ""
        return f"{url} ({served})" if served else url
    return model or f"default model ({DEFAULT_MODEL_ID.split('/')[-1]})"


def remove_unfinished(suite_dir: Path) -> int:
    """What a stopped helm-run leaves: the finished runs stay; the folders of runs that had written nothing go, and
    the suite's folder with them when nothing is left (a rerun of the same --suite was refused as having results).
    Returns how many runs had finished."""
    if not suite_dir.is_dir():
        return 0
    finished = len(list(suite_dir.glob("*/stats.json")))
    for run_dir in suite_dir.glob("*/"):
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
    if not any(suite_dir.iterdir()):
        suite_dir.rmdir()
    return finished
