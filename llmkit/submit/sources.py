"""Where a submission's weights come from: a hub id (downloaded by `docker build`), or local files (bundled).

The default, with neither a config nor a model, is the whole pipeline on the embedded default config:
train, merge, then bundle the merged weights (they exist only on this machine).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit.core.challenge import TRACKS, Track
from llmkit.core.errors import UsageError
from llmkit.core.files import user_path
from llmkit.core.memory import GIB
from llmkit.core.models import is_hub_id, local_model_dir, resolve_model

LOG = logging.getLogger(__name__)

HUB_REVISION = re.compile(r"^[\w.][\w./-]*$")
BUNDLE_WARNING = (
    "Bundling the weights of %s into the zip. Fine for self-hosting, but the challenge does not accept it: its "
    "image must download the weights during `docker build`. Upload them (`hf upload <you>/<name> %s`) and build "
    "the submission with MODEL=<you>/<name>."
)

HUB_BUNDLE_WARNING = (
    "Bundling the weights of %s (revision %s) into the zip. Fine for self-hosting, but the challenge does not accept "
    "it, and they are on the hub already: without --bundle-weights (BUNDLE=1) the image downloads them during "
    "`docker build`, pinned to that revision."
)


class SubmissionError(ValueError):
    """The submission cannot be built as asked; the message says what to change."""


class SubmissionUsageError(SubmissionError, UsageError):
    """Flags that cannot build a submission whatever is on disk or the hub (a usage error: exit 2)."""


@dataclass(frozen=True)
class Weights:
    """A model or adapter: `name` is a hub id (with `revision`) or, when `local_dir` is set, bundled files."""

    name: str
    revision: str | None = None
    local_dir: Path | None = None
    base_model: str | None = None  # merged weights: the base the adapter was merged into

    @property
    def bundled(self) -> bool:
        return self.local_dir is not None


def pipeline_weights(
    config: Path, track: Track, overrides: dict | None = None, *, cpu_fallback: bool = False
) -> Weights:
    """Train `config` (resuming a finished run is quick), merge the adapter, and return the merged model to bundle
    (a full fine-tune's output_dir is the model itself); `cpu_fallback` is `train`'s.

    Raises:
        SubmissionError: the plan puts the training over the memory of the track's GPU (`validate`'s memory table):
            the challenge fine-tunes on one GPU of the track, so such a submission could not be reproduced there.
    """
    from llmkit.config.plan import plan
    from llmkit.config.schema import load_config
    from llmkit.merge.fold import merge_from_config
    from llmkit.train.run import train

    cfg = load_config(config, overrides)
    training = plan(cfg)
    for memory in training.memory:
        if memory.track is TRACKS[track] and not memory.fits:
            raise SubmissionError(
                f"{config}: training needs about {memory.total / GIB:.1f} GiB per GPU by its plan, over the "
                f"{memory.track.memory_gib} GiB of the {track.value} track's {memory.track.gpu}, on which the "
                "challenge fine-tunes (`llmkit validate` shows the parts): lower micro_batch_size or sequence_len"
                f"{'' if cfg.load_in_4bit else ', train QLoRA (load_in_4bit: true)'}, or submit to a track with more "
                "memory"
            )
    for projection in training.training_time:
        if projection.track == track and projection.fits is False:  # the throughput is a projection: said, not refused
            LOG.warning("%s: %s", config, projection.sentence())
    LOG.info("Training %s into %s", config, cfg.output_dir)
    train(cfg, cpu_fallback=cpu_fallback)
    # a full fine-tune's output_dir is the model itself: nothing to merge
    merged = Path(cfg.output_dir) if cfg.adapter is None else merge_from_config(cfg).out_dir
    LOG.warning(BUNDLE_WARNING, merged, shlex.quote(str(merged)))
    return Weights(name=str(merged), local_dir=Path(merged), base_model=cfg.base_model)


def hub_or_local(name: str, revision: str | None, *, bundle: bool, marker: str | None, what: str) -> Weights:
    """A `--model`/`--adapter` argument as Weights; a local directory needs `bundle`, a hub id gets a pinned revision.

    Args:
        marker: the file a directory of this kind holds (adapter_config.json); None: a model folder, checked as
            serve checks it (`local_model_dir`: config.json, and not an adapter's folder).
        what: "model" or "adapter", for messages.
    """
    local = user_path(name)
    flag = "--revision" if what == "model" else f"--{what}-revision"
    if local.is_dir():
        if revision is not None:
            raise SubmissionError(f"{flag} {revision}: --{what} {name} is a local folder, which has no hub revision")
        if marker is None:  # a model folder, as serve reads it: an adapter's folder is said to be one
            try:
                local_model_dir(name)
            except OSError as err:
                raise SubmissionError(f"--model {name}: {err}") from None
        elif not (local / marker).is_file():
            raise SubmissionError(f"--{what} {name}: the directory holds no {marker}")
        if not bundle:
            raise SubmissionError(
                f"--{what} {name} is a local directory, and the challenge's image must download weights during "
                f"`docker build`. Upload it (`hf upload <you>/<name> {shlex.quote(name)}`) and pass --{what} "
                "<you>/<name>, or pass --bundle-weights (BUNDLE=1) to put the files in the zip for self-hosting only."
            )
        LOG.warning(BUNDLE_WARNING, name, shlex.quote(name))
        from llmkit.merge.fold import merged_base

        return Weights(name=str(local.resolve()), local_dir=local.resolve(), base_model=merged_base(local))
    if "/" not in name or not is_hub_id(name):  # the challenge's image downloads from an owner's repo
        raise SubmissionError(f"--{what} {name!r} is neither a local directory nor a hub id (owner/name)")
    if revision is not None and not HUB_REVISION.match(revision):
        raise SubmissionError(f"{flag} {revision!r} is not a branch, tag or commit name")
    if bundle:
        resolved = resolve_model(name, revision)
        LOG.warning(HUB_BUNDLE_WARNING, name, resolved.revision)
        return Weights(name=name, revision=resolved.revision, local_dir=resolved.path)
    make_variable = flag.removeprefix("--").upper().replace("-", "_")  # REVISION, ADAPTER_REVISION
    if revision is not None:
        return Weights(name=name, revision=pin_given_revision(name, revision, flag))
    return Weights(name=name, revision=pin_revision(name, f"{flag} <commit> ({make_variable}=...)"))


def pin_given_revision(repo_id: str, revision: str, flag: str = "--revision") -> str:
    """A revision given by hand, asked of the hub where it answers: a typo otherwise passes every check here and
    fails the organisers' `docker build`. A branch or tag is pinned to the commit it names now, so the image
    downloads these weights next month too.

    Returns:
        the commit the hub resolves `revision` to, or `revision` itself where the hub cannot be asked.

    Raises:
        SubmissionError: the hub answers that the model has no such revision.
    """
    from huggingface_hub.errors import RevisionNotFoundError

    def unchecked(err: Exception) -> str:
        if isinstance(err, RevisionNotFoundError):
            raise SubmissionError(
                f"{flag} {revision}: the hub has no such branch, tag or commit of {repo_id}; the image's download "
                "would fail at docker build"
            ) from None
        # offline, or a gated or private repo without a token: it cannot be checked here
        LOG.warning(
            "Could not check %s %s against the hub (%s: %s): the image downloads it as given; a wrong revision "
            "fails only at the organisers' docker build",
            flag,
            revision,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )
        return revision

    commit = hub_commit(repo_id, revision, fallback=unchecked)
    if not commit or commit == revision:
        return revision
    LOG.info("%s %s of %s is commit %s now: the image downloads that commit", flag, revision, repo_id, commit)
    return commit


def pin_revision(repo_id: str, how: str = "--revision <commit> (REVISION=...)") -> str:
    """The commit the hub's main branch points at now, so the image downloads these weights next month too."""

    def on_main(err: Exception) -> str:  # offline, gated without a token, or missing: say so, fall back to the branch
        LOG.warning(
            "Could not ask the hub for %s's current commit (%s: %s); the image will download revision 'main'. "
            "Pass %s to pin it.",
            repo_id,
            type(err).__name__,
            err,
            how,
        )
        return "main"

    return hub_commit(repo_id, fallback=on_main)


def hub_commit(
    repo_id: str, revision: str | None = None, *, kind: str = "model", fallback: Callable[[Exception], str]
) -> str:
    """The commit the hub resolves `revision` (None: the default branch) of a model or dataset repo to now, or what
    `fallback` makes of the error where the hub does not give one (offline, gated, no such repo or revision)."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        info = api.dataset_info if kind == "dataset" else api.model_info
        return info(repo_id, revision=revision, timeout=20).sha
    except Exception as err:  # which errors are worth stopping for, and what stands in otherwise, is the caller's
        return fallback(err)


def local_size(weights: Weights | None) -> int:
    """Bytes of the weight files of a bundled adapter (what it adds to GPU memory); 0 for hub ids."""
    if weights is None or weights.local_dir is None:
        return 0
    return sum(p.stat().st_size for p in weights.local_dir.glob("*.safetensors"))
