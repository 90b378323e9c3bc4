"""Score tables from HELM's output: one row per run (main metric, instances, mean inference time).

Reads `benchmark_output/runs/<suite>/<run>/{run_spec,stats,scenario_state}.json`; the main metric of a run
comes from the `schema.json` that helm-summarize writes beside them (each run group's `main_name`; before it
has, from HELM's own schema_classic.yaml it is written from), falling back to exact_match for groups the schema
does not list (simple_mcqa, big_bench).
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from llmkit.core.files import write_atomic

LOG = logging.getLogger(__name__)

FALLBACK_METRIC = "exact_match"


class HelmReportError(RuntimeError):
    """HELM's output for a suite is missing or unreadable."""


class RunScore(BaseModel):
    run: str  # HELM's run name, e.g. simple_mcqa:model=neurips_local
    metric: str
    score: float | None  # None: the metric is absent (e.g. the run failed its metrics)
    instances: int
    requests: int
    mean_request_s: float | None
    # The metric per instance of the split scored (instance id → value): what a paired comparison resamples.
    per_instance: dict[str, float] = {}


class SuiteScores(BaseModel):
    suite: str
    label: str  # what was evaluated: the model, or the server URL
    runs_dir: Path
    rows: list[RunScore]
    wall_s: float | None = None  # helm-run's wall-clock time, when known

    @property
    def requests(self) -> int:
        return sum(row.requests for row in self.rows)


def _main_metrics(suite_dir: Path) -> dict[str, tuple[str, str]]:
    """Run group → (main metric, split), from the schema.json helm-summarize wrote; before it has (a run stopped
    by Ctrl-C), from the schema it writes that from, HELM's own schema_classic.yaml; empty without either."""
    schema_path = suite_dir / "schema.json"
    if schema_path.is_file():
        groups = json.loads(schema_path.read_text()).get("run_groups", [])
    elif (packaged := _packaged_schema()) is not None:
        import yaml

        groups = yaml.safe_load(packaged.read_text()).get("run_groups", [])
    else:
        return {}
    return {
        group["name"]: (group["environment"]["main_name"], group["environment"].get("main_split", "test"))
        for group in groups
        if "main_name" in group.get("environment", {})
    }


def _packaged_schema() -> Path | None:
    from llmkit.helm_eval.setup import helm_venv

    try:
        site = helm_venv().path
    except Exception:  # no HELM venv here: the fallback metric it is
        return None
    return next(site.glob("lib/python*/site-packages/helm/benchmark/static/schema_classic.yaml"), None)


def _stat(stats: list[dict], name: str, split: str) -> dict | None:
    for stat in stats:
        key = stat["name"]
        if key["name"] == name and key.get("split") == split and "perturbation" not in key and "sub_split" not in key:
            return stat
    return None


def _run_score(run_dir: Path, main_metrics: dict[str, tuple[str, str]]) -> RunScore:
    groups = json.loads((run_dir / "run_spec.json").read_text()).get("groups", [])
    stats = json.loads((run_dir / "stats.json").read_text())
    # Groups go from general to specific (synthetic_reasoning, synthetic_reasoning_natural): the most specific
    # group whose main metric the run has wins.
    candidates = [main_metrics[g] for g in reversed(groups) if g in main_metrics]
    present = [c for c in candidates if _stat(stats, *c) or _stat(stats, c[0], "valid")]
    metric, split = (present or candidates or [(FALLBACK_METRIC, "test")])[0]
    if _stat(stats, "num_instances", split) is None:  # some scenarios only have a valid split
        split = "valid"
    score, instances = _stat(stats, metric, split), _stat(stats, "num_instances", split)
    per_instance = _per_instance(run_dir, metric, split)
    states = json.loads((run_dir / "scenario_state.json").read_text())["request_states"]
    times = [s["result"]["request_time"] for s in states if s.get("result") and s["result"].get("request_time")]
    return RunScore(
        run=run_dir.name,
        metric=metric,
        score=score["mean"] if score and score["count"] else None,
        instances=int(instances["mean"]) if instances else 0,
        requests=len(states),
        mean_request_s=sum(times) / len(times) if times else None,
        per_instance=per_instance,
    )


