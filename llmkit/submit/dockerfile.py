"""Read a Dockerfile's instructions: enough for verify (port, CMD, HEALTHCHECK, USER, ENV) and the smoke test."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import itertools
import json
import posixpath
import re
import shlex
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from dockerfile_parse import DockerfileParser


class DockerfileError(ValueError):
    """The Dockerfile lacks something the harness needs, or says it in a form this reader cannot run."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, CMD...
    value: str  # the rest, continuation lines joined
    line: int  # where it starts, 1-based


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, read by dockerfile-parse: comments dropped, continuation lines joined (no heredocs).

    Raises:
        DockerfileError: the last instruction ends in a line continuation, or a COPY/ADD's JSON array holds other
            than strings (docker build refuses both).
    """
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    instructions = [
        Instruction(item["instruction"].upper(), _one_line(item["content"]), item["startline"] + 1)
        for item in parser.structure
        if item["instruction"] != "COMMENT"
    ]
    lines = [line.strip() for line in text.splitlines()]
    written = [(number, line) for number, line in enumerate(lines, 1) if line and not line.startswith("#")]
    if written and written[-1][1].endswith("\\"):  # dockerfile-parse drops such an instruction without a word
        raise DockerfileError(f"line {written[-1][0]}: the instruction ends in a line continuation")
    instructions = _substituted(instructions)
    for inst in instructions:  # BuildKit's parser refuses a COPY/ADD JSON array of other than strings
        if inst.keyword in ("COPY", "ADD"):
            copy_line(inst)
    return instructions


# The instructions whose values the build reads with the stage's ENV and ARG values in place: Docker substitutes
# them (RUN: its shell, which has them in its environment). CMD, ENTRYPOINT and HEALTHCHECK run later, and their
# exec form is never substituted.
_SUBSTITUTED = {"ADD", "ARG", "COPY", "ENV", "EXPOSE", "LABEL", "RUN", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
# `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`; `\$` is a literal `$`.
_VARIABLE = re.compile(r"\\\$|\$(?:\{(\w+)(?:(:?[-+])([^}]*))?\}|(\w+))")


def _substituted(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions with each stage's ENV and ARG values (those with a default) in place where Docker puts them,
    so `WORKDIR $APP_HOME`, `COPY model/ ${MODEL_DIR}/` and `RUN python -m venv $VIRTUAL_ENV` name their folders. A
    variable the Dockerfile does not set (the base image's PATH, an ARG without a default) stays as written."""
    result, variables, env, stage_env = [], {}, {}, {}  # stage_env: each named stage's ENV at its end
    for inst in instructions:
        if inst.keyword == "FROM":  # a stage starts with none of another's, but the ENV of the stage it is built on
            env = dict(stage_env.get(base_name(inst).lower(), {}))
            variables = dict(env)
            words = [word for word in inst.value.split() if not word.startswith("--")]
            if len(words) == 3 and words[1].lower() == "as":
                stage_env[words[2].lower()] = env  # filled in as the stage's ENV lines come
        if inst.keyword in _SUBSTITUTED:
            inst = Instruction(inst.keyword, substitute(inst.value, variables), inst.line)
        if inst.keyword in ("ENV", "ARG"):
            with contextlib.suppress(DockerfileError):  # an unclosed quote: the ENV check says so
                values = {key: value for key, value in _assignments(inst).items() if value is not None}
                variables |= values
                env |= values if inst.keyword == "ENV" else {}
        result.append(inst)
    return result


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """`text` with the `variables` it names in place, as Docker's shell-word expansion does; others as written."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(4)
        if name is None or name not in variables:
            return match.group(0)
        operator, word, found = match.group(2), match.group(3), variables[name]
        if operator == ":-":
            return found or word
        if operator == ":+":
            return word if found else ""
        return word if operator == "+" else found  # `-`: NAME is set, so its value

    return _VARIABLE.sub(value, text)


def _one_line(content: str) -> str:
    """An instruction's value with its continuation lines joined by one space each (dockerfile-parse keeps their
    indentation), so `RUN a \\ <newline> && b` reads `a && b`."""
    lines = (line.strip().removesuffix("\\").strip() for line in content.splitlines())
    keyword_and_value = " ".join(line for line in lines if line).split(maxsplit=1)  # any whitespace, as docker reads
    return keyword_and_value[1].strip() if len(keyword_and_value) == 2 else ""


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last build stage (what the image runs), after those of the stages it is built on:
    `FROM build` starts from the earlier stage `build`, with its files, ENV, WORKDIR, USER, EXPOSE, ENTRYPOINT and
    CMD, as Docker does (`run_command` drops an inherited CMD that the stage's own ENTRYPOINT resets)."""
    froms = [i for i, inst in enumerate(instructions) if inst.keyword == "FROM"]
    if not froms:
        raise DockerfileError("no FROM instruction")
    return _built_on(instructions[: froms[-1]], instructions[froms[-1] :])


