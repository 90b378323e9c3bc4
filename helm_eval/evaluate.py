"""`llmkit helm-eval`: one model, or two side by side (--compare), on one conf; then the report.

Both models of a comparison are served with the same server flags and scored on the same conf file.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from llmkit.core.files import check_folder_target, user_path
from llmkit.core.models import is_hub_id
from llmkit.helm_eval.confgen import DEFAULT_TASK_LIST
from llmkit.helm_eval.report import Report, write_report
from llmkit.helm_eval.run import (
    DEFAULT_MAX_EVAL_INSTANCES,
    HelmRunError,
    HelmUsageError,
    check_run_specs,
    check_url,
    prepare_conf,
    remove_unfinished,
    run_helm,
)
from llmkit.helm_eval.setup import helm_setup
from llmkit.helm_eval.summary import SuiteScores

LOG = logging.getLogger(__name__)
_SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class EvalResult(BaseModel):
    conf_path: Path
    suites: list[SuiteScores]
    report: Report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", Path(text).name or text).strip("-").lower()[:40] or "model"


def helm_eval(
    *,
    model: str | None = None,
    url: str | None = None,
    compare: str | None = None,
    conf: str = DEFAULT_TASK_LIST,
    max_eval_instances: int | None = None,
    budget: int | None = None,
    suite: str | None = None,
    server_args: Sequence[str] = (),
    out_dir: Path = Path("helm-results"),
    command: str = "",
) -> EvalResult:
    """Evaluate `model` (or the server at `url`), and `compare` beside it, on a conf; write the report.

    Args:
        model: hub id or local model directory to serve (None: the embedded default model).
        url: evaluate the running server there instead of starting one.
        compare: a second model, served with the same flags and scored on the same conf.
        conf: `quick`, `open`, a task-list YAML, or a HELM .conf file.
        max_eval_instances: at most this many instances per run (a .conf file's own counts are lowered to it).
        budget: total instances for a generated conf (default: the task list's own).
        suite: HELM suite name (default: conf, model and time); a comparison appends -1-<model>, -2-<model>.
        server_args: extra `python -m llmkit.server` flags for every server started.
        out_dir: where HELM's output, the conf, logs and reports go.
        command: the command line, quoted in the report.
    """
    if url and (model or compare):
        raise HelmUsageError("--url evaluates a running server: give either --url or --model/--compare")
    if url and server_args:
        raise HelmUsageError(
            f"--url evaluates a running server, which {' '.join(server_args)} cannot change: they are flags for a "
            "server helm-eval starts"
        )
    if suite is not None and not _SUITE_NAME.fullmatch(suite):
        raise HelmUsageError(f"--suite {suite!r}: use letters, digits, '.', '_' and '-' (it names folders and files)")
    out_dir = out_dir.resolve()
    try:
        check_folder_target(out_dir)
    except OSError as err:
        raise HelmRunError(f"--out {out_dir}: {err}; give a folder you can write in (created if missing)") from None
    targets = [model] + ([compare] if compare else [])
    for flag, target in zip(("--model", "--compare"), targets, strict=False):
        _check_servable(flag, target)  # now, not after the first model's evaluation
    if url:
        check_url(url)  # before the set-up and the conf: an unreachable server leaves nothing behind
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = suite or f"{Path(conf).stem}-{_slug(url or model or 'default') if not compare else 'compare'}-{stamp}"
    suite_names = (
        [name] if len(targets) == 1 else [f"{name}-{i + 1}-{_slug(t or 'default')}" for i, t in enumerate(targets)]
    )
    for suite_name in suite_names:  # the report reads every run of the suite's folder: old ones would mix in
        suite_dir = out_dir / "benchmark_output" / "runs" / suite_name
        remove_unfinished(suite_dir)  # the empty folders an older version left when stopped are not results
        if suite_dir.exists():
            raise HelmRunError(
                f"suite {suite_name} already has results in {suite_dir}: give another --suite, or remove that folder"
            )
    helm_setup()  # idempotent: a stamp check when crfm-helm is already there
    conf_path = prepare_conf(conf, out_dir, name, budget=budget, cap=max_eval_instances)
    check_run_specs(conf_path)  # an unknown scenario: said now, not once a server has started
    results = []
    for target, suite_name in zip(targets, suite_names, strict=True):
        LOG.info("HELM suite %s: %s on %s", suite_name, url or target or "the default model", conf_path)
        try:
            scores = run_helm(
                model=target,
                url=url,
                conf_path=conf_path,
                suite=suite_name,
                out_dir=out_dir,
                server_args=server_args,
                max_eval_instances=max_eval_instances or DEFAULT_MAX_EVAL_INSTANCES,
            )
        except HelmRunError as err:  # --compare's first model stays worth a look
            err.finished = results
            raise
        results.append(scores)
    report = write_report(results, out_dir, name, command)
    return EvalResult(conf_path=conf_path, suites=results, report=report)


def _check_servable(flag: str, target: str | None) -> None:
    """A model the server can be pointed at: a model folder, or a hub id (downloaded when served)."""
    if target is None:
        return
    path = user_path(target)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HelmRunError(f"{flag} {target}: the folder holds no config.json (an adapter goes in --adapter)")
    elif path.exists() or not is_hub_id(target):
        raise HelmRunError(f"{flag} {target}: no such model folder, and not a hub id (owner/name)")
