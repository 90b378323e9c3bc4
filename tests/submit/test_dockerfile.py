"""The Dockerfile reader: COPY/ADD lines read as BuildKit's parser reads them, one reader for verify and the image."""

from __future__ import annotations

import re
import zipfile

import pytest

from llmkit.submit.dockerfile import DockerfileError, copy_line, copy_targets, parse_dockerfile, venv_pythons
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


@pytest.mark.parametrize(
    ("run", "pythons"),
    [
        ("python3 -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.txt", "/opt/venv python python3"),
        ("python3.11 -m venv --system-site-packages /opt/venv", "/opt/venv python python3 python3.11"),
        ("pip3 install virtualenv==20.24.0 && virtualenv /venv", "/venv python python3"),
        ("virtualenv -p python3.10 venv", "/app/venv python python3 python3.10"),  # relative to the WORKDIR
        ("python -m virtualenv --python=python3.12 /v", "/v python python3 python3.12"),
        ("conda create -y -p /opt/env python=3.11", "/opt/env python python3 python3.11"),
        ("micromamba create --prefix=/opt/mm -c conda-forge python=3.10", "/opt/mm python python3 python3.10"),
        ("conda create -y -n llm python=3.11 && conda clean -a", "/opt/conda/envs/llm python python3 python3.11"),
        ("conda env create -f environment.yml -n srv", "/opt/conda/envs/srv python python3"),
        ("uv venv", "/app/.venv python python3"),
        # no environment: a name inside the file, a package called virtualenv, packages in a folder
        ("conda env create -f environment.yml", ""),
        ("pip install virtualenv==20.24.0", ""),
        ("pip install --target /opt/deps -r requirements.txt", ""),
    ],
)
def test_the_environments_users_make_are_the_images_pythons(run, pythons):
    """Only `uv venv` and `python -m venv` were read: a CMD running the python of a virtualenv or conda env was
    taken on trust, whichever python it named."""
    folder, *names = pythons.split() or [""]
    stage = parse_dockerfile(f"FROM python:3.11\nWORKDIR /app\nRUN {run}\n")
    assert venv_pythons(stage) == {f"{folder}/bin/{name}" for name in names}


@pytest.mark.parametrize(
    ("copy", "pythons"),
    [
        ("COPY --from=build /opt/venv /opt/venv", "/opt/venv python python3 python3.11"),
        ("COPY --from=BUILD /opt/venv/ /srv/env/", "/srv/env python python3 python3.11"),  # stage names: any case
        ("COPY --from=0 /opt /usr/local/", "/usr/local/venv python python3 python3.11"),  # by index, a folder above
        ("COPY --from=python:3.11 /opt/venv /opt/venv", ""),  # an image: what it holds cannot be read
        ("COPY --from=build /opt/other /opt/venv", ""),  # the stage makes none there
    ],
)
def test_an_environment_copied_from_an_earlier_stage_is_the_images(copy, pythons):
    """`COPY --from=build /opt/venv /opt/venv` (a builder stage's venv, the usual multi-stage image) was taken on
    trust: the final stage made no venv, so any python its CMD named passed."""
    folder, *names = pythons.split() or [""]
    instructions = parse_dockerfile(
        f"FROM python:3.11 AS build\nRUN python3.11 -m venv /opt/venv\nFROM python:3.11-slim\nWORKDIR /app\n{copy}\n"
    )
    stage = instructions[2:]
    assert venv_pythons(stage, instructions[:2]) == {f"{folder}/bin/{name}" for name in names}


@pytest.mark.parametrize(
    ("copy", "said"),
    [
        ("COPY --from=build /opt/venv /opt/venv", None),
        ("COPY --from=1 /opt/venv/ /opt/venv/", None),
        ("COPY --from=build /opt/venv /venv",
         "CMD runs /opt/venv/bin/python, but the Dockerfile installs /venv/bin/python, /venv/bin/python3, "
         "/venv/bin/python3.11"),
    ],
)  # fmt: skip
def test_verify_reads_the_venv_a_final_stage_copies_from_a_build_stage(
    default_zips, tmp_path, rewrite_zip, copy, said
):
    """A venv made in a build stage and copied into the final one was taken on trust: the CMD's python passed
    wherever the copy put the venv."""
    good_zip = default_zips["4090"]
    with zipfile.ZipFile(good_zip) as archive:
        lines = archive.read("Dockerfile").decode().splitlines()
    base = [n for n, text in enumerate(lines) if text.startswith("FROM ")][-1]
    image = lines[base].split()[1]
    lines[base] += " AS build"
    server = lines.index("COPY llmkit/ llmkit/")
    lines[server:server] = [f"FROM {image}", copy, "WORKDIR /app"]
    zip_path = rewrite_zip(good_zip, tmp_path / "edited.zip", {"Dockerfile": ("\n".join(lines) + "\n").encode()})
    problems = verify_submission(zip_path, lint=False)
    assert problems == ([] if said is None else [problems[0]]) and (said is None or said in problems[0]), problems