def earlier_stages(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions above the last build stage: the stages a `COPY --from` of the final one may name."""
    froms = [i for i, inst in enumerate(instructions) if inst.keyword == "FROM"]
    return instructions[: froms[-1]] if froms else []


def _built_on(earlier: list[Instruction], stage: list[Instruction]) -> list[Instruction]:
    """`stage` after the instructions of the `earlier` stage its FROM names (and of those that one is built on)."""
    found = stage_named(earlier, base_name(stage[0]), by_index=False)
    return _built_on(found[1], found[0]) + stage if found is not None else stage


def base_name(inst: Instruction) -> str:
    """What a FROM line starts from: its image or stage name, after its flags (`--platform=...`)."""
    words = [word for word in inst.value.split() if not word.startswith("--")]
    return words[0] if words else ""


def last(instructions: list[Instruction], keyword: str) -> Instruction | None:
    found = [inst for inst in instructions if inst.keyword == keyword]
    return found[-1] if found else None


def exec_form(instruction: Instruction, value: str | None = None) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT (or of `value`, e.g. a HEALTHCHECK's CMD part)."""
    text = instruction.value if value is None else value
    try:
        command = json.loads(text)
    except json.JSONDecodeError:
        command = None
    if not isinstance(command, list) or not command or not all(isinstance(part, str) for part in command):
        raise DockerfileError(f"line {instruction.line}: {instruction.keyword} is not in exec form (a JSON array)")
    return command


@dataclass(frozen=True)
class RunCommand:
    """What the container runs (`run_command`): its words, and the ENTRYPOINT and CMD lines they come from."""

    argv: list[str]
    lines: tuple[Instruction, ...]  # the ENTRYPOINT (where one runs), then the CMD

    @property
    def at(self) -> str:
        """How a message names it: `line 36: CMD`, or `lines 35 and 36: ENTRYPOINT + CMD`."""
        numbers = " and ".join(str(inst.line) for inst in self.lines)
        keywords = " + ".join(inst.keyword for inst in self.lines)
        return f"line{'s' if len(self.lines) > 1 else ''} {numbers}: {keywords}"


def run_command(stage: list[Instruction]) -> RunCommand | None:
    """The command the final `stage`'s container runs, as Docker joins ENTRYPOINT and CMD: an exec-form ENTRYPOINT
    with the exec-form CMD's words after it (`ENTRYPOINT ["python", "-m", "llmkit.server"]` + `CMD ["--port",
    "80"]` is one argv); CMD alone where there is no ENTRYPOINT, or `ENTRYPOINT []` (which clears a base image's).
    None where neither is there. A base image's own ENTRYPOINT cannot be read here. A known wrapper at its start
    (`ENTRYPOINT ["tini", "--"]`: `through_wrappers`) is read through to the command it runs.

    Raises:
        DockerfileError: a shell-form ENTRYPOINT (Docker runs it with /bin/sh -c, and CMD is dropped), or a
            shell-form CMD (its words are not what the server's CLI reads).
    """
    entrypoint, cmd = last(stage, "ENTRYPOINT"), last(stage, "CMD")
    if entrypoint is not None and cmd is not None and stage.index(cmd) < stage.index(entrypoint):
        if any(inst.keyword == "FROM" for inst in stage[stage.index(cmd) : stage.index(entrypoint)]):
            cmd = None  # a stage that sets an ENTRYPOINT resets the CMD it inherits
    if entrypoint is None or _is_empty_array(entrypoint.value):
        return RunCommand(through_wrappers(exec_form(cmd)), (cmd,)) if cmd is not None else None
    try:
        program = exec_form(entrypoint)
    except DockerfileError:
        raise DockerfileError(
            f"line {entrypoint.line}: ENTRYPOINT is not in exec form (a JSON array): Docker runs it with /bin/sh -c "
            "and drops CMD"
        ) from None
    if cmd is None:
        return RunCommand(through_wrappers(program), (entrypoint,))
    if _is_empty_array(cmd.value):  # `CMD []`: no arguments
        return RunCommand(through_wrappers(program), (entrypoint, cmd))
    try:
        arguments = exec_form(cmd)
    except DockerfileError:
        raise DockerfileError(
            f"line {cmd.line}: CMD is not in exec form (a JSON array): the ENTRYPOINT of line {entrypoint.line} "
            "gets it as /bin/sh -c and its text"
        ) from None
    return RunCommand(through_wrappers(program + arguments), (entrypoint, cmd))


# Programs an ENTRYPOINT runs only to run their arguments (an init that reaps zombies and forwards signals; env), each
# with its options that take a value (None: env, read through only without options or NAME=VALUE, which change
# what the server runs with). The server is the command after them.
_WRAPPERS = {"tini": {"-p", "-e"}, "tini-static": {"-p", "-e"}, "dumb-init": {"-r", "--rewrite"}, "env": None}


def through_wrappers(argv: list[str]) -> list[str]:
    """The command `argv` runs once its known wrappers (`_WRAPPERS`, by name or path: `["tini", "--"]`,
    `["/usr/bin/dumb-init", "--"]`, `["/usr/bin/env"]`) have started it: after their options and a `--` ending
    them. A wrapper with nothing to run, or env with an option or assignment, is the command itself."""
    while argv and PurePosixPath(argv[0]).name in _WRAPPERS:
        options, words, start = _WRAPPERS[PurePosixPath(argv[0]).name], iter(enumerate(argv[1:], 1)), None
        for index, word in words:
            if word == "--" or not word.startswith("-"):
                start = index + (word == "--")
                break
            if options is None:
                return argv
            if word in options:
                next(words, None)
        if start is None or start >= len(argv) or (options is None and "=" in argv[start]):
            return argv
        argv = argv[start:]
    return argv


def _is_empty_array(text: str) -> bool:
    try:
        return json.loads(text) == []
    except json.JSONDecodeError:
        return False


# Python's options that take a value as the next word (`python -X importtime -m pkg`).
_PYTHON_VALUE_OPTIONS = {"-X", "-W", "-c"}


def python_module(argv: list[str]) -> str | None:
    """The module a command `python[3.X] [options] -m MODULE ...` runs; None for any other command (a script, `-c`,
    another program)."""
    if not argv or not PurePosixPath(argv[0]).name.startswith("python"):
        return None
    words = iter(argv[1:])
    for word in words:
        if word == "-m":
            return next(words, None)
        if word == "-c" or not word.startswith("-"):
            return None
        if word in _PYTHON_VALUE_OPTIONS:
            next(words, None)
    return None


def cmd_words(command: list[str], flags: Collection[str]) -> Iterator[tuple[str | None, str]]:
    """The words of an exec-form command after its program, as the server's CLI (argparse) reads the `flags` among
    them: (flag, value) for `--flag V` and for `--flag=V` alike, (None, word) for every other word. The one reader of
    a CMD's flags: verify judges what it reads, and the smoke test runs the same.

    Raises:
        DockerfileError: one of `flags` ends the command with no value.
    """
    words = iter(command[1:])
    for word in words:
        flag, equals, value = word.partition("=")
        if equals and flag in flags:
            yield flag, value
        elif word in flags:
            value = next(words, None)
            if value is None:
                raise DockerfileError(f"CMD ends with {word} and no value")
            yield word, value
        else:
            yield None, word


def flag_values(command: list[str], flag: str) -> list[str]:
    """Every value `flag` has in the command (`cmd_words`), in order; argparse keeps the last of a plain flag."""
    return [value for name, value in cmd_words(command, {flag}) if name == flag]


def image_path(instructions: list[Instruction], before: Instruction | None, path: str) -> str:
    """`path` as the image resolves it at `before` (None: when the container runs): relative to the last WORKDIR
    above it, normalised, no slash at its end."""
    workdir = "/"
    for inst in instructions:
        if inst is before:
            break
        if inst.keyword == "WORKDIR" and inst.value:
            workdir = posixpath.join(workdir, inst.value.strip())
    return posixpath.normpath(posixpath.join(workdir, path))


@dataclass(frozen=True)
class CopyLine:
    """A COPY/ADD line as Docker reads it (`copy_line`)."""

    instruction: Instruction
    flags: dict[str, str]  # --from, --chown, --chmod, --link, --parents...: the value after `=`, "" for none
    sources: list[str]  # as written
    destination: str | None  # None where the line names fewer than two paths (docker build refuses it)
    excludes: tuple[str, ...] = ()  # every --exclude pattern (the flag may be given more than once)

    def excluded(self, source: str, name: str) -> bool:
        """Whether the line's --exclude patterns leave out the context's file `name`, which its `source` (a path of
        the context: a folder, a file or a pattern) takes: matched as .dockerignore's patterns are, against the
        file's path below the source folder (its name, for a file the source names or matches)."""
        if not self.excludes:
            return False
        folder = "." if source == "." else covered_part(source, name)
        below = PurePosixPath(name).name if folder in (None, name) else posixpath.relpath(name, folder)
        return bool(dockerignored({below}, "\n".join(self.excludes)))


# A flag word at the start of a COPY/ADD line: `--name` or `--name=value` (BuildKit reads only this form).
_COPY_FLAG = re.compile(r"\s*--([^\s=]*)(?:=(\S*))?(?=\s|$)")


def copy_line(inst: Instruction) -> CopyLine:
    """A COPY/ADD line's flags, sources and destination, by BuildKit's parser: the `--` words at its start are flags
    (a lone `--` ends them); the rest is a JSON array of strings where it parses as one, and otherwise (a line that
    starts with `[` but is not valid JSON too: `['a', 'b']`) words split at whitespace, each a path. The one reader of
    COPY/ADD lines: verify's build context and the image's folders both come from it.

    Raises:
        DockerfileError: the rest is a JSON array holding something other than a string (docker build refuses it).
    """
    flags, excludes, rest = {}, [], inst.value
    while match := _COPY_FLAG.match(rest):
        rest = rest[match.end() :]
        if not match.group(1):  # `--`: what follows is paths
            break
        flags[f"--{match.group(1)}"] = match.group(2) or ""
        if match.group(1) == "exclude" and match.group(2):
            excludes.append(match.group(2))
    try:  # Go's JSON has no NaN or Infinity: such a line is not JSON to Docker
        words = json.loads(rest, parse_constant=_not_json) if rest.lstrip().startswith("[") else None
    except ValueError:
        words = None
    if words is None:
        words = rest.split()
    elif not all(isinstance(word, str) for word in words):
        raise DockerfileError(f"line {inst.line}: {inst.keyword}'s JSON array holds a value that is not a string")
    return CopyLine(inst, flags, words[:-1], words[-1] if len(words) > 1 else None, tuple(excludes))


def _not_json(constant: str) -> None:
    raise ValueError(constant)


def context_copies(stage: list[Instruction]) -> Iterator[CopyLine]:
    """The COPY/ADD lines of `stage` that copy from the build context (not --from another stage or image), with at
    least one source."""
    for inst in stage:
        if inst.keyword in ("COPY", "ADD"):
            line = copy_line(inst)
            if "--from" not in line.flags and line.destination is not None:
                yield line


def copy_targets(stage: list[Instruction]) -> list[tuple[str, str, Instruction]]:
    """(source in the build context, the folder a source folder's contents land in, the line) of each COPY/ADD of
    the stage from the context (not --from another stage). Docker copies a folder's contents, not the folder, into
    the destination, however many sources the line names; with --parents, into the destination under the source's
    path (from a `/./` in it, where it has one)."""
    targets = []
    for line in context_copies(stage):
        destination = image_path(stage, line.instruction, line.destination)
        for source in line.sources:
            into = destination
            if "--parents" in line.flags:
                kept = source.split("/./", 1)[1] if "/./" in source else source
                into = posixpath.normpath(posixpath.join(destination, kept.lstrip("/")))
            targets.append((posixpath.normpath(source.lstrip("/")), into, line.instruction))
    return targets


GLOB = re.compile(r"[*?\[]")  # a COPY source that is a pattern (Go's filepath.Match)


def covered_part(source: str, name: str) -> str | None:
    """What of the build context's file `name` a COPY source (a file, a folder or a glob) takes: the file itself, or
    the deepest folder above it that the source is or matches; None where it takes neither."""
    parts = [name, *(parent.as_posix() for parent in PurePosixPath(name).parents if parent.as_posix() != ".")]
    return next((part for part in parts if part == source or fnmatch.fnmatchcase(part, source)), None)


def copied_to(stage: list[Instruction], name: str) -> list[tuple[str, Instruction]]:
    """(path in the image, line) for each COPY/ADD of the stage that puts the build context's file `name` in the
    image (`copy_targets`): below a folder source, at its path under that folder in the folder its contents land in;
    a file source (or a pattern that matches it) in the destination folder where the destination ends in `/` or the
    line names several sources (with --parents, at its own path there), else at the destination itself."""
    landed = []
    for source, into, inst in copy_targets(stage):
        line = copy_line(inst)
        if line.excluded(source, name):
            continue
        into_folder = len(line.sources) > 1 or line.destination.endswith("/") or GLOB.search(source)
        part = covered_part(source, name)
        if source == "." or part == name:  # the file itself
            if source == ".":
                landed.append((posixpath.join(into, name), inst))
            elif "--parents" in line.flags or not into_folder:
                landed.append((into, inst))
            else:
                landed.append((posixpath.join(into, PurePosixPath(name).name), inst))
            continue
        if part is not None:  # a folder's contents, however many sources the line names
            landed.append((posixpath.join(into, posixpath.relpath(name, part)), inst))
    return landed


def stage_named(
    instructions: list[Instruction], name: str, *, by_index: bool = True
) -> tuple[list[Instruction], list[Instruction]] | None:
    """(the stage, the instructions before it) of the build stage `name` among `instructions`: the one `FROM image
    AS name` names (case aside), or (`by_index`: COPY --from=0 may, FROM may not) the stage of that index; None where
    none is (an image)."""
    froms = [i for i, inst in enumerate(instructions) if inst.keyword == "FROM"]
    for index, start in enumerate(froms):
        words = [word for word in instructions[start].value.split() if not word.startswith("--")]
        named = len(words) == 3 and words[1].lower() == "as" and words[2].lower() == name.lower()
        if named or (by_index and name == str(index)):
            end = froms[index + 1] if index + 1 < len(froms) else len(instructions)
            return instructions[start:end], instructions[:start]
    return None


def _run_words(inst: Instruction) -> list[str]:
    """A RUN line's words as the shell splits them (an unclosed quote, which docker build refuses elsewhere: at
    spaces)."""
    try:
        return shlex.split(inst.value)
    except ValueError:
        return inst.value.split()


def venv_pythons(stage: list[Instruction], earlier: list[Instruction] = ()) -> set[str]:
    """The interpreters the stage's RUN lines create: `<env>/bin/python`, `python3` (and `python3.X` where the
    line says which) of each environment a RUN line makes: `uv venv [--python V] [DIR]`, `python[3.X] -m venv DIR`
    (or `-m virtualenv`), `virtualenv [-p V] DIR`, `conda create -p DIR` (mamba, micromamba; `conda env create`),
    and `conda create -n NAME`, in the conda root's envs/ (ENV CONDA_DIR or MAMBA_ROOT_PREFIX, else /opt/conda:
    the miniconda, miniforge and pytorch images' root); and those a `COPY --from=STAGE` copies from a stage of the
    `earlier` instructions (the Dockerfile's stages above this one) that makes them, where the copy puts them.
    Another form (pip install --target or --prefix, a folder copied from another image, which cannot be read here)
    makes none: a stage without one has its CMD's python taken on trust."""
    pythons = _copied_pythons(stage, earlier)
    env = env_vars(stage, strict=False)
    conda_root = env.get("CONDA_DIR") or env.get("MAMBA_ROOT_PREFIX") or "/opt/conda"
    for inst in stage:
        if inst.keyword != "RUN":
            continue
        words = _run_words(inst)
        for i in range(len(words)):
            made = _environment_at(words, i)
            if made is None:
                continue
            folder, version = made
            if folder.startswith("envs/"):  # conda -n NAME
                folder = posixpath.join(conda_root, folder)
            bin_dir = posixpath.join(image_path(stage, inst, folder), "bin")
            pythons |= {f"{bin_dir}/python", f"{bin_dir}/python3"}
            if version and (match := re.search(r"(\d+\.\d+)", version)):
                pythons.add(f"{bin_dir}/python{match.group(1)}")
    return pythons


def _copied_pythons(stage: list[Instruction], earlier: list[Instruction]) -> set[str]:
    """The interpreters of the environments the stage's `COPY --from=STAGE SRC DEST` lines copy from an `earlier`
    stage: each under SRC (a path of that stage's root) moved to DEST, whose contents Docker copies SRC's."""
    pythons = set()
    for inst in stage:
        line = copy_line(inst) if inst.keyword == "COPY" else None
        if line is None or "--from" not in line.flags or line.destination is None:
            continue
        found = stage_named(earlier, line.flags["--from"])
        if found is None:
            continue
        made = venv_pythons(_built_on(found[1], found[0]), found[1])
        destination = image_path(stage, inst, line.destination)
        for source in line.sources:
            root = posixpath.normpath(posixpath.join("/", source))
            for python in made:
                if python == root or python.startswith(root.rstrip("/") + "/"):
                    pythons.add(posixpath.normpath(posixpath.join(destination, posixpath.relpath(python, root))))
    return pythons


_SHELL_SEPARATORS = ("&&", "||", ";", "|", "then", "do", "else")
# Options of the environment makers that take a value (the rest are flags): the python, or what names the folder.
_VALUE_OPTIONS = {"--python", "-p", "--prompt", "--seeder", "--activators", "-f", "--file", "-c", "--channel"}


def _environment_at(words: list[str], i: int) -> tuple[str, str | None] | None:
    """(the folder, the python version or None) of the environment the command at `words[i]` makes, or None where
    it makes none. Conda's `-n NAME` is given as envs/NAME."""
    word, before = words[i], words[i - 1] if i else "&&"
    name = PurePosixPath(word).name
    command_start = before in _SHELL_SEPARATORS
    if word == "venv" and i > 0 and PurePosixPath(before).name == "uv":
        return _folder_and_python(words[i + 1 :], default=".venv")
    if word in ("venv", "virtualenv") and before == "-m" and i > 1:  # python3.11 -m venv: that python's version
        folder, version = _folder_and_python(words[i + 1 :], default=None) or (None, None)
        interpreter = re.fullmatch(r"python(\d+\.\d+)", PurePosixPath(words[i - 2]).name)
        return (folder, version or (interpreter and interpreter.group(1))) if folder else None
    if name == "virtualenv" and command_start:
        return _folder_and_python(words[i + 1 :], default=None)
    if name in ("conda", "mamba", "micromamba") and command_start:
        rest = words[i + 1 :]
        rest = rest[1:] if rest[:1] == ["env"] else rest
        if rest[:1] != ["create"]:
            return None
        folder, python = None, None
        options = iter(rest[1:])
        for option in options:
            if option in _SHELL_SEPARATORS:
                break
            key, equals, value = option.partition("=")
            if key in ("-p", "--prefix", "-n", "--name"):
                value = value if equals else next(options, "")
                folder = value if key in ("-p", "--prefix") else folder or f"envs/{value}"
            elif option.startswith("python="):  # the package spec python=3.11
                python = option.partition("=")[2]
        return (folder, python) if folder else None
    return None


def pip_installs(stage: list[Instruction]) -> Iterator[tuple[Instruction, str, list[str]]]:
    """(line, the user it runs as, the options) of each `pip install` (`pip3`, `python -m pip`, `uv pip`) of the
    stage's RUN lines; the user: the USER above the line, root where none is."""
    user = "root"
    for inst in stage:
        if inst.keyword == "USER":
            user = inst.value
        if inst.keyword != "RUN":
            continue
        words = _run_words(inst)
        for i, word in enumerate(words):
            if word == "install" and i and re.fullmatch(r"pip[\d.]*", PurePosixPath(words[i - 1]).name):
                yield inst, user, list(itertools.takewhile(lambda w: w not in _SHELL_SEPARATORS, words[i + 1 :]))


def requirement_targets(stage: list[Instruction]) -> list[tuple[str, Instruction]]:
    """(folder, line) of each `pip install --target DIR -r FILE` (`uv pip` too, `-t DIR`, `--target=DIR`) of the
    stage: the server's packages in a folder of their own, which its python finds only through PYTHONPATH."""
    targets = []
    for inst, _, command in pip_installs(stage):
        reads_requirements = any(w in ("-r", "--requirement") or w.startswith("--requirement=") for w in command)
        for j, option in enumerate(command):
            key, equals, value = option.partition("=")
            if key in ("--target", "-t") and reads_requirements:
                folder = value if equals else (command[j + 1] if j + 1 < len(command) else "")
                targets.append((image_path(stage, inst, folder), inst))
    return targets


def is_root(user: str) -> bool:
    """Whether a USER value (`name[:group]`) is root's."""
    return user.split(":")[0].strip() in ("root", "0")


def _folder_and_python(options: list[str], default: str | None) -> tuple[str, str | None] | None:
    """The folder (the first word that is no option) and --python/-p value among a venv command's `options`, up to
    the shell's next command; the `default` folder where it names none (None: it makes no environment)."""
    folder, version, rest = default, None, iter(options)
    for option in rest:
        if option in _SHELL_SEPARATORS:
            break
        key, equals, value = option.partition("=")
        if key in _VALUE_OPTIONS:
            value = value if equals else next(rest, "")
            version = value if key in ("--python", "-p") else version
        elif not option.startswith("-"):
            folder = option
            break
    return (folder, version) if folder else None


def env_vars(instructions: list[Instruction], *, strict: bool = True) -> dict[str, str]:
    """ENV settings in order (`ENV K=V K2=V2` and the legacy `ENV K V`).

    Args:
        strict: raise on an ENV line that cannot be read; else skip it (the ENV check reports it).
    """
    env: dict[str, str] = {}
    for inst in instructions:
        if inst.keyword == "ENV":
            try:
                env |= _assignments(inst)
            except DockerfileError:
                if strict:
                    raise
    return env


def _assignments(inst: Instruction) -> dict[str, str | None]:
    """What an ENV or ARG line sets: `K=V K2=V2`, ENV's legacy `K V`; an ARG without a default: None.

    Raises:
        DockerfileError: an unclosed quote (docker build refuses it too).
    """
    try:
        words = shlex.split(inst.value)
    except ValueError as err:
        raise DockerfileError(f"line {inst.line}: {inst.keyword} {inst.value}: {err}") from None
    if inst.keyword == "ENV" and words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    pairs = (word.partition("=") for word in words)
    return {key: value if equals or inst.keyword == "ENV" else None for key, equals, value in pairs}


def arg_names(instructions: list[Instruction]) -> list[str]:
    return [inst.value.split("=", 1)[0].strip() for inst in instructions if inst.keyword == "ARG"]


def dockerignored(names: set[str], dockerignore: str) -> set[str]:
    """The paths among `names` (slash-separated, relative to the build context) that `.dockerignore` keeps out of
    the context, as Docker (moby's patternmatcher) reads it: one pattern a line (`#` at a line's start: a comment;
    a UTF-8 BOM dropped), `*` and `?` within a path segment, `**` across segments, `[...]` (`[^...]` negated), a
    pattern that matches a folder keeps out everything in it, `!` lets a path back in, the last matching line
    wins."""
    patterns = []
    for raw in dockerignore.removeprefix("\ufeff").splitlines():
        if raw.startswith("#"):  # a comment only at the very start of the line, before any space
            continue
        line = raw.strip()
        if not line:
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        if pattern not in ("", "."):
            patterns.append((exception, re.compile(_pattern_regex(pattern))))
    ignored = set()
    for name in names:
        prefixes = [str(parent) for parent in reversed(PurePosixPath(name).parents) if str(parent) != "."]
        candidates = [*prefixes, name]
        out = False
        for exception, regex in patterns:
            if any(regex.fullmatch(path) for path in candidates):
                out = not exception
        if out:
            ignored.add(name)
    return ignored


def _pattern_regex(pattern: str) -> str:
    """Docker's (Go filepath.Match's) pattern as a regular expression, `**` included."""
    regex, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i >= len(pattern) else "(?:.*/)?"
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char == "[" and (end := pattern.find("]", i + 1)) > i:  # Go negates with ^ only: [!x] holds "!"
            regex += "[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]"
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            regex += re.escape(pattern[i])
        else:
            regex += re.escape(char)
        i += 1
    return regex