def _per_instance(run_dir: Path, metric: str, split: str) -> dict[str, float]:
    """`metric` per instance (and train trial, when a run has several) from per_instance_stats.json."""
    path = run_dir / "per_instance_stats.json"
    if not path.is_file():
        return {}
    values = {}
    for entry in json.loads(path.read_text()):
        stat = _stat(entry["stats"], metric, split)
        if stat and stat["count"]:
            trial = entry.get("train_trial_index", 0)
            values[entry["instance_id"] + (f"#{trial}" if trial else "")] = stat["mean"]
    return values


class Difference(BaseModel):
    """A paired difference of means (b − a) over the instances both runs scored, with its bootstrap interval."""

    delta: float
    low: float | None  # 2.5th percentile of the resampled differences (None: too few instances for one)
    high: float | None  # 97.5th percentile
    instances: int

    def text(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.delta:+.3f} (n={self.instances}, no interval)"
        return f"{self.delta:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


BOOTSTRAP_RESAMPLES = 10_000
# Below this many paired instances a percentile bootstrap has only a handful of distinct resample means and its
# interval is far narrower than the truth (from 1 instance it is a single point), so none is shown.
BOOTSTRAP_MIN_INSTANCES = 10


def paired_bootstrap(a: dict[str, float], b: dict[str, float], seed: int = 0) -> Difference | None:
    """95% percentile-bootstrap interval of mean(b) − mean(a), resampling the shared instances (None: no shared
    instance; no interval below BOOTSTRAP_MIN_INSTANCES). Paired, because both models answered the same instances:
    the per-instance difference is resampled."""
    import numpy as np

    shared = sorted(a.keys() & b.keys())
    if not shared:
        return None
    diffs = np.array([b[key] - a[key] for key in shared])
    if len(diffs) < BOOTSTRAP_MIN_INSTANCES:
        return Difference(delta=float(diffs.mean()), low=None, high=None, instances=len(diffs))
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(BOOTSTRAP_RESAMPLES, len(diffs)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Difference(delta=float(diffs.mean()), low=float(low), high=float(high), instances=len(shared))


def load_suite(benchmark_output: Path, suite: str, *, label: str = "", wall_s: float | None = None) -> SuiteScores:
    """The scores of every run of `suite` under HELM's output folder."""
    suite_dir = benchmark_output / "runs" / suite
    run_dirs = sorted(path.parent for path in suite_dir.glob("*/stats.json"))
    if not run_dirs:
        raise HelmReportError(f"no finished runs in {suite_dir} (no */stats.json)")
    main_metrics = _main_metrics(suite_dir)
    rows = [_run_score(run_dir, main_metrics) for run_dir in run_dirs]
    return SuiteScores(suite=suite, label=label or suite, runs_dir=suite_dir, rows=rows, wall_s=wall_s)


def _aligned(suites: list[SuiteScores]) -> list[tuple[str, str, list[RunScore | None]]]:
    """(run, metric, one score per suite) for the union of runs, in first-seen order."""
    names = list(dict.fromkeys(row.run for suite in suites for row in suite.rows))
    by_suite = [{row.run: row for row in suite.rows} for suite in suites]
    aligned = []
    for name in names:
        rows = [rows_by_run.get(name) for rows_by_run in by_suite]
        metric = next(row.metric for row in rows if row is not None)
        aligned.append((name, metric, rows))
    return aligned


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def short_run_name(run: str) -> str:
    """simple_mcqa:model=neurips_local,max_eval_instances=20 → simple_mcqa (the model is always neurips/local)."""
    scenario, _, args = run.partition(":")
    kept = [arg for arg in args.split(",") if arg and not arg.startswith(("model=", "max_eval_instances="))]
    return scenario + (":" + ",".join(kept) if kept else "")


def legend(suites: list[SuiteScores]) -> str:
    """What the numbered columns of a comparison stand for."""
    return "; ".join(f"[{i}] {suite.label}" for i, suite in enumerate(suites, 1)) if len(suites) > 1 else ""


def table_rows(suites: list[SuiteScores]) -> tuple[list[str], list[list[str]]]:
    """Header and rows; with two suites or more (columns [1], [2], ... as `legend` says): scores side by side,
    the change vs [1], then the times."""
    if len(suites) == 1:
        header = ["run", "metric", "score", "instances", "mean s/request"]
    else:
        numbers = [f"[{i}]" for i in range(1, len(suites) + 1)]
        deltas = [f"Δ {n}−[1] [95% CI]" for n in numbers[1:]]
        header = ["run", "metric", *[f"score {n}" for n in numbers], *deltas]
        header += ["instances", *[f"s/request {n}" for n in numbers]]
    body = []
    for name, metric, rows in _aligned(suites):
        first = rows[0]
        deltas = [_delta(first, row) for row in rows[1:]]
        instances = "/".join(dict.fromkeys(str(row.instances) for row in rows if row))
        body.append(
            [short_run_name(name), metric, *[_fmt(row.score if row else None) for row in rows], *deltas, instances]
            + [_fmt(row.mean_request_s if row else None, 2) for row in rows]
        )
    return header, body


def difference(first: RunScore | None, row: RunScore | None) -> Difference | None:
    """row − first on the instances both scored, when both have per-instance scores."""
    if not first or not row or first.metric != row.metric:
        return None
    return paired_bootstrap(first.per_instance, row.per_instance)


def differences(suites: list[SuiteScores]) -> dict[str, dict[str, dict | None]]:
    """Per run, each later suite's paired difference from the first (for the JSON report)."""
    return {
        run: {
            suites[i].label: (found.model_dump() if (found := difference(rows[0], row)) else None)
            for i, row in enumerate(rows[1:], 1)
        }
        for run, _, rows in _aligned(suites)
    }


def _delta(first: RunScore | None, row: RunScore | None) -> str:
    if not first or not row or None in (first.score, row.score):
        return "–"
    found = difference(first, row)
    return found.text() if found else f"{row.score - first.score:+.3f}"


_TERMINAL_HEADERS = {"instances": "n", "mean s/request": "mean\ns/request"}
RUN_NAME_LINES = 3  # past this, a comparison in a narrow terminal gives its s/request columns up


def rich_table(suites: list[SuiteScores], title: str) -> ScoreTable:
    """The scores as a rich renderable titled `title`; its text (model labels, run names) is escaped, not markup."""
    return ScoreTable(suites, title)


class ScoreTable:
    """The score table, laid out once the console's width is known, an 80-column pipe's included.

    Only the run names fold (the five synthetic_reasoning runs differ only at the end of their names); numbers stay
    whole, and a change's interval goes under it. A comparison keeps a s/request column per model where run names
    then fold into RUN_NAME_LINES lines at most; narrower, the caption gives each model's mean instead (the Markdown
    report has them per run).
    """

    def __init__(self, suites: list[SuiteScores], title: str) -> None:
        self.suites, self.title = suites, title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table(times=True)
        if len(self.suites) > 1:
            longest = max(len(short_run_name(row.run)) for suite in self.suites for row in suite.rows)
            natural = Measurement.get(console, options.update_width(10_000), table).maximum
            if natural - longest + math.ceil(longest / RUN_NAME_LINES) > options.max_width:
                table = self.table(times=False)
        yield table

    def table(self, *, times: bool) -> Table:
        """The table, with a s/request column per model, or (times=False, comparing) their means in the caption."""
        header, body = table_rows(self.suites)
        caption = legend(self.suites)
        if not times and (count := len(self.suites)) > 1:
            header, body = header[:-count], [cells[:-count] for cells in body]
            caption = "; ".join(
                f"[{i}] {suite.label}: {_mean_request_text(suite)}" for i, suite in enumerate(self.suites, 1)
            )
        table = Table(title=escape(self.title), caption=escape(caption) or None)
        table.add_column(escape(header[0]), overflow="fold", ratio=1)  # the width the numbers leave, folded within it
        table.add_column(escape(header[1]), overflow="fold")  # the metric: folded too, where the run name is short
        for name in header[2:]:  # "score" over "[1]": a header no wider than its numbers
            delta = name.startswith("Δ")
            short = _TERMINAL_HEADERS.get(name, "\n[".join(name.rsplit(" [", 1)))
            table.add_column(escape(short), no_wrap=not delta, width=len("[+0.000, +0.000]") if delta else None)
        for cells in body:
            table.add_row(*map(escape, map(_terminal_cell, cells)))
        return table


def _terminal_cell(cell: str) -> str:
    """A change over its interval (or its note of none): +0.750 [+0.400, +1.000] in two lines, each number whole."""
    if not cell.startswith(("+", "-")) or " " not in cell:
        return cell
    return cell.replace(" ", "\n", 1).replace(", no interval)", ", no CI)")


def _mean_request_text(suite: SuiteScores) -> str:
    timed = [row for row in suite.rows if row.mean_request_s is not None]
    if not (requests := sum(row.requests for row in timed)):
        return "no request timed"
    return f"{sum(row.mean_request_s * row.requests for row in timed) / requests:.2f} s/request"


def markdown_table(suites: list[SuiteScores]) -> str:
    header, body = table_rows(suites)
    lines = [legend(suites), ""] if len(suites) > 1 else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def bar_chart(suites: list[SuiteScores], path: Path, title: str) -> Path:
    """Grouped horizontal bars, one group per run and one bar per suite, as a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = chart_figure(suites, title)
    png = io.BytesIO()  # rendered in memory, then written whole (a chart is a few hundred KB)
    try:
        fig.savefig(png, format="png", dpi=110)
    finally:
        plt.close(fig)
    return write_atomic(path, png.getvalue(), parents=True)


def chart_figure(suites: list[SuiteScores], title: str):  # -> matplotlib Figure, imported lazily
    """The chart of `bar_chart`: each bar labelled with its score, and a later suite's with its change vs the first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aligned = _aligned(suites)
    height = 0.8 / len(suites)
    # constrained: the legend gets its own row under the x-axis label (placed below the axes by hand, it covered it)
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.45 * len(aligned) * len(suites)), layout="constrained")
    for i, suite in enumerate(suites):
        widths = [(rows[i].score or 0.0) if rows[i] else 0.0 for _, _, rows in aligned]
        positions = [k + i * height for k in range(len(aligned))]
        ax.barh(positions, widths, height=height, label=suite.label)
        for position, width, (_, _, rows) in zip(positions, widths, aligned, strict=True):
            text = _bar_text(rows[i], difference(rows[0], rows[i]) if i else None)
            inside = width > 0.62  # a long bar holds its text, at its end; a short one has it beside
            style = {"ha": "right", "color": "white"} if inside else {"ha": "left", "color": "black"}
            ax.text(width - 0.01 if inside else width + 0.01, position, text, va="center", fontsize=8, **style)
    ax.set_yticks([k + height * (len(suites) - 1) / 2 for k in range(len(aligned))])
    ax.set_yticklabels([f"{short_run_name(name)}\n({metric})" for name, metric, _ in aligned])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("main metric")
    ax.set_title(title, fontsize=10, wrap=True)
    fig.legend(loc="outside lower center", ncol=len(suites), fontsize=8, frameon=False)
    return fig


def _bar_text(row: RunScore | None, found: Difference | None) -> str:
    """A bar's score as the table shows it: a 0 draws no bar, and without its number looked like a missing run."""
    score = "not run" if row is None else "no score" if row.score is None else _fmt(row.score)
    return score + (f"   Δ {found.text()}" if found else "")  # the paired change vs the first, 95% interval
