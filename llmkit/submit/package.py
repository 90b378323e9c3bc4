"""llmkit submission --track 4090 [--config C | --model M [--adapter A]]: build a challenge submission zip.

Writes `submissions/<track>_track/<track>_submission_<N>.zip` and the same files unpacked beside it. The zip holds
at its root the Dockerfile (rendered from docker/Dockerfile.template for the track and engine), .dockerignore, the
server code the image runs, pinned requirements and manifest.json. It is byte-identical when built twice from the
same inputs: sorted entries, fixed timestamps (SOURCE_DATE_EPOCH or 1980-01-01) and permissions. Nothing is written
unless the memory fit check and verify_submission pass, and the zip and folder are renamed into place last.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from llmkit.core.assets import DEFAULT_CONFIG, DOCKER_DIR
from llmkit.core.challenge import MAX_SUBMISSIONS, TRACKS, Loading, Track
from llmkit.core.files import (
    check_folder_target,
    clean_stale,
    said_if_it_did_not_fit,
    sha256_file,
    staging_dir,
    swap_in,
    user_path,
)
from llmkit.core.memory import MemoryEstimate, choose_loading
from llmkit.core.models import MODEL_FILE_PATTERNS
from llmkit.core.shapes import model_shape
from llmkit.server.settings import EngineName
from llmkit.server.vllm_venv import VLLM_VERSION
from llmkit.submit.archive import write_zip
from llmkit.submit.image import render_dockerfile, render_requirements, server_files
from llmkit.submit.manifest import (
    MANIFEST_NAME,
    ZIP_ADAPTER_DIR,
    ZIP_MODEL_DIR,
    Manifest,
    WeightsSource,
)
from llmkit.submit.sources import (
    SubmissionError,
    SubmissionUsageError,
    Weights,
    hub_or_local,
    local_size,
    pipeline_weights,
)
from llmkit.submit.verify import ZIP_READ_ERRORS, verify_submission

LOG = logging.getLogger(__name__)


def build_submission(
    track: Track | str,
    *,
    config: str | Path | None = None,
    model: str | None = None,
    adapter: str | None = None,
    number: int | None = None,
    bundle_weights: bool = False,
    revision: str | None = None,
    adapter_revision: str | None = None,
    loading: Loading | str | None = None,
    config_overrides: dict | None = None,
    out_root: str | Path | None = None,
    engine: EngineName | str = EngineName.builtin,
    training: bool = False,
    cpu_fallback: bool = False,
) -> Path:
    """Build, check and write one submission; returns the zip's path.

    Args:
        track: "4090" or "A100".
        config: train, merge and bundle this config's model (the default when neither config nor model is given);
            with `model` and `training`, only the config training/ re-runs (the model it trained is `model`).
        model: hub id (downloaded by the image) or local directory (needs bundle_weights) of the served model.
        adapter: an unmerged peft adapter on top of `model`: hub id or local directory (needs bundle_weights).
        number: N in `<track>_submission_N`; default: one more than the highest there. An existing N is replaced.
        bundle_weights: put the weight files in the zip (self-hosting; the challenge does not accept it).
        revision: hub revision of `model`; default: its current commit, asked from the hub.
        adapter_revision: hub revision of `adapter`, likewise.
        loading: bf16, int8 or nf4; default: the first of the track's loadings that fits.
        config_overrides: top-level config keys replacing the file's (tests: a short max_steps).
        out_root: folder holding `<track>_track/` (default: the project's submissions/).
        engine: builtin, or vllm: the image is vLLM's own (VLLM_VERSION) and its CMD says `--engine vllm`.
        training: add `training/` (llmkit/submit/training.py): what re-runs the config's training in an image.
        cpu_fallback: training `config` on a machine without CUDA, use the plain variant of a paged optimizer.

    Raises:
        SubmissionError: bad arguments, a model that does not fit (FitError), or a zip that fails verification.
    """
    track = Track(track)
    loading = Loading(loading) if loading is not None else None
    engine = _check_flags(
        engine,
        loading,
        config=config,
        model=model,
        adapter=adapter,
        number=number,
        revision=revision,
        adapter_revision=adapter_revision,
        training=training,
    )
    track_dir = user_path(out_root or "submissions") / f"{track.value}_track"  # beside where the command runs
    try:
        check_folder_target(track_dir)  # before training, merging or downloading
    except OSError as err:
        raise SubmissionError(f"--out: {err}") from None
    extra = {}
    if training:  # before training and merging: what it refuses (a local base_model) needs only the config
        from llmkit.submit.training import TRAINING_DIR, training_files

        files = training_files(Path(config or DEFAULT_CONFIG), track)
        extra = {f"{TRAINING_DIR}/{relative}": data for relative, data in files.items()}
    if model is None:
        weights = pipeline_weights(Path(config or DEFAULT_CONFIG), track, config_overrides, cpu_fallback=cpu_fallback)
        adapter_weights = None
    else:
        weights = hub_or_local(model, revision, bundle=bundle_weights, marker=None, what="model")
        adapter_weights = adapter and hub_or_local(
            adapter, adapter_revision, bundle=bundle_weights, marker="adapter_config.json", what="adapter"
        )
        if weights.bundled or (adapter_weights and adapter_weights.bundled):
            _check_servable(weights, adapter_weights, engine)
    estimate = _fitted_loading(weights, adapter_weights, track, loading)
    # Without N: a submission already built with these very files is kept under its number, rather than copied to
    # the next one (each number is one of the challenge's 3 per track).
    taken = taken_numbers(track_dir, track)
    earlier = [] if number else [track_dir / f"{track.value}_submission_{n}" for n in taken]
    number = number or max(taken, default=0) + 1
    # Bundled folders are named relative to the folder holding submissions/, not to where the command runs: the
    # same files and --out give the same zip (and so keep their number) from any working directory.
    contents = ZipContents(track, weights, adapter_weights, estimate, engine, extra, track_dir.resolve().parent.parent)
    name = f"{track.value}_submission_{number}"
    # track_dir too is made by the staging folder, and removed with it where it was new
    with said_if_it_did_not_fit(track_dir, f"submission {name}", SubmissionError):
        zip_path = _write(track_dir, name, contents, earlier)
    if (written := int(zip_path.stem.rsplit("_", 1)[1])) > MAX_SUBMISSIONS:
        LOG.warning("Submission %d: the challenge accepts at most %d per track", written, MAX_SUBMISSIONS)
    return zip_path


def _check_flags(
    engine: EngineName | str,
    loading: Loading | None,
    *,
    config: str | Path | None,
    model: str | None,
    adapter: str | None,
    number: int | None,
    revision: str | None,
    adapter_revision: str | None,
    training: bool,
) -> EngineName:
    """The rules between build_submission's arguments, before anything is trained or downloaded; the engine."""
    if engine not in {e.value for e in EngineName}:
        raise SubmissionUsageError(f"--engine {engine}: choose {' or '.join(e.value for e in EngineName)}")
    engine = EngineName(engine)
    if engine is EngineName.vllm and loading is not None:
        from llmkit.server.settings import VLLM_QUANTIZATIONS

        if loading.quantization not in VLLM_QUANTIZATIONS:
            served = " or ".join(each.value for each in Loading if each.quantization in VLLM_QUANTIZATIONS)
            raise SubmissionUsageError(
                f"--loading {loading.value} is not available with --engine vllm (vLLM quantizes with bitsandbytes "
                f"in 4 bits only): use --loading {served}"
            )
    if config is not None and model is not None and not training:
        raise SubmissionUsageError(
            "Give --config or --model, not both (with --training, both: the published --model is served and "
            "training/ re-runs the --config that trained it)"
        )
    if number is not None and number < 1:
        raise SubmissionUsageError(f"--number {number}: submissions are numbered from 1")
    if model is None and (adapter is not None or revision is not None):
        raise SubmissionUsageError("--adapter and --revision need --model (the base they apply to)")
    if adapter is None and adapter_revision is not None:
        raise SubmissionUsageError("--adapter-revision needs --adapter")
    if training and model is not None and config is None:
        raise SubmissionUsageError("--training with --model needs --config too: the config that trained the model")
    return engine


def _check_servable(weights: Weights, adapter: Weights | None, engine: EngineName) -> None:
    """Refuse, before the zip is built, bundled files the image's server would refuse at start-up, with the server's
    own checks: an adapter its engine cannot serve (`engine.check_adapters`), and, where the model is bundled, a
    model folder without a tokenizer or an adapter that does not fit it (`models.check_fit`: the fit check loading
    runs). Without them the zip was called good and only the smoke test's server said so, after the build."""
    from llmkit.core.models import check_fit
    from llmkit.server.engine import check_adapters
    from llmkit.server.settings import ServerSettings

    bundled = adapter if adapter is not None and adapter.bundled else None
    try:
        if bundled:
            # as the image's CMD names them, with nothing of this shell's LLMKIT_* variables, which the image has
            # not: the adapter in its own folder, the only one, so the default
            settings = ServerSettings.given(
                model=str(weights.local_dir or weights.name),
                adapter=[f"{ZIP_ADAPTER_DIR}={bundled.local_dir}"],
                engine=engine,
            )
            check_adapters(settings)
        if weights.bundled:
            check_fit(weights.local_dir, {ZIP_ADAPTER_DIR: str(bundled.local_dir)} if bundled else None)
    except (ValueError, OSError) as err:
        # an adapter's own problem, or its fit (apply_adapter's "Adapter DIR does not fit ..."); else the model's
        flag = (
            f"--adapter {bundled.name}" if bundled and str(err).startswith("Adapter ") else f"--model {weights.name}"
        )
        raise SubmissionError(f"{flag}: the server would refuse it: {err}") from None


def _fitted_loading(
    weights: Weights, adapter: Weights | None, track: Track, loading: Loading | None
) -> MemoryEstimate:
    """The loading the served model gets on the track's GPU (`loading`, checked, or the first that fits), from its
    config.json alone: the weights download during docker build."""
    pinned = f" --revision {shlex.quote(weights.revision)}" if weights.revision else ""
    how_to_give = (
        f"by fetching it once where the hub answers (hf download {shlex.quote(weights.name)} config.json{pinned}; "
        "it is then read from the cache)"
    )
    shape = model_shape(
        str(weights.local_dir or weights.name),
        None if weights.local_dir else weights.revision,
        how_to_give=how_to_give,
    )
    estimate = choose_loading(weights.name, shape, track, loading, local_size(adapter))
    LOG.info("GPU memory on the %s track: %s", track.value, estimate.breakdown())
    return estimate


def taken_numbers(track_dir: Path, track: Track) -> list[int]:
    """The numbers of the track's submissions in `track_dir` (a zip or its folder), ascending."""
    pattern = re.compile(rf"^{re.escape(track.value)}_submission_(\d+)(\.zip)?$")
    names = [p.name for p in track_dir.iterdir()] if track_dir.is_dir() else []
    return sorted({int(m.group(1)) for name in names if (m := pattern.match(name))})


@dataclass(frozen=True)
class ZipContents:
    """What one submission zip is made of."""

    track: Track
    weights: Weights  # the served model
    adapter: Weights | None  # an unmerged adapter on top of it
    estimate: MemoryEstimate  # how it loads on the track's GPU
    engine: EngineName
    extra: dict[str, bytes]  # more files by path in the zip (training/)
    project: Path  # the folder holding submissions/: bundled folders inside it are recorded relative to it


def _write(track_dir: Path, name: str, contents: ZipContents, earlier: list[Path]) -> Path:
    """Stage, check and swap in submission `name`; or keep the one of `name` or of `earlier` (their unpacked
    folders) that already holds exactly these files."""
    zip_path, unpacked = track_dir / f"{name}.zip", track_dir / name
    # What killed builds left, of any number: a staging folder (half a GB with bundled weights), or an unpacked
    # folder moved aside (restored).
    for name_left in {entry.name[1:].split(".")[0] for entry in track_dir.glob(".*_submission_*.*-*")} | {name}:
        clean_stale(track_dir / name_left)
    # Built next to its destination, so the final renames never cross a filesystem.
    with staging_dir(unpacked, "build") as tmp:
        stage, staged_zip = tmp / name, tmp / f"{name}.zip"
        _stage(stage, contents)
        for folder in (unpacked, *earlier):
            kept = folder.with_name(f"{folder.name}.zip")
            if _zip_holds(kept, stage / MANIFEST_NAME):
                hint = "" if folder == unpacked else " (give N= to write it under another number too)"
                LOG.info(
                    "%s already holds this submission (its files' hashes are unchanged); kept as it is%s", kept, hint
                )
                if not _folder_holds(folder, stage / MANIFEST_NAME):  # edited since: the zip's files again
                    LOG.info("Restored %s, which no longer held the zip's files", folder)
                    swap_in(stage, folder)
                return kept
        write_zip(stage, staged_zip)
        problems = verify_submission(staged_zip)
        if problems:
            raise SubmissionError("The submission failed verification:\n  " + "\n  ".join(problems))
        if zip_path.exists() or unpacked.exists():  # --number N of one built before, with other files
            LOG.warning("Replacing %s, which held another submission (its files differ from these)", zip_path)
        # The zip is one atomic rename; the folder's old copy is set aside until the new one is in place.
        swap_in(staged_zip, zip_path)
        swap_in(stage, unpacked)
    LOG.info("Wrote %s (unpacked in %s)", zip_path, unpacked)
    return zip_path


def _zip_holds(zip_path: Path, staged_manifest: Path) -> bool:
    """True when the zip holds the staged manifest and every file still has the sha256 it lists (the zip, not its
    unpacked folder, is what gets submitted)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            if archive.read(MANIFEST_NAME) != staged_manifest.read_bytes():
                return False
    except (KeyError, *ZIP_READ_ERRORS):
        return False
    return not verify_submission(zip_path, lint=False)  # re-hashes each file against the manifest


def _folder_holds(folder: Path, staged_manifest: Path) -> bool:
    """True when the unpacked folder holds the staged manifest and exactly the files it lists, unedited."""
    manifest = staged_manifest.read_bytes()
    try:
        if (folder / MANIFEST_NAME).read_bytes() != manifest:
            return False
    except OSError:
        return False
    return _hashes(folder) == Manifest.model_validate_json(manifest).files


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but the manifest, by path, sorted."""
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    return {name: sha256_file(files[name]) for name in sorted(files) if name != MANIFEST_NAME}


def _stage(stage: Path, contents: ZipContents) -> None:
    """Lay out the zip's files in `stage`, manifest last (it hashes the others)."""
    track, weights, adapter, engine = contents.track, contents.weights, contents.adapter, contents.engine
    stage.mkdir()
    for relative, data in contents.extra.items():
        (stage / relative).parent.mkdir(parents=True, exist_ok=True)
        (stage / relative).write_bytes(data)
    titled = replace(weights, name=_portable(weights, contents.project))  # the Dockerfile's title names it
    (stage / "Dockerfile").write_text(render_dockerfile(track, titled, adapter, contents.estimate.loading, engine))
    shutil.copyfile(DOCKER_DIR / ".dockerignore", stage / ".dockerignore")
    (stage / "requirements.txt").write_text(render_requirements(track, engine))
    for source, relative in server_files(engine):
        (stage / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, stage / relative)
    if weights.bundled:
        _copy_weights(weights.local_dir, stage / ZIP_MODEL_DIR, contents.project)
    if adapter is not None and adapter.bundled:
        _copy_weights(adapter.local_dir, stage / ZIP_ADAPTER_DIR, contents.project)
    files = _hashes(stage)
    manifest = Manifest(
        track=track,
        gpu=TRACKS[track].gpu,
        model=_source(weights, contents.project),
        adapter=_source(adapter, contents.project) if adapter else None,
        loading=contents.estimate.loading,
        quantization=contents.estimate.loading.quantization,
        engine=engine,
        engine_version=VLLM_VERSION if engine is EngineName.vllm else None,
        estimated_gpu_memory=contents.estimate,
        bundled_weights=weights.bundled or bool(adapter and adapter.bundled),
        files=files,
    )
    (stage / MANIFEST_NAME).write_bytes(manifest.to_json())


def _source(weights: Weights, project: Path) -> WeightsSource:
    return WeightsSource(
        id=_portable(weights, project),
        revision=weights.revision,
        bundled=weights.bundled,
        base_model=weights.base_model,
    )


def _portable(weights: Weights, project: Path) -> str:
    """A bundled folder's name as the zip records it: relative to the project inside it, else the folder's own name,
    so the same files give the same zip wherever they are and wherever the command runs."""
    return _portable_path(weights.name, project) if weights.bundled else weights.name


def _portable_path(name: str, project: Path) -> str:
    path = Path(name)
    if not path.is_absolute():  # a hub id (a bundled local folder's name is resolved)
        return name
    return path.relative_to(project).as_posix() if path.is_relative_to(project) and path != project else path.name


def _copy_weights(source: Path, target: Path, project: Path) -> None:
    from llmkit.merge.fold import MANIFEST as MERGE_REPORT

    # What a served model directory needs (MODEL_FILE_PATTERNS): checkpoints and logs stay behind.
    files = sorted({p for pattern in MODEL_FILE_PATTERNS for p in source.glob(pattern) if p.is_file()})
    if not any(p.suffix == ".safetensors" for p in files):
        raise SubmissionError(f"{source} holds no *.safetensors weights to bundle")
    target.mkdir(parents=True)
    for path in files:
        if path.name == MERGE_REPORT:  # the merge's record, minus where and how long it ran
            (target / path.name).write_text(
                json.dumps(_run_independent(json.loads(path.read_text()), project), indent=2) + "\n"
            )
        else:
            shutil.copyfile(path, target / path.name)
    LOG.info("Bundled %d files from %s", len(files), source)


def _run_independent(value, project: Path):
    """A merge record with its paths made portable and the run's own values (seconds, skipped) dropped."""
    if isinstance(value, dict):
        return {k: _run_independent(v, project) for k, v in value.items() if k not in ("seconds", "skipped")}
    if isinstance(value, list):
        return [_run_independent(v, project) for v in value]
    return _portable_path(value, project) if isinstance(value, str) else value
