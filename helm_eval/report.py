"""What `llmkit helm-eval` leaves behind: a markdown table, a PNG chart, JSON, and the open-eval time projection."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

from pydantic import BaseModel

from helm_eval import confgen
from helm_eval.summary import SuiteScores, bar_chart, markdown_table, write_text

LOG = logging.getLogger(__name__)

TIME_LIMIT_S = 2 * 3600  # challenge rule: the whole HELM run of the sample conf within 2 hours on the track GPU


class Projection(BaseModel):
    """The open suite's duration at a per-request pace measured here, and what that pace was measured from."""

    open_requests: int
    seconds_per_request: float
    projected_s: float
    limit_s: int = TIME_LIMIT_S
    basis: str  # where seconds_per_request comes from, as a phrase after "s/request"
    caveat: str  # why the real run will take longer or shorter

    @property
    def ratio(self) -> float:
        return self.projected_s / self.limit_s

    def verdict(self) -> str:
        within = "within" if self.ratio <= 1 else f"{self.ratio:.1f}× over"
        return (
            f"about {_duration(self.projected_s)}, {within} the challenge's {_duration(self.limit_s)} limit "
            f"({self.ratio:.0%} of it)"
        )

    def sentence(self) -> str:
        return (
            f"Open evaluation ({self.open_requests} requests) at {self.seconds_per_request:.2f} s/request "
            f"{self.basis}: {self.verdict()}. {self.caveat}"
        )


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def open_suite_requests() -> int:
    """Requests in the open suite: one per instance (its adapters are generation and joint multiple choice)."""
    entries = confgen.generate(confgen.load_task_list("open"))
    return sum(entry.max_eval_instances or 0 for entry in entries)


def project(seconds_per_request: float, *, basis: str, caveat: str) -> Projection:
    """The open suite's duration at `seconds_per_request`; `basis` and `caveat` say what that pace is worth."""
    requests = open_suite_requests()
    projected_s = seconds_per_request * requests
    return Projection(
        open_requests=requests,
        seconds_per_request=seconds_per_request,
        projected_s=projected_s,
        basis=basis,
        caveat=caveat,
    )


def project_open_eval(scores: SuiteScores) -> Projection | None:
    """From a helm-run: its wall time / requests, which includes HELM's overhead and its 4-way concurrency."""
    if not scores.wall_s or not scores.requests:
        return None
    return project(
        scores.wall_s / scores.requests,
        basis=f"measured here ({platform.node()})",
        caveat="The open suite's prompts are longer (few-shot) and gsm/summarization generate more tokens than the "
        "quick suite, so take this as a lower bound.",
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
    markdown = write_text(reports / f"{name}.md", "\n".join(lines) + "\n")
    chart = bar_chart(suites, reports / f"{name}.png", f"HELM main metric per run: {name}")
    payload = {"suites": [suite.model_dump(mode="json") for suite in suites],
               "projections": {label: p.model_dump() for label, p in projections}}  # fmt: skip
    data = write_text(reports / f"{name}.json", json.dumps(payload, indent=2))
    return Report(markdown=markdown, chart=chart, data=data, projections=projections)
