"""verify_submission catches what would fail the harness or leak: each planted fault is reported by name."""

from __future__ import annotations

import random
import string
import zipfile

import pytest

from llmkit.submit.verify import verify_submission


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


def test_shell_form_cmd_is_reported(good_zip, tmp_path, rewrite_zip):
    with zipfile.ZipFile(good_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    head, _, _ = dockerfile.rpartition("CMD [")
    shell = head + "CMD python -m llmkit.server --host 0.0.0.0 --port 80\n"
    problems = verify_submission(rewrite_zip(good_zip, tmp_path / "shell.zip", {"Dockerfile": shell.encode()}))
    assert any("CMD is not in exec form" in p for p in problems)


def test_weights_without_bundling_and_hash_mismatch(good_zip, tmp_path, rewrite_zip):
    with_weights = rewrite_zip(good_zip, tmp_path / "w.zip", {"model/model.safetensors": b"\x00" * 64})
    expected = "model/model.safetensors: a weight file, but bundling was not asked for"
    assert verify_submission(with_weights) == [expected]
    tampered = rewrite_zip(good_zip, tmp_path / "t.zip", {"llmkit/server/text.py": b"# changed\n"}, fix_manifest=False)
    assert verify_submission(tampered) == ["llmkit/server/text.py: its sha256 does not match manifest.json"]


def test_a_changed_weight_file_and_paths_outside_the_root(good_zip, tmp_path, rewrite_zip):
    listed = rewrite_zip(good_zip, tmp_path / "w.zip", {"model/model.safetensors": b"\x00" * 64})
    changed = rewrite_zip(listed, tmp_path / "c.zip", {"model/model.safetensors": b"\x01" * 64}, fix_manifest=False)
    assert verify_submission(changed) == [  # weights are hashed as a stream, not read whole
        "model/model.safetensors: its sha256 does not match manifest.json",
        "model/model.safetensors: a weight file, but bundling was not asked for",
    ]
    escaping = rewrite_zip(good_zip, tmp_path / "e.zip", {"../up.txt": b"x", "/etc/abs.txt": b"x", "a/../../b": b"x"})
    outside = [p for p in verify_submission(escaping) if "outside the zip's root" in p]
    assert outside == [f"{name}: a path outside the zip's root (unzip rewrites or skips it)" for name in
                       ["../up.txt", "/etc/abs.txt", "a/../../b"]]  # fmt: skip


def test_not_a_zip(tmp_path):
    path = tmp_path / "x.zip"
    path.write_text("not a zip")
    assert "cannot read it as a zip" in verify_submission(path)[0]
