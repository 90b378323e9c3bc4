"""`llmkit decontaminate CONFIG --conf CONF`: does a config's training data contain HELM instances the conf scores?

n-gram overlap, counted the way GPT-3's and lm-eval's decontamination count it: a text is its lower-cased words
(punctuation dropped), and an instance overlaps a training row when both hold the same window of n words (13 by
default); an instance shorter than n words overlaps a row that holds all of it, if it has MIN_WORDS words (a
shorter one is counted as not checked). An instance's text is its input,
and its input followed by each correct reference (a row may hold the question alone, or with its answer).
- Instances: every eval-split instance of each run entry in the conf (all
  of them, not the sample a capped helm-run draws), built by crfm-helm itself in its venv (helm_eval/instances.py).
- Training rows: every string of every row of every dataset in the config, as its file holds it (a prompt
  template adds no words of an instance; a hub dataset is downloaded as training would): llmkit.data.row_texts.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llmkit.core.files import sha256_file, write_atomic
from llmkit.helm_eval.setup import helm_executable, require_helm

NGRAM = 13  # GPT-3's window; lm-eval's decontamination uses it too
# An instance shorter than the window overlaps a row holding all of it, if it has at least this many words (GPT-3's
# smallest window): "21", a whole simple_classification instance, is in any row that mentions the number.
MIN_WORDS = 8
SHOWN_OVERLAPS = 20  # overlapping instances the report's table lists (the JSON holds all)
INSTANCES_SCRIPT = Path(__file__).with_name("instances.py")
_WORD = re.compile(r"\w+")


class Overlap(BaseModel):
    run: str
    instance_id: str
    split: str
    source: str  # the training dataset (file or hub id)
    row: int  # 0-based row of that dataset
    words: str  # the shared window


class RunOverlap(BaseModel):
    run: str
    instances: int
    overlapping: int
    too_short: int = 0  # under MIN_WORDS words: not checked


class DecontaminationReport(BaseModel):
    config: str
    conf: str
    ngram: int
    training_rows: int
    runs: list[RunOverlap]
    overlaps: list[Overlap]  # the first overlapping row found for each overlapping instance

    @property
    def min_words(self) -> int:
        """The fewest words an instance needs to be checked: the window, or MIN_WORDS when the window is longer."""
        return min(self.ngram, MIN_WORDS)

    @property
    def too_short(self) -> int:
        """Instances under MIN_WORDS words (input and references together): not checked."""
        return sum(run.too_short for run in self.runs)

    @property
    def clean(self) -> bool:
        return not self.overlaps

    def sentence(self, path: Path) -> str:
        """The verdict, with where the JSON report is."""
        total = sum(run.instances for run in self.runs)
        short = f" ({self.too_short} under {self.min_words} words not checked)" if self.too_short else ""
        return (
            f"{'✓' if self.clean else '✗'} {len(self.overlaps)} of {total} HELM eval instances{short} share a "
            f"{self.ngram}-word window with the {self.training_rows} training rows of {self.config}. Report: {path}"
        )


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def windows(tokens: list[str], n: int) -> Iterator[tuple[str, ...]]:
    """Every n-word window; a text shorter than n is one window of itself."""
    if len(tokens) < n:
        if tokens:
            yield tuple(tokens)
        return
    for at in range(len(tokens) - n + 1):
        yield tuple(tokens[at : at + n])


def helm_instances(conf_path: Path, work_dir: Path) -> list[dict[str, Any]]:
    """The conf's eval instances as crfm-helm builds them, cached under work_dir by the conf's hash."""
    require_helm()
    out = work_dir / "instances" / f"{sha256_file(conf_path)[:16]}.jsonl"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        command = [str(helm_executable("python")), str(INSTANCES_SCRIPT), str(conf_path), str(partial)]
        command.append(str(work_dir / "benchmark_output"))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # here: the CLI imports this module at start for NGRAM
            from llmkit.helm_eval.run import HelmRunError, download_failure

            partial.unlink(missing_ok=True)
            if offline := download_failure("crfm-helm", conf_path, result.stderr):
                raise HelmRunError(offline)
            tail = "\n".join(result.stderr.splitlines()[-15:])
            raise HelmRunError(f"crfm-helm could not build the instances of {conf_path}:\n{tail}")
        partial.replace(out)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def decontaminate(
    rows: Iterable[tuple[str, int, str]], config: str, conf_path: Path, work_dir: Path, ngram: int = NGRAM
) -> DecontaminationReport:
    """Every instance of the conf checked against every training row: (dataset, row number, text) as
    `llmkit.data.row_texts(cfg)` yields them for the config at `config`."""
    instances = helm_instances(conf_path, work_dir)
    index: dict[tuple[str, ...], list[int]] = {}  # window -> instances holding it
    short = set()
    for number, instance in enumerate(instances):
        texts = [instance["input"], *(f"{instance['input']} {reference}" for reference in instance["references"])]
        shortest = min(ngram, MIN_WORDS)  # a text shorter than the window counts whole, if it has that many words
        found = {window for text in texts for window in windows(words(text), ngram) if len(window) >= shortest}
        if not found:
            short.add(number)
        for window in found:
            index.setdefault(window, []).append(number)
    lengths = sorted({len(window) for window in index})  # n, and the lengths of instances shorter than n
    first: dict[int, Overlap] = {}
    read = 0
    for source, row, text in rows:
        read += 1
        tokens = words(text)
        for length in lengths:
            for window in windows(tokens, length) if len(tokens) >= length else ():
                for number in index.get(window, ()):
                    if number not in first:
                        instance = instances[number]
                        first[number] = Overlap(
                            run=instance["run"],
                            instance_id=instance["id"],
                            split=instance["split"],
                            source=source,
                            row=row,
                            words=" ".join(window),
                        )
    runs: dict[str, RunOverlap] = {}
    for number, instance in enumerate(instances):
        entry = runs.setdefault(instance["run"], RunOverlap(run=instance["run"], instances=0, overlapping=0))
        entry.instances += 1
        entry.overlapping += number in first
        entry.too_short += number in short
    return DecontaminationReport(
        config=config,
        conf=str(conf_path),
        ngram=ngram,
        training_rows=read,
        runs=list(runs.values()),
        overlaps=[first[number] for number in sorted(first)],
    )


def write_report(report: DecontaminationReport, path: Path) -> Path:
    """The report as JSON, written whole (its folder created)."""
    return write_atomic(path, report.model_dump_json(indent=2), parents=True)


def report_tables(report: DecontaminationReport) -> list:
    """Rich tables of the report: the overlap per HELM run, then the first overlapping instances (if any)."""
    from rich.markup import escape
    from rich.table import Table

    from llmkit.helm_eval.summary import short_run_name

    table = Table(title=escape(f"{report.ngram}-word overlap with {report.config}"))
    table.add_column("HELM run", overflow="fold")  # runs of one scenario differ only at the end of their names
    table.add_column("eval instances")
    table.add_column("overlapping")
    table.add_column(f"under {report.min_words} words")  # not checked: the sentence says so
    for run in report.runs:
        table.add_row(escape(short_run_name(run.run)), str(run.instances), str(run.overlapping), str(run.too_short))
    tables = [table]
    if shown := report.overlaps[:SHOWN_OVERLAPS]:
        title = f"Overlapping instances (first {SHOWN_OVERLAPS})"
        rows = Table("run", "instance", "training row", "shared words", title=title)
        for hit in shown:
            cells = (short_run_name(hit.run), f"{hit.instance_id} ({hit.split})", f"{hit.source}:{hit.row}", hit.words)
            rows.add_row(*(escape(cell) for cell in cells))
        tables.append(rows)
    return tables