_ENVIRONMENT = "    && uv venv --python 3.11.18 /opt/venv \\\n    && uv pip install --python /opt/venv/bin/python "


@pytest.mark.parametrize(
    ("made", "python", "said"),
    [
        (
            "    && uv pip install --system virtualenv==20.24.0 && virtualenv /venv && /venv/bin/pip install ",
            "/venv/bin/python",
            None,
        ),
        (
            "    && uv pip install --system virtualenv==20.24.0 && virtualenv /venv && /venv/bin/pip install ",
            "/usr/bin/python3",
            "CMD runs /usr/bin/python3, but the Dockerfile installs /venv/bin/python, /venv/bin/python3",
        ),
        (
            "    && conda create -y -p /opt/env python=3.11 && /opt/env/bin/pip install ",
            "/opt/env/bin/python3.11",
            None,
        ),
        (
            "    && uv pip install --system --target /opt/deps ",
            "python3",
            "pip installs the requirements to /opt/deps (--target), which ENV PYTHONPATH does not name: python3 would "
            "not find the server's packages",
        ),
        ("    && uv pip install --system --target /opt/deps ", "PYTHONPATH", None),
    ],
)
def test_verify_checks_the_cmds_python_against_the_environment_the_dockerfile_makes(
    bundled_zip, tmp_path, rewrite_zip, made, python, said
):
    """A virtualenv's or conda env's python was taken on trust (a CMD running the base image's python, without the
    packages, passed), and a `pip install --target` folder that PYTHONPATH does not name as well."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    assert _ENVIRONMENT in dockerfile
    edited = dockerfile.replace(_ENVIRONMENT, made)
    if python == "PYTHONPATH":  # the folder on the path of a base image's python
        edited, python = edited.replace("ENV HF_HUB_OFFLINE=1", "ENV HF_HUB_OFFLINE=1 PYTHONPATH=/opt/deps"), "python3"
    edited = edited.replace('CMD ["/opt/venv/bin/python"', f'CMD ["{python}"')
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    problems = verify_submission(zip_path, lint=False)
    assert problems == ([] if said is None else [problems[0]]) and (said is None or said in problems[0]), problems


def test_env_and_arg_values_are_substituted_where_docker_substitutes_them():
    stage = parse_dockerfile(
        "ARG BASE=python:3.11\n"
        "FROM $BASE\n"
        "ARG APP_HOME=/srv/app\n"
        "ARG UNSET\n"
        "ENV MODEL_DIR=${APP_HOME}/model VIRTUAL_ENV=/opt/venv\n"
        'ENV PATH="$VIRTUAL_ENV/bin:$PATH" OTHER=${UNSET:-/x} ESCAPED=\\$APP_HOME\n'
        "WORKDIR $APP_HOME\n"
        "RUN python -m venv $VIRTUAL_ENV\n"
        "COPY model/ ${MODEL_DIR}/\n"
        'CMD ["python", "-m", "llmkit.server", "--model", "$MODEL_DIR"]\n'
    )
    assert [inst.value for inst in stage[5:]] == [
        'PATH="/opt/venv/bin:$PATH" OTHER=${UNSET:-/x} ESCAPED=\\$APP_HOME',  # what the build does not set: as written
        "/srv/app",
        "python -m venv /opt/venv",
        "model/ /srv/app/model/",
        '["python", "-m", "llmkit.server", "--model", "$MODEL_DIR"]',  # exec form: never substituted
    ]
    assert venv_pythons(stage) == {"/opt/venv/bin/python", "/opt/venv/bin/python3"}
    assert copy_targets(stage) == [("model", "/srv/app/model", stage[8])]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "COPY model/ /opt/model/",
            "ARG MODEL_HOME=/opt\nENV MODEL_DIR=${MODEL_HOME}/model\nCOPY model/ ${MODEL_DIR}/",
        ),
        (_ENVIRONMENT, "    && uv venv --python 3.11.18 $VENV \\\n    && uv pip install --python $VENV/bin/python "),
    ],
)
def test_verify_reads_paths_through_the_dockerfiles_variables(bundled_zip, tmp_path, rewrite_zip, old, new):
    """A COPY to ${MODEL_DIR}/ was said to copy the bundled model to /app/${MODEL_DIR}, and `python -m venv $VENV`
    to make /app/$VENV/bin/python: both refused, though docker build puts them where the CMD looks."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    assert old in dockerfile
    edited = dockerfile.replace(old, new).replace("WORKDIR /app\n", "ENV VENV=/opt/venv\nWORKDIR /app\n")
    if old == _ENVIRONMENT:  # the venv's python by ENV PATH, written with the variable
        edited = edited.replace('CMD ["/opt/venv/bin/python"', 'CMD ["python"')
        edited = edited.replace("ENV HF_HUB_OFFLINE=1", 'ENV HF_HUB_OFFLINE=1 PATH="$VENV/bin:$PATH"')
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    assert verify_submission(zip_path, lint=False) == []


