"""The summary `llmkit submission` and `llmkit verify-submission` end with: one table, read at a glance.

Rows: the zip and its size, the track, the engine, the memory fit (the manifest's estimate against the card), where
the weights come from, the verification, the smoke test (each request kind with ✓/✗ and its time) and the open
evaluation's duration projected from the smoke test's request times (llmkit.core.challenge.project) against the
2-hour limit; with `training/` (TRAINING=1), the training time projected in its pins.json against the 24 hours.
Anything marked ✗ makes the exit status 1; a warning (!) does not.
"""

from __future__ import annotations

import re
import shlex
import zipfile
from pathlib import Path

from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llmkit.core.challenge import OPEN_SUITE_REQUESTS_NOTE, Projection, project
from llmkit.core.models import is_commit_sha
from llmkit.server.settings import EngineName
from llmkit.submit.manifest import MANIFEST_NAME, Manifest, WeightsSource
from llmkit.submit.smoke import SmokeReport, run_smoke
from llmkit.submit.verify import ZIP_READ_ERRORS

OK, FAIL, WARN, SKIP = Text("✓", "bold green"), Text("✗", "bold red"), Text("!", "bold yellow"), Text("-", "dim")
_DETAIL_CHARS = 36  # a smoke request's detail (completion, logprobs) is cut here: one line a row at 80 columns
_VERIFIED = "verify-submission: no problem"
# Words of a model name that mark a chat or instruction tune (SmolLM2-135M-Instruct, Llama-2-7b-chat-hf, gemma-2b-it).
_TUNED = {"instruct", "instruction", "chat", "it", "sft", "dpo", "rlhf", "orpo", "kto", "simpo"}


def projected_training_time(config: str | Path | None) -> list[str]:
    """A config's (default: the embedded one's) projected training time on each track, as sentences."""
    from llmkit.config import load_config
    from llmkit.config.plan import plan
    from llmkit.core.assets import DEFAULT_CONFIG

    return [t.sentence() for t in plan(load_config(config or DEFAULT_CONFIG)).training_time]


def summarize(
    zip_path: str | Path,
    *,
    problems: list[str],
    smoke: bool,
    built: bool = False,
    console: Console | None = None,
    training_time: list[str] | None = None,
) -> int:
    """Smoke-test the zip (when asked and `problems` is empty), print the summary; returns the exit status.

    Args:
        problems: what verify_submission found (printed by the caller); the smoke test is not run when there are any.
        smoke: run the smoke test (False: the summary says it was skipped).
        built: the zip was just written by `llmkit submission` (the closing line says it stays written).
        training_time: the config's projected training time per track (`llmkit submission` from a config); without
            it, the zip's training/pins.json says, if it has one.
    """
    console = console or Console()
    manifest = read_manifest(zip_path)
    report = run_smoke(zip_path) if smoke and not problems else None
    if report is not None and report.error:  # the server's log, for whoever fixes it; the summary has the cause
        Console(stderr=True).print(Text(f"The smoke test's server did not start: {report.error}", "red"))
    if problems:
        not_run = "not run: the checks failed"
    else:
        not_run = "skipped (--no-smoke / SMOKE=0)" if built else "skipped (run it with --smoke / SMOKE=1)"
    table = summary_table(Path(zip_path), manifest, problems, report, not_run=not_run, training_time=training_time)
    console.print(table)
    if manifest is not None and (warning := bundled_warning(manifest)):
        # soft_wrap: rich breaks no line (the terminal wraps on screen only), so a path or command stays whole
        console.print(Text(f"Warning: {warning}", "bold yellow"), soft_wrap=True)
    failures = _failures(manifest, problems, report)
    if failures:
        kept = " The zip stays written; rebuild after fixing it." if built else ""
        console.print(Text(f"✗ {zip_path}: " + "; ".join(failures) + "." + kept, "bold red"), soft_wrap=True)
        return 1
    smoke_note = "smoke test passed" if report is not None and not report.skipped else "smoke test skipped"
    console.print(Text(f"✓ {zip_path}: checks passed, {smoke_note}.", "bold green"), soft_wrap=True)
    return 0


def read_manifest(zip_path: str | Path) -> Manifest | None:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            return Manifest.model_validate_json(archive.read(MANIFEST_NAME))
    except (KeyError, ValidationError, *ZIP_READ_ERRORS):
        return None  # verify_submission reports why


