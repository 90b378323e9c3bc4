"""The Dockerfile reader: COPY/ADD lines read as BuildKit's parser reads them, one reader for verify and the image."""

from __future__ import annotations

import zipfile

import pytest

from llmkit.submit.dockerfile import DockerfileError, copy_line, copy_targets, parse_dockerfile
from llmkit.submit.verify import verify_submission


def _copy(value: str):
    [inst] = parse_dockerfile(f"COPY {value}\n")
    return copy_line(inst)


@pytest.mark.parametrize(
    ("value", "flags", "sources", "destination"),
    [
        # a line that starts with `[` but is not valid JSON is shell form: words split at whitespace, each a path
        ("['model/', '/opt/model/']", {}, ["['model/',"], "'/opt/model/']"),
        ('["model/", "/opt/model/"] extra', {}, ['["model/",', '"/opt/model/"]'], "extra"),
        ('["model/", "/opt/model/"]', {}, ["model/"], "/opt/model/"),
        ('["my model/", "/opt/model/"]', {}, ["my model/"], "/opt/model/"),  # a space inside a JSON path
        # flags come first, before either form; a flag without a value is ""
        (
            '--chown=10001:10001 --chmod=644 --link ["model/", "/opt/model/"]',
            {"--chown": "10001:10001", "--chmod": "644", "--link": ""},
            ["model/"],
            "/opt/model/",
        ),
        ("--parents --link model/ tok.json /opt/", {"--parents": "", "--link": ""}, ["model/", "tok.json"], "/opt/"),
        ("--from=builder /out /opt/out", {"--from": "builder"}, ["/out"], "/opt/out"),
        # a `--` word after the first path is a path; a lone `--` ends the flags
        ("a --b /c/", {}, ["a", "--b"], "/c/"),
        ("-- --odd /c/", {}, ["--odd"], "/c/"),
        ("requirements.txt main.py server/ /app/", {}, ["requirements.txt", "main.py", "server/"], "/app/"),
        ("lonely", {}, [], None),
    ],
)
def test_copy_lines_are_read_as_buildkit_reads_them(value, flags, sources, destination):
    line = _copy(value)
    assert (line.flags, line.sources, line.destination) == (flags, sources, destination)


def test_a_json_array_of_other_than_strings_is_refused_as_docker_refuses_it():
    with pytest.raises(DockerfileError, match="line 2: COPY's JSON array holds a value that is not a string"):
        parse_dockerfile('FROM python:3.11\nCOPY ["model/", 1]\n')


def test_json_form_with_flags_puts_the_bundled_folder_where_the_cmd_serves_it():
    stage = parse_dockerfile('FROM python:3.11\nWORKDIR /app\nCOPY --chown=1000:1000 ["model/", "model/"]\n')
    assert copy_targets(stage) == [("model", "/app/model", stage[2])]


def _with_dockerfile(zip_path, tmp_path, rewrite_zip, old: str, new: str):
    with zipfile.ZipFile(zip_path) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    assert old in dockerfile
    edited = dockerfile.replace(old, new)
    return rewrite_zip(zip_path, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        # single quotes are not JSON: docker build reads the words as paths, and finds no `['requirements.txt',`
        (
            "COPY requirements.txt ./",
            "COPY ['requirements.txt', './']",
            ["COPY source ['requirements.txt', is not in the zip"],
        ),
        # flags before a JSON array: the array is the paths
        ("COPY model/ /opt/model/", 'COPY --chown=10001 --link ["model/", "/opt/model/"]', []),
        ("COPY model/ /opt/model/", "COPY --chown=10001:10001 --chmod=755 --link model/ /opt/model/", []),
        ("COPY model/ /opt/model/", 'COPY ["model/", 2]', ["COPY's JSON array holds a value that is not a string"]),
    ],
)
def test_verify_reads_copy_lines_as_docker_does(bundled_zip, tmp_path, rewrite_zip, old, new, said):
    """verify's build context read an invalid JSON form as no paths (so `['requirements.txt', './']` passed, and
    docker build fails on it), and a JSON form after flags as whitespace words (`["model/",` was not in the zip)."""
    problems = verify_submission(_with_dockerfile(bundled_zip, tmp_path, rewrite_zip, old, new), lint=False)
    assert len(problems) == len(said) and all(s in p for p, s in zip(problems, said, strict=True)), problems