def test_an_env_line_that_cannot_be_read_is_reported_once_not_a_traceback(bundled_zip, tmp_path, rewrite_zip):
    """The CMD's python named bare was looked up on ENV PATH by reading every ENV line, which raised out of
    verify_submission on an unclosed quote (DockerfileError traceback)."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    edited = dockerfile.replace('CMD ["/opt/venv/bin/python"', 'CMD ["python"').replace(
        "ENV HF_HUB_OFFLINE=1", 'ENV HF_HUB_OFFLINE=1 PATH=/opt/venv/bin:$PATH\nENV A="x'
    )
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    [problem] = verify_submission(zip_path, lint=False)
    assert problem.startswith("Dockerfile: line ") and 'ENV A="x: No closing quotation' in problem, problem


@pytest.mark.parametrize(
    ("copy", "served", "said"),
    [
        ("COPY . /workspace/", "/workspace/model", None),
        ("COPY . .", "./model", None),  # relative to the WORKDIR the server starts in (/app)
        ("COPY . .", "model/", None),
        ("COPY . /workspace/", "/app/model", "copies the bundled model/ to /workspace/model (line "),
    ],
)
def test_a_bundled_model_copied_inside_its_parent_folder_is_where_the_cmd_serves_it(
    bundled_zip, tmp_path, rewrite_zip, copy, served, said
):
    """`COPY . /workspace` (the 2023 submissions' way) put model/ at /workspace/model, but verify looked only for a
    COPY of model/ itself ('copies the bundled model/ to no folder'), and read a relative --model as written."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    edited = dockerfile.replace("COPY model/ /opt/model/", copy).replace('"/opt/model"', f'"{served}"')
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    problems = verify_submission(zip_path, lint=False)
    assert problems == ([] if said is None else [problems[0]]) and (said is None or said in problems[0]), problems


@pytest.mark.parametrize(
    ("copy", "said"),
    [
        ("COPY requirements.txt model/ /opt/model/", None),  # model/'s files land in /opt/model itself
        ("COPY requirements.txt model /opt/", "copies the bundled model/ to /opt (line "),
        ("# syntax=docker/dockerfile:1.7-labs\nCOPY --parents model /opt/", None),
        ("COPY --parents ./model /opt/model/", "copies the bundled model/ to /opt/model/model (line "),
    ],
)
def test_a_folder_among_several_sources_puts_its_files_in_the_destination(
    bundled_zip, tmp_path, rewrite_zip, copy, said
):
    """With more than one source and a destination ending in /, a folder was taken to land in the destination
    under its own name, as a file does: `COPY requirements.txt model /opt/` passed for --model /opt/model (docker
    build puts model/'s files in /opt), and `COPY requirements.txt model/ /opt/model/` was refused."""
    _check_model_copy(bundled_zip, tmp_path, rewrite_zip, copy, said)


_NEEDS = "which needs llmkit/server/__main__.py at /app/llmkit/server/__main__.py, but the Dockerfile copies it to "


@pytest.mark.parametrize(
    ("copy", "said"),
    [
        ("COPY llmkit/ /app/", "from /app, " + _NEEDS + "/app/server/__main__.py (line 26)"),
        ("COPY llmkit requirements.txt /app/", "from /app, " + _NEEDS + "/app/server/__main__.py (line 26)"),
        ("COPY llmkit/ /srv/\nENV PYTHONPATH=/srv",
         "from /app or ENV PYTHONPATH's /srv, " + _NEEDS + "/srv/server/__main__.py (line 26)"),
        ("COPY ./llmkit ./llmkit", None),
        ("COPY . /app/", None),
        ("COPY --parents llmkit requirements.txt /app/", None),  # --parents keeps llmkit/
        ("COPY llmkit/ /srv/llmkit/\nENV PYTHONPATH=/srv", None),
    ],
)  # fmt: skip
def test_the_module_the_cmd_runs_is_copied_where_python_finds_it(default_zips, tmp_path, rewrite_zip, copy, said):
    """Docker copies a source folder's contents, not the folder: `COPY llmkit/ /app/` (or `COPY llmkit model /app/`,
    several sources into one folder) puts llmkit/server/ at /app/server/, where `python -m llmkit.server` finds
    nothing; verify asked only whether the files were copied, and passed it."""
    good_zip = default_zips["4090"]
    with zipfile.ZipFile(good_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    edited = dockerfile.replace("COPY llmkit/ llmkit/", copy)
    cmd_line = next(n for n, text in enumerate(edited.splitlines(), 1) if text.startswith("CMD"))
    zip_path = rewrite_zip(good_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    expected = [] if said is None else [f"Dockerfile line {cmd_line}: CMD runs -m llmkit.server {said}"]
    assert verify_submission(zip_path, lint=False) == expected


def test_a_bundled_model_and_the_server_copied_into_one_folder_are_both_said(bundled_zip, tmp_path, rewrite_zip):
    """`COPY llmkit model /app/` flattens both folders into /app: neither --model /app/model nor llmkit.server is
    there."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    edited = dockerfile.replace("COPY llmkit/ llmkit/\n", "")
    edited = edited.replace("COPY model/ /opt/model/", "COPY llmkit model /app/").replace(
        '"/opt/model"', '"/app/model"'
    )
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    model, module = verify_submission(zip_path, lint=False)
    assert "CMD --model /app/model, but the Dockerfile copies the bundled model/ to /app (line " in model, model
    assert "CMD runs -m llmkit.server from /app, " + _NEEDS + "/app/server/__main__.py (line " in module, module


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("COPY model/ /opt/model/", "COPY --exclude=*.safetensors model/ /opt/model/",
         "model/model.safetensors: a file of the bundled model left out by the --exclude of Dockerfile line {line}"),
        ("COPY model/ /opt/model/", "COPY --exclude=README.md --exclude=model.safetensors model/ /opt/model/",
         "model/model.safetensors: a file of the bundled model left out by the --exclude of Dockerfile line {line}"),
        ("COPY model/ /opt/model/", "COPY --exclude=*.md model/ /opt/model/", None),  # none of the model's files
        ("COPY llmkit/ llmkit/", "COPY --exclude=server llmkit/ llmkit/",
         "Dockerfile line {cmd}: CMD runs -m llmkit.server, but llmkit.server.__main__, which is left out by the "
         "--exclude of Dockerfile line {line}"),
        ("COPY llmkit/ llmkit/", "COPY --exclude=**/app.py llmkit/ llmkit/",
         "llmkit/server/ANY.py:ANY: imports llmkit.server.app, which is left out by the --exclude of "
         "Dockerfile line {line}"),
        ("COPY llmkit/ llmkit/", "COPY --exclude=*.py llmkit/ llmkit/", None),  # below llmkit/: its __init__.py alone
    ],
)  # fmt: skip
def test_files_a_copy_excludes_are_not_in_the_image(bundled_zip, tmp_path, rewrite_zip, old, new, said):
    """`COPY --exclude=PATTERN` (Dockerfile 1.7 labs, stable since 1.19) leaves out what the pattern matches below
    each source, but verify read the flag as any other and counted the files copied: a bundled model without its
    weights, or a server without the module it imports, passed."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    edited = dockerfile.replace(old, new)
    line = next(n for n, text in enumerate(edited.splitlines(), 1) if text == new)
    cmd = next(n for n, text in enumerate(edited.splitlines(), 1) if text.startswith("CMD"))
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    problems = verify_submission(zip_path, lint=False)
    if said is None:
        assert problems == []
    else:
        expected = re.escape(said.format(line=line, cmd=cmd)).replace("ANY", r"\w+")
        assert problems and all(re.fullmatch(expected, problem) for problem in problems), problems


def _check_model_copy(bundled_zip, tmp_path, rewrite_zip, copy: str, said: str | None) -> None:
    """The bundled zip with its model's COPY line written as `copy`: verify finds no problem (`said` None), or one
    problem that says `said`."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    edited = dockerfile.replace("COPY model/ /opt/model/", copy)
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    problems = verify_submission(zip_path, lint=False)
    assert problems == ([] if said is None else [problems[0]]) and (said is None or said in problems[0]), problems


_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("download", "served", "said"),
    [
        (f"/opt/venv/bin/huggingface-cli download {_HUB} --revision main --local-dir /opt/model", "/opt/model", None),
        (f"/opt/venv/bin/hf download {_HUB} --revision=main --local-dir=models/smol", "models/smol", None),
        (
            f"/opt/venv/bin/python -c \"from huggingface_hub import snapshot_download; snapshot_download('{_HUB}', "
            "revision='main', local_dir='/app/models/smol')\"",
            "/app/models/smol",
            None,
        ),
        (  # not at the manifest's revision: the folder holds whatever the hub has on the day of the build
            f"/opt/venv/bin/huggingface-cli download {_HUB} --local-dir /opt/model",
            "/opt/model",
            f"CMD --model /opt/model, but the Dockerfile downloads {_HUB} (manifest.json's model), and ",
        ),
        (
            f"/opt/venv/bin/huggingface-cli download {_HUB} --revision main --local-dir /opt/model",
            "/opt/other",
            f"CMD --model /opt/other, but the Dockerfile downloads {_HUB} (manifest.json's model) into /opt/model, ",
        ),
    ],
)
def test_a_hub_model_downloaded_into_a_folder_is_served_from_it(
    default_zips, tmp_path, rewrite_zip, download, served, said
):
    """`huggingface-cli download ID --revision R --local-dir DIR` (or snapshot_download's local_dir) and a CMD
    serving DIR: the 2023 submissions' way, refused ('downloads ID, and HF_HUB_OFFLINE=1 leaves the server nothing
    else'); only an adapter's folder was read."""
    good_zip = default_zips["4090"]
    with zipfile.ZipFile(good_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    edited = re.sub(r"/opt/venv/bin/python -c \"from llmkit.core.models import resolve_model.*", download, dockerfile)
    edited = edited.replace(f'"{_HUB}", "--revision", "main"', f'"{served}"')
    assert download in edited and served in edited
    zip_path = rewrite_zip(good_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    problems = verify_submission(zip_path, lint=False)
    assert problems == ([] if said is None else [problems[0]]) and (said is None or said in problems[0]), problems


@pytest.mark.parametrize(
    ("install", "said"),
    [
        ("COPY requirements.txt ./\nRUN pip install --user -r requirements.txt\nUSER 10001", "line 21: pip install"),
        ("COPY requirements.txt ./\nUSER 10001\nRUN pip install --user -r requirements.txt", None),  # the user's own
        ("COPY requirements.txt ./\nRUN pip install -r requirements.txt\nUSER 10001", None),
    ],
)
def test_packages_pip_installs_for_root_alone_are_reported(tmp_path, rewrite_zip, bundled_zip, install, said):
    """`RUN pip install --user` before `USER appuser` puts the packages in /root/.local, which the server's user
    does not read (its import fails at start-up); verify passed it."""
    with zipfile.ZipFile(bundled_zip) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    start, end = dockerfile.index("COPY requirements.txt ./"), dockerfile.index("COPY llmkit/ llmkit/")
    edited = dockerfile[:start] + install + "\n" + dockerfile[end:].replace("USER 10001\n", "", 1)
    edited = edited.replace('CMD ["/opt/venv/bin/python"', 'CMD ["python3"')
    zip_path = rewrite_zip(bundled_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    problems = verify_submission(zip_path, lint=False)
    expected = [
        f"Dockerfile {said} --user runs as root, so the packages go to /root/.local, which the server's user (10001) "
        "does not read"
    ]
    assert problems == ([] if said is None else expected), problems


@pytest.mark.parametrize("own_setting", [False, True])
def test_a_download_that_runs_offline_is_reported(default_zips, tmp_path, rewrite_zip, own_setting):
    """ENV HF_HUB_OFFLINE=1 moved above the RUN line that downloads the model (the ENV lines grouped at the top):
    huggingface_hub refuses to download and docker build fails, but verify only read the value the server runs
    with."""
    with zipfile.ZipFile(default_zips["4090"]) as archive:
        dockerfile = archive.read("Dockerfile").decode()
    edited = dockerfile.replace("ENV HF_HUB_OFFLINE=1\n", "").replace(
        "USER 10001\n", "USER 10001\nENV HF_HUB_OFFLINE=1\n"
    )
    download = '/opt/venv/bin/python -c "from llmkit.core.models import resolve_model'
    assert download in edited
    if own_setting:  # the line turns it off for itself
        edited = edited.replace(download, "HF_HUB_OFFLINE=0 " + download)
    zip_path = rewrite_zip(default_zips["4090"], tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    problems = verify_submission(zip_path, lint=False)
    expected = [
        f"Dockerfile line 29: the RUN line downloading {_HUB} runs with HF_HUB_OFFLINE=1, so docker build cannot "
        "download it (set HF_HUB_OFFLINE=1 after the download)"
    ]
    assert problems == ([] if own_setting else expected), problems


@pytest.mark.parametrize(
    ("copy", "said"),
    [
        ("COPY model/* /opt/model/", None),
        (  # the model's files the patterns leave out are said by name
            "COPY ./model/*.json ./model/*.safetensors /opt/model/",
            "model/chat_template.jinja: a file of the bundled model copied by no COPY or ADD line",
        ),
        ("COPY mod[e]l /opt/model", None),  # a folder a pattern matches: its files, as a folder's
        ("COPY model/* /opt/", "copies the bundled model/ to /opt (line "),
    ],
)
def test_a_bundled_model_copied_by_a_pattern_is_where_the_cmd_serves_it(
    bundled_zip, tmp_path, rewrite_zip, copy, said
):
    """`COPY ./model/* /workspace/model/` put the model's files where the CMD serves them, but verify compared the
    pattern with model/ as a name ('copies the bundled model/ to no folder')."""
    _check_model_copy(bundled_zip, tmp_path, rewrite_zip, copy, said)


@pytest.mark.parametrize(
    ("final", "said"),
    [
        ("FROM build", []),
        ("FROM build AS again\nFROM again", []),  # built on a stage built on the one that has it all
        ("FROM --platform=linux/amd64 build\nENV HF_HUB_OFFLINE=0",
         ["Dockerfile: HF_HUB_OFFLINE is 0: the server must not reach the hub at run time (ENV HF_HUB_OFFLINE=1 "
          "after the weights are in the image)"]),
        # its own ENTRYPOINT resets the CMD it inherits: the server runs with no flags
        ('FROM build\nENTRYPOINT ["/opt/venv/bin/python", "-m", "llmkit.server"]',
         ["Dockerfile line {line}: ENTRYPOINT does not run the server with --port 80",
          "Dockerfile line {line}: ENTRYPOINT does not bind --host 0.0.0.0 (unreachable from outside)",
          "Dockerfile line {line}: ENTRYPOINT names no --model; manifest.json serves "
          "HuggingFaceTB/SmolLM2-135M-Instruct"]),
        # the ENV it inherits is substituted, and -m llmkit.server is looked for under the WORKDIR it names
        ("FROM build\nWORKDIR ${HF_HOME}",
         ["Dockerfile line {cmd}: CMD runs -m llmkit.server from /opt/hf, which needs llmkit/server/__main__.py at "
          "/opt/hf/llmkit/server/__main__.py, but the Dockerfile copies it to /app/llmkit/server/__main__.py (line "
          "{copy})"]),
    ],
)  # fmt: skip
def test_a_final_stage_built_on_an_earlier_one_inherits_what_it_sets(default_zips, tmp_path, rewrite_zip, final, said):
    """`FROM build` starts from the stage `build` with its ENV, WORKDIR, USER, EXPOSE, HEALTHCHECK and CMD, as Docker
    builds it; verify read the final stage's lines alone and refused it (no EXPOSE, no CMD, no HEALTHCHECK, root)."""
    good_zip = default_zips["4090"]
    with zipfile.ZipFile(good_zip) as archive:
        lines = archive.read("Dockerfile").decode().splitlines()
    base = [n for n, text in enumerate(lines) if text.startswith("FROM ")][-1]
    lines[base] += " AS build"
    edited = "\n".join([*lines, *final.splitlines()]) + "\n"
    zip_path = rewrite_zip(good_zip, tmp_path / "edited.zip", {"Dockerfile": edited.encode()})
    numbers = {
        "line": len(edited.splitlines()),
        "cmd": next(n for n, text in enumerate(lines, 1) if text.startswith("CMD [")),
        "copy": lines.index("COPY llmkit/ llmkit/") + 1,
    }
    assert sorted(verify_submission(zip_path, lint=False)) == sorted(s.format(**numbers) for s in said)
