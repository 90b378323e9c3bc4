"""What `llmkit helm-eval` leaves behind: a markdown table, a PNG chart, JSON, and the open-eval time projection."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

from pydantic import BaseModel

from llmkit.core.challenge import OPEN_SUITE_REQUESTS, OPEN_SUITE_RUNS, Projection, project
from llmkit.core.files import write_atomic
from llmkit.helm_eval.summary import SuiteScores, bar_chart, differences, markdown_table

LOG = logging.getLogger(__name__)


def project_open_eval(scores: SuiteScores) -> Projection | None:
    """From a helm-run: its wall time / requests, which includes HELM's overhead and its 4-way concurrency."""
    if not scores.wall_s or not scores.requests:
        return None
    per_run = scores.requests / max(1, len(scores.rows))
    open_per_run = OPEN_SUITE_REQUESTS / OPEN_SUITE_RUNS
    return project(
        scores.wall_s / scores.requests,
        basis=f"measured here ({platform.node()})",
        caveat="An order of magnitude: the open suite's prompts are longer (few-shot) and gsm/summarization "
        f"generate more tokens, which this pace leaves out, while helm-run's start-up of each run weighs more at "
        f"{per_run:.1f} requests a run here than at the open suite's {open_per_run:.0f}.",
    )


class Report(BaseModel):
    markdown: Path
    chart: Path
    data: Path
    projections: list[tuple[str, Projection]]


def write_report(suites: list[SuiteScores], out_dir: Path, name: str, command: str = "") -> Report:
    """reports/<name>.{md,png,json} under out_dir; scores side by side when there are several suites."""
    title = " vs ".join(suite.label for suite in suites)
    projections = [(suite.label, p) for suite in suites if (p := project_open_eval(suite))]
    lines = [f"# HELM: {title}", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [markdown_table(suites), ""]
    lines += [f"- {label}: {projection.sentence()}" for label, projection in projections]
    lines += [f"- HELM's output: `{suite.runs_dir}`" for suite in suites]
    reports = out_dir / "reports"
    markdown = write_atomic(reports / f"{name}.md", "\n".join(lines) + "\n", parents=True)
    chart = bar_chart(suites, reports / f"{name}.png", f"HELM main metric per run: {name}")
    payload = {
        "suites": [suite.model_dump(mode="json") for suite in suites],
        "differences": differences(suites),
        "projections": {label: p.model_dump() for label, p in projections},
    }
    data = write_atomic(reports / f"{name}.json", json.dumps(payload, indent=2), parents=True)
    return Report(markdown=markdown, chart=chart, data=data, projections=projections)
