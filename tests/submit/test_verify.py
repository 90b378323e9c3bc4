"""verify_submission catches what would fail the harness or leak: each planted fault is reported by name."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import random
import re
import shlex
import shutil
import stat
import string
import subprocess
import sys
import tarfile
import zipfile

import pytest

from llmkit.submit.archive import write_zip
from llmkit.submit.dockerfile import dockerignored
from llmkit.submit.verify import is_symlink, verify_submission


@pytest.fixture()
def good_zip(default_zips):
    return default_zips["4090"]


def _fake_token() -> str:
    # Built at run time so no token-shaped string sits in the repository.
    return "hf_" + "".join(random.Random(0).choices(string.ascii_letters, k=34))


def test_a_planted_token_is_reported_with_file_and_line(good_zip, tmp_path, rewrite_zip):
    with zipfile.ZipFile(good_zip) as archive:
        app = archive.read("llmkit/server/app.py").decode()
    planted = app + f'\nTOKEN = "{_fake_token()}"\n'
    bad = rewrite_zip(good_zip, tmp_path / "token.zip", {"llmkit/server/app.py": planted.encode()})
    problems = verify_submission(bad)
    line = len(planted.splitlines())
    assert problems == [f"llmkit/server/app.py:{line}: a Hugging Face token (hf_{_fake_token()[3:8]}...)"]


def test_a_token_inside_a_wheel_is_found(good_zip, tmp_path, rewrite_zip):
    """--training ships the project as a wheel: a zip inside the zip, binary to a line scan, that went unread."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("llmkit/__init__.py", "")
        wheel.writestr("llmkit/axolotl_configs/mine.yml", f"base_model: x/y\n# my token: {_fake_token()}\n")
    name = "training/llm_effchal-0.1.0-py3-none-any.whl"
    bad = rewrite_zip(good_zip, tmp_path / "wheel.zip", {name: buffer.getvalue()})
    [problem] = verify_submission(bad, lint=False)
    assert problem.startswith(f"{name}!llmkit/axolotl_configs/mine.yml:2: a Hugging Face token (hf_")


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tar.xz", "w:xz"), (".tar", "w")])
def test_a_token_inside_a_tarball_is_found(good_zip, tmp_path, rewrite_zip, suffix, mode):
    """An sdist or a tarball of data in the zip: compressed, so a line scan of its bytes found nothing."""
    buffer = io.BytesIO()
    members = {
        "pkg-0.1/configs/mine.yml": f"base_model: x/y\n# my token: {_fake_token()}\n".encode(),
        "pkg-0.1/data.bin": random.Random(0).randbytes(1 << 16),  # incompressible: the cut below falls in it
    }
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    name = f"extra/pkg-0.1{suffix}"
    expected = [f"{name}!pkg-0.1/configs/mine.yml:2: a Hugging Face token (hf_{_fake_token()[3:8]}...)"]
    bad = rewrite_zip(good_zip, tmp_path / "tar.zip", {name: buffer.getvalue()})
    assert verify_submission(bad, lint=False) == expected
    # a damaged tarball is read up to where it breaks, not a traceback: the file before the cut is still scanned
    cut = rewrite_zip(good_zip, tmp_path / "cut.zip", {name: buffer.getvalue()[: len(buffer.getvalue()) // 2]})
    assert verify_submission(cut, lint=False) == expected


@pytest.mark.parametrize(
    ("suffix", "compress"), [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)]
)
def test_a_token_in_a_compressed_file_is_found(good_zip, tmp_path, rewrite_zip, suffix, compress):
    name = f"extra/notes.txt{suffix}"
    data = compress(f"my token: {_fake_token()}\n".encode())
    bad = rewrite_zip(good_zip, tmp_path / "compressed.zip", {name: data, "extra/old.tbz2": _tarball("w:bz2")})
    assert [problem.split(" (hf_")[0] for problem in verify_submission(bad, lint=False)] == [
        "extra/notes.txt" + suffix + "!notes.txt:1: a Hugging Face token",
        "extra/old.tbz2!notes.txt:1: a Hugging Face token",  # a tarball by its short suffix too
    ]


def _tarball(mode: str) -> bytes:
    buffer, text = io.BytesIO(), f"my token: {_fake_token()}\n".encode()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        info = tarfile.TarInfo("notes.txt")
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def test_an_archive_too_big_to_scan_whole_is_reported(good_zip, tmp_path, rewrite_zip):
    """A zip in the zip that unpacks to more than 64 MiB (a bomb, or a token behind a big file): reported, not read
    whole into memory, and not passed as scanned."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.bin", b"\0" * (65 << 20))
        archive.writestr("small.txt", b"fine\n")
    bad = rewrite_zip(good_zip, tmp_path / "bomb.zip", {"extra/data.zip": buffer.getvalue()})
    assert verify_submission(bad, lint=False) == ["extra/data.zip: over 64 MiB unpacked; the rest was not scanned"]


def test_a_module_the_wheel_lacks_is_found(good_zip, tmp_path, rewrite_zip):
    """The training wheel is built from what git tracks: a tracked module importing an untracked one left the
    organisers' `llmkit train` failing with ModuleNotFoundError, and verify said nothing."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("llmkit/__init__.py", "")
        wheel.writestr("llmkit/cli.py", "import json\nfrom llmkit.newmod import X\n")
    name = "training/llm_effchal-0.1.0-py3-none-any.whl"
    bad = rewrite_zip(good_zip, tmp_path / "wheel.zip", {name: buffer.getvalue()})
    assert verify_submission(bad, lint=False) == [
        f"{name}!llmkit/cli.py:2: imports llmkit.newmod, which is not in the zip"
    ]


def test_every_kind_of_secret_is_found(good_zip, tmp_path, rewrite_zip):
    from llmkit.submit.verify import SECRET_PATTERNS

    samples = {  # built here, so that this file holds no secret-shaped text of its own
        "a Hugging Face token": _fake_token(),
        "a token assignment": "HUGGING_FACE_HUB_TOKEN: " + "v" * 12,
        "a private key": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
        "an AWS access key id": "ASIA" + "7Q" * 8,
        "an AWS secret key assignment": "AWS_SECRET_ACCESS_KEY = '" + "a/B+" * 10 + "'",
    }
    assert set(samples) == set(SECRET_PATTERNS)  # a new pattern gets its sample here
    with zipfile.ZipFile(good_zip) as archive:
        app = archive.read("llmkit/server/app.py").decode()
    planted = app.rstrip("\n") + "".join(f"\n# {sample}" for sample in samples.values()) + "\n"
    bad = rewrite_zip(good_zip, tmp_path / "secrets.zip", {"llmkit/server/app.py": planted.encode()})
    first = len(app.rstrip("\n").splitlines()) + 1
    found = [problem.split(": ", 1)[1].split(" (")[0] for problem in verify_submission(bad)]
    assert found == list(samples), verify_submission(bad)
    lines = [int(problem.split(":")[1]) for problem in verify_submission(bad)]
    assert lines == list(range(first, first + len(samples)))


def test_a_token_in_env_is_reported(good_zip, tmp_path, rewrite_zip):
    with zipfile.ZipFile(good_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    leaky = dockerfile.replace("ENV HF_HUB_OFFLINE=1", "ENV HF_HUB_OFFLINE=1 HF_TOKEN=secretvalue123")
    problems = verify_submission(rewrite_zip(good_zip, tmp_path / "env.zip", {"Dockerfile": leaky.encode()}))
    assert any("HF_TOKEN in ENV/ARG" in p for p in problems)
    assert any(p.startswith("Dockerfile:") and "a token assignment" in p for p in problems)


def test_a_missing_dockerfile_is_reported(good_zip, tmp_path, rewrite_zip):
    problems = verify_submission(rewrite_zip(good_zip, tmp_path / "nodocker.zip", {"Dockerfile": None}))
    assert problems == ["no Dockerfile at the zip's root (the harness builds the first Dockerfile it finds)"]


def test_a_nested_second_dockerfile_is_reported(good_zip, tmp_path, rewrite_zip):
    bad = rewrite_zip(good_zip, tmp_path / "two.zip", {"extra/Dockerfile": b"FROM scratch\n"})
    expected = "extra/Dockerfile: a second Dockerfile; the harness builds whichever it finds first"
    assert verify_submission(bad) == [expected]


def test_harness_requirements_of_the_dockerfile(good_zip, tmp_path, rewrite_zip):
    with zipfile.ZipFile(good_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    broken = (
        dockerfile.replace('"--port", "80"', '"--port", "8000"')
        .replace("USER 10001", "USER root")
        .split("HEALTHCHECK")[0]
        + 'CMD ["/opt/venv/bin/python", "-m", "llmkit.server", "--host", "127.0.0.1", "--port", "80"]\n'
    )
    problems = verify_submission(rewrite_zip(good_zip, tmp_path / "broken.zip", {"Dockerfile": broken.encode()}))
    assert "Dockerfile: no HEALTHCHECK ... CMD" in problems
    assert "Dockerfile: the server runs as root (add a USER that is not root)" in problems
    assert any("does not bind --host 0.0.0.0" in p for p in problems)
    assert any("hadolint:" in p and "DL3002" in p for p in problems)  # hadolint: last USER should not be root


def test_a_tab_after_a_keyword_reads_as_docker_reads_it(good_zip, tmp_path, rewrite_zip):
    """docker splits an instruction's keyword from its value on any whitespace: `CMD\t[...]` is exec form."""
    with zipfile.ZipFile(good_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    tabbed = dockerfile.replace("CMD [", "CMD\t[").replace("EXPOSE ", "EXPOSE\t")
    assert tabbed.count("\t") >= 2
    assert verify_submission(rewrite_zip(good_zip, tmp_path / "tabs.zip", {"Dockerfile": tabbed.encode()})) == []


def test_shell_form_cmd_is_reported(good_zip, tmp_path, rewrite_zip):
    with zipfile.ZipFile(good_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    head, _, _ = dockerfile.rpartition("CMD [")
    shell = head + "CMD python -m llmkit.server --host 0.0.0.0 --port 80\n"
    problems = verify_submission(rewrite_zip(good_zip, tmp_path / "shell.zip", {"Dockerfile": shell.encode()}))
    assert any("CMD is not in exec form" in p for p in problems)
    # the other rules are still checked: a shell-form CMD hid the rest, so a hand-written Dockerfile's problems came
    # one per run
    worse = shell.replace("EXPOSE 80", "EXPOSE 8000").replace("HEALTHCHECK", "# HEALTHCHECK")
    worse += 'ENTRYPOINT ["python"]\nCOPY missing.txt /opt/\n'
    problems = verify_submission(rewrite_zip(good_zip, tmp_path / "worse.zip", {"Dockerfile": worse.encode()}))
    said = "\n".join(problems)
    entrypoint = len(worse.splitlines()) - 1
    for expected in (
        f"CMD is not in exec form (a JSON array): the ENTRYPOINT of line {entrypoint} gets it as /bin/sh -c",
        "no EXPOSE 80",
        "no HEALTHCHECK",
        "missing.txt",
    ):
        assert expected in said, said


def test_weights_without_bundling_and_hash_mismatch(good_zip, tmp_path, rewrite_zip):
    with_weights = rewrite_zip(good_zip, tmp_path / "w.zip", {"model/model.safetensors": b"\x00" * 64})
    expected = "model/model.safetensors: a weight file, but bundling was not asked for"
    assert verify_submission(with_weights) == [expected]
    upper = {"model/MODEL.SAFETENSORS": b"\x00" * 64, "model/pytorch_model.BIN": b"\x00" * 64}
    with_upper = rewrite_zip(good_zip, tmp_path / "u.zip", upper)
    assert verify_submission(with_upper, lint=False) == [  # the suffix is matched in any case
        f"{name}: a weight file, but bundling was not asked for" for name in upper
    ]
    changed = zipfile.ZipFile(good_zip).read("llmkit/server/text.py") + b"# changed\n"
    tampered = rewrite_zip(good_zip, tmp_path / "t.zip", {"llmkit/server/text.py": changed}, fix_manifest=False)
    assert verify_submission(tampered) == ["llmkit/server/text.py: its sha256 does not match manifest.json"]


def test_a_changed_weight_file_and_paths_outside_the_root(good_zip, tmp_path, rewrite_zip):
    listed = rewrite_zip(good_zip, tmp_path / "w.zip", {"model/model.safetensors": b"\x00" * 64})
    changed = rewrite_zip(listed, tmp_path / "c.zip", {"model/model.safetensors": b"\x01" * 64}, fix_manifest=False)
    assert verify_submission(changed) == [  # weights are hashed as a stream, not read whole
        "model/model.safetensors: its sha256 does not match manifest.json",
        "model/model.safetensors: a weight file, but bundling was not asked for",
    ]
    escaping = rewrite_zip(
        good_zip, tmp_path / "e.zip", {"../up.txt": b"x", "/etc/abs.txt": b"x", "a/../../b": b"x", "\\evil.txt": b"x"}
    )
    outside = [p for p in verify_submission(escaping) if "outside the zip's root" in p]
    assert outside == [f"{name}: a path outside the zip's root (unzip rewrites or skips it)" for name in
                       ["../up.txt", "/etc/abs.txt", "a/../../b", "\\evil.txt"]]  # fmt: skip


def test_not_a_zip(tmp_path):
    path = tmp_path / "x.zip"
    path.write_text("not a zip")
    assert "cannot read it as a zip" in verify_submission(path)[0]


def _dockerfile(zip_path) -> str:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.read("Dockerfile").decode()


def _verify_dockerfile(good_zip, tmp_path, rewrite_zip, dockerfile: str) -> list[str]:
    """verify_submission's problems (hadolint aside) for the good zip with this Dockerfile."""
    changed = rewrite_zip(good_zip, tmp_path / "changed.zip", {"Dockerfile": dockerfile.encode()})
    return verify_submission(changed, lint=False)


@pytest.mark.parametrize("user", ["0", "0:0", "root:10001"])
def test_user_0_is_root(good_zip, tmp_path, rewrite_zip, user):
    changed = _dockerfile(good_zip).replace("USER 10001", f"USER {user}")
    assert _verify_dockerfile(good_zip, tmp_path, rewrite_zip, changed) == [
        "Dockerfile: the server runs as root (add a USER that is not root)"
    ]


def test_healthcheck_none_is_no_healthcheck(good_zip, tmp_path, rewrite_zip):
    head, _, rest = _dockerfile(good_zip).partition("HEALTHCHECK")
    cmd = rest[rest.index("\nCMD [") + 1 :]  # the server's CMD, after the HEALTHCHECK's continued CMD line
    changed = head + "HEALTHCHECK NONE\n" + cmd
    assert _verify_dockerfile(good_zip, tmp_path, rewrite_zip, changed) == ["Dockerfile: no HEALTHCHECK ... CMD"]


def test_the_legacy_env_form_sets_hf_hub_offline(good_zip, tmp_path, rewrite_zip):
    legacy = _dockerfile(good_zip).replace("ENV HF_HUB_OFFLINE=1", "ENV HF_HUB_OFFLINE 1")
    assert "ENV HF_HUB_OFFLINE 1" in legacy
    assert _verify_dockerfile(good_zip, tmp_path, rewrite_zip, legacy) == []
    off = legacy.replace("ENV HF_HUB_OFFLINE 1", "ENV HF_HUB_OFFLINE 0")
    assert _verify_dockerfile(good_zip, tmp_path, rewrite_zip, off) == [
        "Dockerfile: HF_HUB_OFFLINE is 0: the server must not reach the hub at run time "
        "(ENV HF_HUB_OFFLINE=1 after the weights are in the image)"
    ]


def test_what_docker_build_or_run_would_do_otherwise_is_reported(good_zip, tmp_path, rewrite_zip):
    dockerfile = _dockerfile(good_zip)
    line = len(dockerfile.splitlines())  # where the lines below start
    changed = dockerfile.replace('"--port", "80"', '"--port", "80", "--port", "8080"') + (
        "COPY extra_weights.bin /opt/x\n"
        "COPY requirements-gpu.txt ./requirements.txt\n"
        "COPY ../shared/helm /helm\n"
        "COPY --from=uv /uv /tmp/uv\n"  # another stage's files, not the zip's
        "COPY llmkit/server/*.py requirements.txt /tmp/\n"  # a glob matching zip entries, and a file
        'ENTRYPOINT ["sleep", "infinity"]\n'
        "ENV HF_HUB_OFFLINE=0\n"
    )
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip", {"Dockerfile": changed.encode()})
    cmd_line = next(n for n, text in enumerate(changed.splitlines(), 1) if text.startswith("CMD"))
    assert sorted(verify_submission(bad, lint=False)) == sorted([
        f"Dockerfile line {cmd_line}: CMD does not run the server with --port 80",
        f"Dockerfile line {line + 1}: COPY source extra_weights.bin is not in the zip",
        f"Dockerfile line {line + 2}: COPY source requirements-gpu.txt is not in the zip",
        f"Dockerfile line {line + 3}: COPY source ../shared/helm is not in the zip",
        f"Dockerfile line {line + 6}: an ENTRYPOINT runs instead of the server, with CMD as its arguments "
        "(the generated Dockerfile has none, or `ENTRYPOINT []`)",
        "Dockerfile: HF_HUB_OFFLINE is 0: the server must not reach the hub at run time "
        "(ENV HF_HUB_OFFLINE=1 after the weights are in the image)",
    ])  # fmt: skip
    quote = rewrite_zip(good_zip, tmp_path / "quote.zip", {"Dockerfile": (dockerfile + 'ENV A="x\n').encode()})
    assert verify_submission(quote, lint=False) == [f'Dockerfile: line {line + 1}: ENV A="x: No closing quotation']
    equals = dockerfile.replace('"--port", "80"', '"--port", "80", "--port=8080"')
    bad = rewrite_zip(good_zip, tmp_path / "equals.zip", {"Dockerfile": equals.encode()})
    assert verify_submission(bad, lint=False) == [
        f"Dockerfile line {cmd_line}: CMD does not run the server with --port 80"
    ]


_SERVER = '"/opt/venv/bin/python", "-m", "llmkit.server"'


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "said"),
    [
        (f"[{_SERVER}]", '["--host", "0.0.0.0", "--port", "80", ', None),
        (f'[{_SERVER}, "--host", "0.0.0.0", "--port", "80"]', "[", None),
        (f"[{_SERVER}, \"--port\", \"8000\"]", '["--host", "0.0.0.0", ', "{lines}: ENTRYPOINT + CMD does not run the "
         "server with --port 80"),
        (f"[{_SERVER}]", '["--port", "80", ', "{lines}: ENTRYPOINT + CMD does not bind --host "
         "0.0.0.0 (unreachable from outside)"),
        (f'[{_SERVER}, "--engine", "vllm"]', '["--host", "0.0.0.0", "--port", "80", ',
         "{lines}: ENTRYPOINT + CMD runs --engine vllm, manifest.json says builtin"),
        ("/opt/venv/bin/python -m llmkit.server", '["--host", "0.0.0.0", "--port", "80", ',
         ": line {entrypoint}: ENTRYPOINT is not in exec form (a JSON array): Docker runs it with /bin/sh -c and "
         "drops CMD"),
        # wrappers that run their arguments: the server is what they run
        ('["tini", "--"]', f'[{_SERVER}, "--host", "0.0.0.0", "--port", "80", ', None),
        ('["/usr/bin/tini", "-g", "-p", "SIGTERM", "--"]', f'[{_SERVER}, "--host", "0.0.0.0", "--port", "80", ', None),
        ('["dumb-init", "--"]', f'[{_SERVER}, "--host", "0.0.0.0", "--port", "80", ', None),
        ('["/usr/bin/env"]', f'[{_SERVER}, "--host", "0.0.0.0", "--port", "80", ', None),
        (f'["tini", "--", {_SERVER}]', '["--host", "0.0.0.0", "--port", "80", ', None),
        ('["tini", "--"]', f'[{_SERVER}, "--host", "0.0.0.0", "--port", "8000", ',
         "{lines}: ENTRYPOINT + CMD does not run the server with --port 80"),
        ('["/usr/bin/env", "HF_HUB_OFFLINE=0"]', f'[{_SERVER}, "--host", "0.0.0.0", "--port", "80", ',
         " line {entrypoint}: an ENTRYPOINT runs instead of the server, with CMD as its arguments (the generated "
         "Dockerfile has none, or `ENTRYPOINT []`)"),
    ],
)  # fmt: skip
def test_an_entrypoint_and_cmd_are_read_as_the_one_command_docker_runs(
    good_zip, tmp_path, rewrite_zip, entrypoint, cmd, said
):
    """`ENTRYPOINT ["python", "-m", "llmkit.server"]` + `CMD ["--host", "0.0.0.0", ...]` is one argv to Docker, but
    verify read the CMD alone: "CMD does not bind --host 0.0.0.0", "an ENTRYPOINT runs instead of the server". An
    init that runs its arguments (`ENTRYPOINT ["tini", "--"]` + the server's CMD) was said to run instead of it."""
    dockerfile = _dockerfile(good_zip)
    served = f'CMD [{_SERVER}, "--host", "0.0.0.0", "--port", "80", '
    assert served in dockerfile
    edited = dockerfile.replace(served, f"ENTRYPOINT {entrypoint}\nCMD {cmd}")
    line = _cmd_line(good_zip)
    problems = _verify_dockerfile(good_zip, tmp_path, rewrite_zip, edited)
    expected = (
        [] if said is None else ["Dockerfile" + said.format(lines=f" lines {line} and {line + 1}", entrypoint=line)]
    )
    assert problems == expected


_OWN_SERVER = {"main.py": b"from fastapi import FastAPI\n\napp = FastAPI()\n"}


@pytest.mark.parametrize(
    ("cmd", "said"),
    [
        ('["/opt/venv/bin/uvicorn", "main:app", "--host", "0.0.0.0", "--port", "80"]', None),
        ('["/opt/venv/bin/python", "-m", "uvicorn", "main:app", "--host", "0.0.0.0", "--port", "80"]', None),
        ('["/opt/venv/bin/uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000"]',
         "CMD does not run the server with --port 80"),
        ('["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "80"]',
         "CMD runs uvicorn, which is in none of the environments the Dockerfile makes: /opt/venv/bin (none of them on "
         "ENV PATH)"),
    ],
)  # fmt: skip
def test_a_server_of_the_zips_own_is_said_to_be_unchecked_not_refused(
    good_zip, tmp_path, rewrite_zip, caplog, cmd, said
):
    """`CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "80"]` with the zip's own main.py (the 2023 sample
    submissions' shape) was refused: 'names no --model', and its venv's uvicorn 'not installed'. What it loads
    cannot be known here: a warning says so, and its port, host and program are still checked."""
    from rich.console import Console

    from llmkit.submit.smoke import run_smoke
    from llmkit.submit.summary import summarize

    dockerfile = _dockerfile(good_zip).replace("COPY llmkit/ llmkit/", "COPY main.py ./")
    line = _cmd_line(good_zip)
    edited = dockerfile.rpartition("\nCMD [")[0] + f"\nCMD {cmd}\n"
    zip_path = rewrite_zip(good_zip, tmp_path / "own.zip", {"Dockerfile": edited.encode(), **_OWN_SERVER})
    with caplog.at_level("WARNING", logger="llmkit.submit.verify"):
        problems = verify_submission(zip_path, lint=False)
    assert problems == ([] if said is None else [f"Dockerfile line {line}: {said}"])
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"Dockerfile line {line}: CMD runs `") and "not llmkit's server" in warning, warning
    assert "(manifest.json names HuggingFaceTB/SmolLM2-135M-Instruct) cannot be checked here" in warning
    if said is None:  # the smoke test cannot start it: skipped, said why, and not a failure
        report = run_smoke(zip_path, docker=False)
        assert report.results == [] and report.skipped == warning
        console = Console(file=io.StringIO(), width=300)
        assert summarize(zip_path, problems=problems, smoke=True, console=console) == 0
        assert "smoke test: not run: Dockerfile line" in console.file.getvalue()


@pytest.mark.parametrize(
    ("cmd", "env", "said", "unnamed"),
    [
        ('["/opt/venv/bin/python", "main.py"]', "", None, "--port or --host"),
        ('["/opt/venv/bin/python", "main.py", "--host", "0.0.0.0"]', "", None, "--port"),
        ('["/opt/venv/bin/python", "main.py", "--port", "8000"]', "", "CMD does not run the server with --port 80",
         "--host"),
        ('["/opt/venv/bin/python", "main.py", "--host", "127.0.0.1", "--port", "80"]', "",
         "CMD does not bind --host 0.0.0.0 (unreachable from outside)", None),
        ('["/opt/venv/bin/uvicorn", "main:app", "--port", "80"]', "",
         "CMD does not bind --host 0.0.0.0 (it binds 127.0.0.1, uvicorn's default where neither CMD nor ENV names "
         "one: unreachable from outside)", None),
        ('["/opt/venv/bin/python", "-m", "uvicorn", "main:app", "--host", "0.0.0.0"]', "",
         "CMD does not run the server with --port 80 (it binds 8000, uvicorn's default where neither CMD nor ENV "
         "names one)", None),
        ('["/opt/venv/bin/uvicorn", "main:app"]', "ENV UVICORN_HOST=0.0.0.0 UVICORN_PORT=80\n", None, None),
    ],
)  # fmt: skip
def test_a_server_of_the_zips_own_that_names_no_port_or_host_is_warned_of(
    good_zip, tmp_path, rewrite_zip, caplog, cmd, env, said, unnamed
):
    """`CMD ["python", "main.py"]`, whose server sets its port and host in its code, was refused: "does not run the
    server with --port 80", "does not bind --host 0.0.0.0". What the code binds cannot be known from the Dockerfile:
    a warning says what the harness needs. A --port or --host it names is still held to 80 and 0.0.0.0, and uvicorn
    without them to its defaults (127.0.0.1:8000), which its ENV UVICORN_HOST and UVICORN_PORT replace."""
    dockerfile = _dockerfile(good_zip).replace("COPY llmkit/ llmkit/", "COPY main.py ./")
    edited = dockerfile.rpartition("\nCMD [")[0] + f"\n{env}CMD {cmd}\n"
    line = len(edited.splitlines())
    zip_path = rewrite_zip(good_zip, tmp_path / "own.zip", {"Dockerfile": edited.encode(), **_OWN_SERVER})
    with caplog.at_level("WARNING", logger="llmkit.submit.verify"):
        problems = verify_submission(zip_path, lint=False)
    assert problems == ([] if said is None else [f"Dockerfile line {line}: {said}"])
    warnings = [record.getMessage() for record in caplog.records if "which names no" in record.getMessage()]
    if unnamed is None:
        assert warnings == []
    else:
        assert warnings == [
            f"Dockerfile line {line}: CMD runs `{shlex.join(json.loads(cmd))}`, which names no {unnamed}: whether it "
            "listens on 0.0.0.0 at port 80 (the port the harness maps to 8080) cannot be checked from the Dockerfile"
        ]


def _cmd_line(zip_path) -> int:
    return next(n for n, text in enumerate(_dockerfile(zip_path).splitlines(), 1) if text.startswith("CMD"))


def test_the_shipped_dockerignore_sends_docker_build_only_what_the_serving_image_copies():
    """training/ (the training image's own context: a wheel, data) and manifest.json went to docker build too."""
    from llmkit.core.assets import DOCKER_DIR

    shipped = (DOCKER_DIR / ".dockerignore").read_text()
    names = {"training/config.yml", "training/data/rows.jsonl", "manifest.json", "Dockerfile", "requirements.txt"}
    names |= {"llmkit/server/app.py", "model/config.json", "model/model.safetensors", ".dockerignore"}
    assert dockerignored(names, shipped) == {"training/config.yml", "training/data/rows.jsonl", "manifest.json"}


def test_a_copy_source_that_dockerignore_keeps_out_is_reported(good_zip, tmp_path, rewrite_zip):
    """docker build sends the zip less what .dockerignore names; a COPY of a file it keeps out fails the build."""
    dockerfile = _dockerfile(good_zip).splitlines()
    requirements, package = (next(n for n, t in enumerate(dockerfile, 1) if t.startswith(f"COPY {s}")) for s in
                             ("requirements.txt", "llmkit/"))  # fmt: skip
    ignore = "# mine\n*.txt\n/llmkit\n!llmkit/server/**\n"  # the package is let back in, in part
    kept_in_part = rewrite_zip(good_zip, tmp_path / "part.zip", {".dockerignore": ignore.encode()})
    first, *imports = verify_submission(kept_in_part, lint=False)
    assert first == (
        f"Dockerfile line {requirements}: COPY source requirements.txt is kept out of the build by .dockerignore"
    )  # and the server's imports of the rest of the package: COPY llmkit/ copies only what is let back in
    kept_out = r"llmkit/server/\S+\.py:\d+: imports llmkit\.(core|config|data)\S*, which is kept out of the build by "
    assert imports and all(re.fullmatch(kept_out + r"\.dockerignore", p) for p in imports), imports
    # a file inside a copied folder: the COPY source is there, the module the server imports is not
    app = rewrite_zip(good_zip, tmp_path / "app.zip", {"Dockerfile.dockerignore": b"llmkit/server/app.py\n"})
    problems = verify_submission(app, lint=False)
    kept_out = (
        r"llmkit/server/\w+\.py:\d+: imports llmkit\.server\.app(\.create_app)?, which is kept out of the build by "
    )
    assert problems and all(re.fullmatch(kept_out + r"Dockerfile\.dockerignore", p) for p in problems), problems
    everything = rewrite_zip(good_zip, tmp_path / "all.zip", {".dockerignore": b"**\n!Dockerfile\n"})
    assert verify_submission(everything, lint=False) == [
        f"Dockerfile line {requirements}: COPY source requirements.txt is kept out of the build by .dockerignore",
        f"Dockerfile line {package}: COPY source llmkit/ is kept out of the build by .dockerignore",
        f"Dockerfile line {_cmd_line(good_zip)}: CMD runs -m llmkit.server, but llmkit.server.__main__, which is kept "
        "out of the build by .dockerignore",
    ]
    back_in = rewrite_zip(good_zip, tmp_path / "back.zip", {".dockerignore": b"**\n!requirements.txt\n!llmkit\n"})
    assert verify_submission(back_in, lint=False) == []
    # BuildKit's Dockerfile.dockerignore wins over .dockerignore, and is no second Dockerfile
    own = rewrite_zip(good_zip, tmp_path / "own.zip", {"Dockerfile.dockerignore": b"*.txt\n"})
    assert verify_submission(own, lint=False) == [
        f"Dockerfile line {requirements}: COPY source requirements.txt is kept out of the build by "
        "Dockerfile.dockerignore"
    ]
    # bundled weights the ignore file keeps out: the image would serve without them
    weights = {"model/model.safetensors": b"\x00" * 64, ".dockerignore": b"**/*.safetensors\n"}
    bundled = rewrite_zip(good_zip, tmp_path / "weights.zip", weights)
    manifest = json.loads(zipfile.ZipFile(bundled).read("manifest.json")) | {"bundled_weights": True}
    bundled = rewrite_zip(bundled, tmp_path / "bundled.zip", {"manifest.json": json.dumps(manifest).encode()})
    assert verify_submission(bundled, lint=False) == [
        "model/model.safetensors: a file of the bundled model kept out of the build by .dockerignore"
    ]
    # a module named after the Dockerfile is no second Dockerfile
    module = rewrite_zip(good_zip, tmp_path / "module.zip", {"llmkit/server/dockerfile.py": b"X = 1\n"})
    assert verify_submission(module, lint=False) == []


@pytest.mark.parametrize(
    ("ignore", "kept_out"),
    [
        ("*.md", {"README.md"}),  # `*` stays within one segment: docs/a/b.md is not at the root
        ("**/*.md", {"README.md", "docs/a/b.md"}),
        ("docs", {"docs/a/b.md"}),  # a folder keeps out what it holds
        ("docs/?/b.md\n", {"docs/a/b.md"}),
        ("[a-z]*.zip", {"a.zip"}),
        ("# a.zip\n\n  a.zip  ", {"a.zip"}),  # comments and blank lines skipped, spaces trimmed
        ("model\n!model/keep.json", {"model/w.safetensors"}),
        ("!model/keep.json\nmodel", {"model/w.safetensors", "model/keep.json"}),  # the last matching line wins
        ("/./model/../a.zip", {"a.zip"}),  # cleaned as Docker cleans it
        ("\ufeffa.zip", {"a.zip"}),  # a UTF-8 BOM is dropped
        ("  #a.zip", set()),  # a comment only where the line starts: this is a pattern, matching nothing here
        ("[!a]*.md", set()),  # Go negates with ^ only: "!" is one of the class's characters
        ("[^a]*.md", {"README.md"}),
    ],
)
def test_dockerignore_patterns_read_as_docker_reads_them(ignore, kept_out):
    names = {"a.zip", "README.md", "docs/a/b.md", "model/w.safetensors", "model/keep.json", "Dockerfile"}
    assert dockerignored(names, ignore) == kept_out


def test_unpinned_requirements_are_reported(good_zip, tmp_path, rewrite_zip):
    with zipfile.ZipFile(good_zip) as archive:
        requirements = archive.read("requirements.txt").decode()
    line = len(requirements.splitlines())
    extra = "six==1.16.0 \\\n    --hash=sha256:0123\n\ntransformers\ntransformers>=5\ngit+https://github.com/a/b\nnumpy==2.*\n"
    bad = rewrite_zip(good_zip, tmp_path / "req.zip", {"requirements.txt": (requirements + extra).encode()})
    assert verify_submission(bad, lint=False) == [
        f"requirements.txt line {line + 4}: transformers is not pinned with ==",
        f"requirements.txt line {line + 5}: transformers>=5 is not pinned with ==",
        f"requirements.txt line {line + 6}: git+https://github.com/a/b is not pinned with ==",
        f"requirements.txt line {line + 7}: numpy==2.* is not pinned with ==",  # a wildcard is a range
    ]


def test_a_package_pinned_to_two_versions_is_reported(good_zip, tmp_path, rewrite_zip):
    """pip refuses two pins of one package at docker build; names compare as PEP 503 normalises them, the same pin
    twice installs, and markers that never hold together may pin two versions."""
    with zipfile.ZipFile(good_zip) as archive:
        requirements = archive.read("requirements.txt").decode()
    line = len(requirements.splitlines())
    extra = (
        "Tiny-Torch==2.13.0\ntiny_torch==2.0.0\ntiny-six==1.16.0\ntiny-six==1.16\nzope.tiny==6.0\nZope_Tiny==7.0\n"
        'tiny-numba==0.59.0; python_version < "3.11"\ntiny-numba==0.60.0; python_version >= "3.11"\n'
    )
    bad = rewrite_zip(good_zip, tmp_path / "req.zip", {"requirements.txt": (requirements + extra).encode()})
    assert verify_submission(bad, lint=False) == [
        f"requirements.txt lines {line + 1} and {line + 2}: tiny-torch is pinned twice (==2.13.0 and ==2.0.0); "
        "pip refuses both at docker build",
        f"requirements.txt lines {line + 5} and {line + 6}: zope-tiny is pinned twice (==6.0 and ==7.0); pip "
        "refuses both at docker build",
    ]


def test_a_name_twice_in_the_zip_is_reported(good_zip, tmp_path):
    duplicated = tmp_path / "dup.zip"
    with zipfile.ZipFile(good_zip) as source, zipfile.ZipFile(duplicated, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            target.writestr("Dockerfile", b"FROM scratch\n")
    problems = verify_submission(duplicated, lint=False)
    assert "Dockerfile: 2 entries of that name in the zip (unzip keeps one of them)" in problems
    assert not any("no Dockerfile" in problem for problem in problems), problems  # it is there: twice


def test_symbolic_links_are_reported_by_name(good_zip, tmp_path):
    links = {"requirements.txt": "/etc/passwd", "llmkit/extra": "/etc"}  # a file, and a folder
    hostile = tmp_path / "links.zip"
    with zipfile.ZipFile(good_zip) as source, zipfile.ZipFile(hostile, "w") as target:
        for info in source.infolist():
            if info.filename not in links:
                target.writestr(info, source.read(info))
        for name, points_to in links.items():
            link = zipfile.ZipInfo(name)
            link.create_system = 3  # unix
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            target.writestr(link, points_to)  # a link's data is its target's path
    problems = verify_submission(hostile, lint=False)
    why = "unzip recreates it, so the build would not see what is checked"
    for name in links:
        assert f"{hostile}: {name}: a symbolic link ({why})" in problems, problems
    if shutil.which("unzip"):  # what the harness's unzip makes of it: links, not the files Python would extract
        subprocess.run(["unzip", "-q", str(hostile), "-d", str(tmp_path / "unzipped")], check=True)
        assert all((tmp_path / "unzipped" / name).is_symlink() for name in links)


def test_the_projects_zips_hold_no_link(good_zip, tmp_path):
    with zipfile.ZipFile(good_zip) as archive:
        assert not any(is_symlink(info) for info in archive.infolist())
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "real.txt").write_text("hello")
    (folder / "linked.txt").symlink_to("real.txt")
    write_zip(folder, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert not any(is_symlink(info) for info in archive.infolist())
        assert archive.read("linked.txt") == b"hello"  # the target's bytes, as a regular file


def _with_entry(good_zip, path, name, data, *, compress=zipfile.ZIP_DEFLATED, flags=0, method=None, size=None):
    """The good zip plus one last entry, its central directory header then patched (flags, method, declared size)."""
    with zipfile.ZipFile(good_zip) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr(name, data, compress_type=compress)
    raw = bytearray(path.read_bytes())
    header = raw.rfind(b"PK\x01\x02")  # the last entry's central directory header
    raw[header + 8 : header + 10] = (int.from_bytes(raw[header + 8 : header + 10], "little") | flags).to_bytes(
        2, "little"
    )
    if method is not None:
        raw[header + 10 : header + 12] = method.to_bytes(2, "little")
    if size is not None:  # compressed and uncompressed
        raw[header + 20 : header + 28] = size.to_bytes(4, "little") * 2
    path.write_bytes(bytes(raw))
    return path


def test_damaged_entries_are_reported_not_raised(good_zip, tmp_path):
    cases = {
        "encrypted": _with_entry(good_zip, tmp_path / "e.zip", "notes.txt", b"hello", flags=0x1),
        "method": _with_entry(good_zip, tmp_path / "m.zip", "notes.txt", b"hello", method=99),
        "short": _with_entry(
            good_zip, tmp_path / "s.zip", "w.bin", b"7 bytes", compress=zipfile.ZIP_STORED, size=0xFFFFFFF0
        ),  # fmt: skip
    }
    corrupt = _with_entry(good_zip, tmp_path / "c.zip", "notes.txt", b"hello " * 100)
    raw = bytearray(corrupt.read_bytes())
    start = raw.rfind(b"PK\x03\x04") + 30 + len("notes.txt")  # the last entry's deflate data
    raw[start : start + 8] = b"\xff" * 8
    corrupt.write_bytes(bytes(raw))
    cases["corrupt"] = corrupt
    reasons = {
        "encrypted": "encrypted",
        "method": "That compression method is not supported",
        "short": "its data ends before the size its header gives",
        "corrupt": "Error -3 while decompressing data: invalid block type",
    }
    for what, path in cases.items():
        name = "w.bin" if what == "short" else "notes.txt"
        assert f"{path}: {name}: cannot be read ({reasons[what]})" in verify_submission(path, lint=False)


def test_a_zip_bomb_is_not_read(good_zip, tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(good_zip) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        with target.open("notes.txt", "w") as stream:
            for _ in range(80):
                stream.write(bytes(1 << 20))
    assert bomb.stat().st_size < 2 << 20
    assert f"{bomb}: notes.txt: cannot be read (80 MiB, over the 64 MiB a file other than weights may hold)" in (
        verify_submission(bomb, lint=False)
    )


def test_a_missing_zip_is_one_problem(tmp_path):
    missing = tmp_path / "nope.zip"
    problems = verify_submission(missing)
    assert len(problems) == 1 and problems[0].startswith(f"{missing}: cannot read it as a zip")


def test_a_folder_given_as_the_zip_is_said_to_be_a_folder(tmp_path):
    """`verify-submission .` said "cannot read it as a zip ([Errno 21] Is a directory)" and ". (missing)"."""
    command = [sys.executable, "-m", "llmkit.cli", "verify-submission", "."]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "COLUMNS": "300"}
    )
    assert done.returncode == 1 and "problem: .: a folder, not a zip" in done.stderr, done.stderr
    assert ". (a folder, not a zip)" in done.stdout and "missing" not in done.stdout, done.stdout


def test_a_damaged_manifest_is_a_problem_not_a_traceback(good_zip, tmp_path, rewrite_zip):
    manifest = zipfile.ZipFile(good_zip).read("manifest.json")
    without = rewrite_zip(good_zip, tmp_path / "without.zip", {"manifest.json": None})
    damaged = _with_entry(without, tmp_path / "damaged.zip", "manifest.json", manifest, flags=0x1)
    command = [sys.executable, "-m", "llmkit.cli", "verify-submission", str(damaged)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"problem: {damaged}: manifest.json: cannot be read (encrypted)" in done.stderr


def test_the_servers_own_code_is_checked_for_what_it_imports(good_zip, tmp_path, rewrite_zip):
    """Only the smoke test noticed a server that could not start: a module gone, or a CMD naming another."""
    dockerfile = _dockerfile(good_zip)
    cmd_line = next(n for n, text in enumerate(dockerfile.splitlines(), 1) if text.startswith("CMD"))
    other = dockerfile.replace('"llmkit.server"', '"llmkit.serverx"').encode()
    renamed = rewrite_zip(good_zip, tmp_path / "cmd.zip", {"Dockerfile": other})
    assert verify_submission(renamed, lint=False) == [
        f"Dockerfile line {cmd_line}: CMD runs -m llmkit.serverx, but the zip has no llmkit.serverx"
    ]
    no_main = rewrite_zip(good_zip, tmp_path / "main.zip", {"llmkit/server/__main__.py": None})
    assert verify_submission(no_main, lint=False) == [
        f"Dockerfile line {cmd_line}: CMD runs -m llmkit.server, but the zip has no llmkit.server.__main__"
    ]
    gone = rewrite_zip(good_zip, tmp_path / "gone.zip", {"llmkit/server/app.py": None})
    problems = verify_submission(gone, lint=False)
    pattern = r"llmkit/server/\w+\.py:\d+: imports llmkit\.server\.app, which is not in the zip"
    assert problems and all(re.fullmatch(pattern, p) for p in problems), problems
    broken = rewrite_zip(good_zip, tmp_path / "broken.zip", {"llmkit/server/extra.py": b"def f(:\n"})
    [problem] = verify_submission(broken, lint=False)
    assert problem.startswith("llmkit/server/extra.py: not valid Python (")
    optional = (  # what a module needs only to type-check, or can do without
        b"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llmkit.train.run import train\n"
        b"try:\n    import llmkit.plugins\nexcept ImportError:\n    pass\nfrom . import app\n"
    )
    fine = rewrite_zip(good_zip, tmp_path / "fine.zip", {"llmkit/server/extra.py": optional})
    assert verify_submission(fine, lint=False) == []
    # the else of an optional import runs when the import worked: what it imports is needed (it was skipped)
    after = b"try:\n    import json\nexcept ImportError:\n    pass\nelse:\n    import llmkit.gone\n"
    needed = rewrite_zip(good_zip, tmp_path / "else.zip", {"llmkit/server/extra.py": after})
    assert verify_submission(needed, lint=False) == [
        "llmkit/server/extra.py:6: imports llmkit.gone, which is not in the zip"
    ]
    # `from package import name`: name is a module of the zip's or something the package defines
    names = (
        b"from . import engine, gone\nfrom llmkit.server.app import create_app, nothing\n"
        b"from llmkit.server.engine import Engine\n"
    )
    named = rewrite_zip(good_zip, tmp_path / "names.zip", {"llmkit/server/extra.py": names})
    assert verify_submission(named, lint=False) == [
        "llmkit/server/extra.py:1: imports llmkit.server.gone, which neither llmkit.server defines nor the zip has",
        "llmkit/server/extra.py:2: imports llmkit.server.app.nothing, which neither llmkit.server.app defines nor the "
        "zip has",
    ]
    # a module __getattr__ (PEP 562, as llmkit.data's lazy names) supplies any name; a broken file is reported once
    lazy = {
        "llmkit/server/lazy.py": b"def __getattr__(name):\n    return 1\n",
        "llmkit/server/late.py": b"def _init():\n    global LIMIT\n    LIMIT = 3\n\n_init()\n",  # bound in a function
        "llmkit/server/other.py": b"from llmkit.server.late import LIMIT\n",
        "llmkit/server/broken.py": b"def f(:\n",
        "llmkit/server/extra.py": b"from llmkit.server.lazy import anything\nfrom llmkit.server.broken import f\n",
    }
    [problem] = verify_submission(rewrite_zip(good_zip, tmp_path / "lazy.zip", lazy), lint=False)
    assert problem.startswith("llmkit/server/broken.py: not valid Python (")


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (
            b"x = 1\nfrom __future__ import annotations\n",
            "from __future__ imports must occur at the beginning of the file",
        ),
        (b"import json\n\nreturn json\n", "'return' outside function"),
    ],
)
def test_a_file_that_parses_but_does_not_compile_is_not_valid_python(good_zip, tmp_path, rewrite_zip, source, why):
    """Python raises these when it imports the file (the server would not start), though ast.parse reads it."""
    broken = rewrite_zip(good_zip, tmp_path / "compile.zip", {"llmkit/server/extra.py": source})
    last_line = source.count(b"\n")
    assert verify_submission(broken, lint=False) == [
        f"llmkit/server/extra.py: not valid Python ({why} (extra.py, line {last_line}))"
    ]


def _edited_cmd(zip_path, tmp_path, rewrite_zip, old: str, new: str):
    """The zip with its Dockerfile's CMD edited (`old` -> `new` in the CMD's JSON), its manifest re-hashed."""
    with zipfile.ZipFile(zip_path) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD ["))
    assert old in cmd
    edited = dockerfile.replace(cmd, cmd.replace(old, new))
    return rewrite_zip(zip_path, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})


@pytest.mark.parametrize(
    ("bundled", "old", "new", "said"),
    [
        (
            True,
            '"/opt/model"',
            '"/opt/modell"',
            "--model /opt/modell, but the Dockerfile copies the bundled model/ to /opt/model (line ",
        ),
        (True, '"--model", "/opt/model"', '"--model=/opt/model/"', None),  # the same folder, written otherwise
        (
            False,
            '"HuggingFaceTB/SmolLM2-135M-Instruct"',
            '"HuggingFaceTB/SmolLM2-1.7B-Instruct"',
            "--model HuggingFaceTB/SmolLM2-1.7B-Instruct, but the Dockerfile downloads "
            "HuggingFaceTB/SmolLM2-135M-Instruct (manifest.json's model)",
        ),
        (False, '"--revision", "', '"--revision", "v2', "--revision v2"),
        (
            False,
            ', "--revision", "main"',
            "",
            "--model HuggingFaceTB/SmolLM2-135M-Instruct has no --revision, but manifest.json pins "
            "HuggingFaceTB/SmolLM2-135M-Instruct at revision main: add --revision main",
        ),
        (False, '"--revision", "main"', '"--revision=main"', None),
        (
            True,
            '"/opt/venv/bin/python", "-m"',
            '"python", "-m"',
            "runs python, but the Dockerfile installs /opt/venv/bin/python, /opt/venv/bin/python3, "
            "/opt/venv/bin/python3.11 (none of them on ENV PATH)",
        ),
        (
            True,
            '"/opt/venv/bin/python", "-m"',
            '"/opt/venv/bin/pythonX", "-m"',
            "runs /opt/venv/bin/pythonX, but the Dockerfile installs /opt/venv/bin/python, ",
        ),
        (True, '"/opt/venv/bin/python", "-m"', '"/opt/venv/bin/python3", "-m"', None),
        (
            True,
            '"--model", "/opt/model"',
            '"--model", "/opt/model", "--adapter", "/opt/adapter"',
            "--adapter /opt/adapter, but manifest.json names no adapter",
        ),
    ],
)
def test_the_cmd_serves_what_the_dockerfile_puts_in_the_image(
    bundled_zip, good_zip, tmp_path, rewrite_zip, bundled, old, new, said
):
    """The CMD's --model and interpreter were never compared with the Dockerfile: a CMD serving /opt/modell (the
    weights are copied to /opt/model), another hub id than the build downloads (HF_HUB_OFFLINE=1 after it), or a
    python the image lacks passed, and the smoke test ran the manifest's model with its own python."""
    zip_path = _edited_cmd(bundled_zip if bundled else good_zip, tmp_path, rewrite_zip, old, new)
    problems = verify_submission(zip_path, lint=False)
    if said is None:
        assert problems == []
    else:
        [problem] = problems
        assert re.match(r"Dockerfile line \d+: CMD ", problem) and said in problem, problem


def test_python_on_path_is_the_venvs_when_env_path_names_it(bundled_zip, tmp_path, rewrite_zip):
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    dockerfile = dockerfile.replace('CMD ["/opt/venv/bin/python"', 'CMD ["python"')
    on_path = dockerfile.replace("ENV HF_HUB_OFFLINE=1", "ENV HF_HUB_OFFLINE=1 PATH=/opt/venv/bin:$PATH")
    assert on_path != dockerfile
    zip_path = rewrite_zip(bundled_zip, tmp_path / "on-path.zip", {"Dockerfile": on_path.encode()})
    assert verify_submission(zip_path, lint=False) == []
    # a Dockerfile of the user's own that makes no venv installs into its base image's python, which cannot be
    # read here: its CMD's python is taken on trust
    system = re.sub(
        r"    && uv venv --python \S+ /opt/venv \\\n    && uv pip install --python /opt/venv/bin/python ",
        "    && uv pip install --system ",
        dockerfile,
    ).replace('CMD ["/opt/venv/bin/python"', 'CMD ["python3"')
    assert "/opt/venv" not in system, system
    zip_path = rewrite_zip(bundled_zip, tmp_path / "system.zip", {"Dockerfile": system.encode()})
    assert verify_submission(zip_path, lint=False) == []


def test_bundled_files_the_server_would_refuse_at_start_up_are_reported(
    bundled_zip, tiny_model_dir, tmp_path, rewrite_zip
):
    """verify-submission (and so `submission --no-smoke` on a zip) called these good: a bundled model without a
    tokenizer, a bundled adapter that does not fit the model (the server's start-up: "has no place in the base")."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.submit.package import build_submission

    with zipfile.ZipFile(bundled_zip) as archive:
        tokenizer = [name for name in archive.namelist() if name.startswith("model/tokenizer")]
    no_tokenizer = rewrite_zip(bundled_zip, tmp_path / "no-tokenizer.zip", dict.fromkeys(tokenizer))
    [problem] = verify_submission(no_tokenizer, lint=False)
    assert problem.startswith("model/: the server would refuse it at start-up: model holds no tokenizer"), problem
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    fits = build_submission(
        "4090", model=str(tiny_model_dir), adapter=str(tmp_path / "lora"), bundle_weights=True, out_root=tmp_path
    )
    assert verify_submission(fits, lint=False) == []
    with zipfile.ZipFile(fits) as archive:
        config = json.loads(archive.read("model/config.json"))
    other = json.dumps(config | {"num_hidden_layers": 1}).encode()  # the base is another model: one layer
    misfit = rewrite_zip(fits, tmp_path / "misfit.zip", {"model/config.json": other})
    [problem] = verify_submission(misfit, lint=False)
    assert problem.startswith("model/: the server would refuse it at start-up: Adapter adapter does not fit base "), (
        problem
    )
    assert "has no place in the base" in problem


def test_a_bundled_model_cut_short_is_reported(bundled_zip, tmp_path, rewrite_zip):
    """verify-submission said "no problem" of a zip whose model.safetensors was cut short, which the server refuses;
    only its header is unpacked to check it (a sparse stand-in of the entry's size)."""
    with zipfile.ZipFile(bundled_zip) as archive:
        weights = archive.read("model/model.safetensors")
    half = rewrite_zip(bundled_zip, tmp_path / "half.zip", {"model/model.safetensors": weights[: len(weights) // 2]})
    [problem] = verify_submission(half, lint=False)
    said = "model/: the server would refuse it at start-up: model/model.safetensors cannot be read as safetensors"
    assert problem.startswith(said), problem


def test_a_zip_of_the_submissions_folder_itself_is_said_so(bundled_zip, tmp_path):
    """A zip re-made with its folder inside (`zip -r x.zip 4090_submission_1`) got three problems, one of them
    "a weight file, but bundling was not asked for" (the manifest saying so was one folder down)."""
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(bundled_zip) as source, zipfile.ZipFile(nested, "w") as target:
        target.writestr("4090_submission_1/", b"")
        for name in source.namelist():
            target.writestr(f"4090_submission_1/{name}", source.read(name))
    assert verify_submission(nested, lint=False) == [
        f"{nested}: every file is inside 4090_submission_1/, so the zip's root has no Dockerfile or manifest.json: "
        "zip what 4090_submission_1/ holds, not the folder (or hand in the zip `llmkit submission` wrote beside it)"
    ]