def bundled_warning(manifest: Manifest) -> str | None:
    """What to do about bundled weights, or None when the image downloads them."""
    if not manifest.bundled_weights:
        return None
    model, adapter = manifest.model, manifest.adapter  # --bundle-weights bundles both
    uploads, variables = [], []
    for source, what, name, hub_id, placeholder, pin in [
        (model, "the merged model" if model.base_model else "the model", "<name>", "MODEL", "<hub id>", "REVISION"),
        (adapter, "the adapter", "<adapter name>", "ADAPTER", "<adapter hub id>", "ADAPTER_REVISION"),
    ]:
        if source is None or not source.bundled:
            continue
        if source.revision:  # bundled from the hub: the image can download it as it is
            variables.append(f"{hub_id}={shlex.quote(source.id)} {pin}={source.revision}")
        else:
            where = "" if uploads else " to the hub"
            uploads.append(f"{what}{where} (`hf upload <you>/{name} {_bundled_folder(source.id)}`)")
            variables.append(f"{hub_id}={placeholder} {pin}=<sha>")
    publish = f"Publish {' and '.join(uploads)} and build" if uploads else "Build it"
    return (
        "the weights are bundled in the zip. That is fine for self-hosting, but not accepted by the challenge: its "
        f"image must download them during `docker build`. {publish} with `make submission {' '.join(variables)}` "
        "(no BUNDLE=1)."
    )


def _bundled_folder(local: str) -> str:
    """The folder a bundled source came from, as a command's argument. The zip records a folder outside the
    checkout by its name alone (the same files give the same zip anywhere): then a placeholder says so."""
    return shlex.quote(local) if Path(local).is_dir() else f"<the {local} folder it was bundled from>"


def summary_table(
    zip_path: Path,
    manifest: Manifest | None,
    problems: list[str],
    report: SmokeReport | None,
    *,
    not_run: str = "",
    training_time: list[str] | None = None,
) -> Table:
    """The summary; `report` is None when the smoke test was not run, and `not_run` says why; `training_time` as
    `summarize` takes it."""
    table = Table(
        title=escape(f"Submission {zip_path.name}"),
        show_header=False,
        box=box.ROUNDED,
        title_style="bold",
        caption_justify="left",
        caption_style="dim",
    )
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("ok", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold")
    missing = "a folder, not a zip" if zip_path.is_dir() else "missing"
    size = _size(zip_path.stat().st_size) if zip_path.is_file() else missing
    table.add_row("zip", "", "", Text(f"{zip_path} ({size})"))
    if not zipfile.is_zipfile(zip_path):  # nothing in it to report on: verify's one problem says why
        table.add_row("checks", FAIL, "", Text(f"{len(problems)} problem(s), listed above"))
        return table
    if manifest is None:
        table.add_row("manifest", FAIL, "", Text(f"{MANIFEST_NAME} is missing or invalid"))
    else:
        memory = manifest.estimated_gpu_memory
        table.add_row("track", "", "", Text(f"{manifest.track.value} ({manifest.gpu})"))
        table.add_row("engine", "", "", Text(_engine(manifest)))
        table.add_row(
            "memory fit",
            OK if memory.fits else FAIL,
            "",
            Text(f"{memory.total_gib:.2f} of {memory.available_gib:.1f} GiB ({manifest.loading.value}, estimated)"),
        )
        table.add_row("weights", *_weights(manifest.model))
        tuned = [name for name in (manifest.model.base_model, manifest.model.id) if name and instruction_tuned(name)]
        if tuned:
            text = f"{tuned[0]} looks instruction-tuned: the challenge admits base models only"
            table.add_row("base model", WARN, "", Text(text))
        if manifest.adapter is not None:
            table.add_row("adapter", *_weights(manifest.adapter))
    table.add_row(
        "checks",
        FAIL if problems else OK,
        "",
        Text(f"{len(problems)} problem(s), listed above" if problems else _VERIFIED),
    )
    _smoke_rows(table, report, not_run)
    _docker_row(table, report)
    mark, verdict, projection = _projection(report, manifest)
    table.add_row("eval time", mark, "", verdict)
    table.add_row("training time", *_training_time(zip_path, manifest, training_time))
    if projection is not None:  # what the projection is worth, under the table rather than in a tall cell
        table.caption = (
            f"Eval time = {projection.open_requests} open-suite requests ({OPEN_SUITE_REQUESTS_NOTE}) × "
            f"{projection.seconds_per_request:.2f} s/request {projection.basis}. {projection.caveat}"
        )
    return table


def _engine(manifest: Manifest) -> str:
    if manifest.engine is EngineName.vllm:
        return f"vLLM {manifest.engine_version} (vLLM's own image)"
    return "built-in (transformers, continuous batching)"


def _weights(source: WeightsSource) -> tuple[Text, str, Text]:
    if source.bundled:
        return WARN, "", Text(f"bundled from {source.id}: not accepted by the challenge (below)")
    if not is_commit_sha(source.revision):
        why = "not pinned: only a full 40-hex commit sha pins the weights, REVISION=<commit>"
        return WARN, "", Text(f"{source.id} @ {source.revision or 'main'} ({why})")
    return OK, "", Text(f"{source.id} @ {source.revision} (downloaded by `docker build`)")


def instruction_tuned(model_id: str) -> bool:
    """The model's name (after its owner or folder) holds a word that marks a chat or instruction tune."""
    return bool(_TUNED & set(re.split(r"[^a-z0-9]+", model_id.lower().rsplit("/", 1)[-1])))


def _smoke_rows(table: Table, report: SmokeReport | None, not_run: str) -> None:
    if report is None:
        table.add_row("smoke test", SKIP, "", Text(f"smoke test: {not_run}"))
        return
    if report.skipped:
        table.add_row("smoke test", SKIP, "", Text(f"smoke test: not run: {report.skipped}"))
        return
    if not report.device:  # the server did not start: its one result says why
        [result] = report.results
        table.add_row("smoke test", FAIL, f"{result.seconds:.2f} s", Text(f"{result.name}: {result.detail}"))
        return
    where = f"its CMD, without Docker: healthy on {report.device}"
    if report.engine and not report.engine.startswith(EngineName.builtin.value):  # vLLM: which build stood in
        where += f" ({report.engine})"
    table.add_row("smoke test", OK, f"{report.startup_s:.1f} s", Text(where))
    if report.environment:
        table.add_row("  python", "", "", Text(report.environment))
    for result in report.results:
        detail = result.detail  # a failure in full; a completion or logprobs cut to keep the table compact
        if result.ok and len(detail) > _DETAIL_CHARS:
            detail = detail[: _DETAIL_CHARS - 1] + "…"
        table.add_row(f"  {result.name}", OK if result.ok else FAIL, f"{result.seconds:.2f} s", Text(detail))


def _docker_row(table: Table, report: SmokeReport | None) -> None:
    if report is None or report.docker is None:
        return
    mark = (OK if report.docker.ok else FAIL) if report.docker.ran else SKIP
    table.add_row("docker build", mark, "", Text(report.docker.detail))


def _training_time(zip_path: Path, manifest: Manifest | None, projected: list[str] | None) -> tuple[Text, str, Text]:
    """The training-time projection for the zip's track (given, or from its training/pins.json), or why none."""
    import json

    if projected is None:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                projected = json.loads(archive.read("training/pins.json")).get("projected_training_time", [])
        except KeyError:
            return SKIP, "", Text("not projected: the zip was not built from a config here (TRAINING=1 adds it)")
        except (ValueError, *ZIP_READ_ERRORS):
            return SKIP, "", Text("not projected: training/pins.json is unreadable")
    gpu = manifest.gpu if manifest is not None else ""
    lines = [line for line in projected if gpu and f"on the {gpu} " in line]
    if not lines:
        return SKIP, "", Text("not projected: the base model's size is unknown")
    over = "over the" in lines[0] or "× over" in lines[0]
    return WARN if over else OK, "", Text(lines[0])


def _projection(report: SmokeReport | None, manifest: Manifest | None) -> tuple[Text, Text, Projection | None]:

    timed = report.timed_requests if report is not None else []
    if not timed:
        reason = "the smoke test was not run" if report is None or report.skipped else "no smoke request succeeded"
        return SKIP, Text(f"not projected: {reason}"), None
    gpu = manifest.gpu if manifest is not None else "GPU"
    here = report.device.split(",")[0]
    speed = f"will be faster than this {here}" if here == "cpu" else f"is not this {here}"
    projection = project(
        sum(result.seconds for result in timed) / len(timed),
        basis=f"(the mean of the {len(timed)} /process requests above, one at a time, on {report.device}; the "
        "first includes warm-up)",
        caveat=f"The track's {gpu} {speed}; HELM's open-suite prompts are longer (few-shot) and some ask for more "
        "tokens: an order of magnitude, not a measurement.",
    )
    verdict = projection.verdict()
    return OK if projection.ratio <= 1 else WARN, Text(f"{verdict[0].upper()}{verdict[1:]}"), projection


def _failures(manifest: Manifest | None, problems: list[str], report: SmokeReport | None) -> list[str]:
    failures = [f"{len(problems)} problem(s) found by verify-submission"] if problems else []
    if manifest is not None and not manifest.estimated_gpu_memory.fits:
        failures.append("the model does not fit the track's GPU")
    if report is not None:
        failures += [f"smoke test: '{result.name}' failed ({result.detail})" for result in report.failed]
        if report.docker is not None and report.docker.ran and not report.docker.ok:
            failures.append(report.docker.detail)
    return failures


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"
