"""Read a Dockerfile's instructions: enough for verify (port, CMD, HEALTHCHECK, USER, ENV) and the smoke test."""

from __future__ import annotations

import io
import json
import posixpath
import re
import shlex
from collections.abc import Collection, Iterator
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
    for inst in instructions:  # BuildKit's parser refuses a COPY/ADD JSON array of other than strings
        if inst.keyword in ("COPY", "ADD"):
            copy_line(inst)
    return instructions


def _one_line(content: str) -> str:
    """An instruction's value with its continuation lines joined by one space each (dockerfile-parse keeps their
    indentation), so `RUN a \\ <newline> && b` reads `a && b`."""
    lines = (line.strip().removesuffix("\\").strip() for line in content.splitlines())
    keyword_and_value = " ".join(line for line in lines if line).split(maxsplit=1)  # any whitespace, as docker reads
    return keyword_and_value[1].strip() if len(keyword_and_value) == 2 else ""


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last build stage (what the image runs)."""
    froms = [i for i, inst in enumerate(instructions) if inst.keyword == "FROM"]
    if not froms:
        raise DockerfileError("no FROM instruction")
    return instructions[froms[-1] :]


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


def image_path(instructions: list[Instruction], before: Instruction, path: str) -> str:
    """`path` as the image resolves it at `before`: relative to the last WORKDIR above it, normalised, no slash
    at its end."""
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
    flags, rest = {}, inst.value
    while match := _COPY_FLAG.match(rest):
        rest = rest[match.end() :]
        if not match.group(1):  # `--`: what follows is paths
            break
        flags[f"--{match.group(1)}"] = match.group(2) or ""
    try:  # Go's JSON has no NaN or Infinity: such a line is not JSON to Docker
        words = json.loads(rest, parse_constant=_not_json) if rest.lstrip().startswith("[") else None
    except ValueError:
        words = None
    if words is None:
        words = rest.split()
    elif not all(isinstance(word, str) for word in words):
        raise DockerfileError(f"line {inst.line}: {inst.keyword}'s JSON array holds a value that is not a string")
    return CopyLine(inst, flags, words[:-1], words[-1] if len(words) > 1 else None)


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
    """(source in the build context, folder or file in the image, the line) of each COPY/ADD of the stage from the
    context (not --from another stage), a source's trailing slash dropped."""
    targets = []
    for line in context_copies(stage):
        paths = [*line.sources, line.destination]
        destination = image_path(stage, line.instruction, paths[-1])
        for source in paths[:-1]:
            source = posixpath.normpath(source.lstrip("/"))
            # `COPY a b/` puts a file a in b/a; a folder's contents land in b itself
            into = destination
            if paths[-1].endswith("/") and not source.endswith("/") and len(paths) > 2:
                into = posixpath.join(destination, posixpath.basename(source))
            targets.append((source, into, line.instruction))
    return targets


def venv_pythons(stage: list[Instruction]) -> set[str]:
    """The interpreters the stage's RUN lines create: `<venv>/bin/python`, `python3` (and `python3.X` where `uv
    venv --python 3.X...` says which) of each `uv venv [--python V] DIR` or `python -m venv DIR`."""
    pythons = set()
    for inst in stage:
        if inst.keyword != "RUN":
            continue
        try:
            words = shlex.split(inst.value)
        except ValueError:
            words = inst.value.split()
        for i, word in enumerate(words):
            uv = word == "venv" and i > 0 and PurePosixPath(words[i - 1]).name == "uv"
            module = word == "venv" and i > 1 and words[i - 1] == "-m"
            if not (uv or module):
                continue
            folder, version, rest = ".venv", None, iter(words[i + 1 :])
            for option in rest:
                if option in ("&&", "||", ";", "|"):
                    break
                if option in ("--python", "-p", "--prompt") or option.startswith(("--python=", "--prompt=")):
                    value = option.partition("=")[2] or next(rest, "")
                    version = value if option.startswith(("--python", "-p")) else version
                elif not option.startswith("-"):
                    folder = option
                    break
            bin_dir = posixpath.join(image_path(stage, inst, folder), "bin")
            pythons |= {f"{bin_dir}/python", f"{bin_dir}/python3"}
            if version and (match := re.match(r"(\d+\.\d+)", version)):
                pythons.add(f"{bin_dir}/python{match.group(1)}")
    return pythons


def env_vars(instructions: list[Instruction]) -> dict[str, str]:
    """ENV settings in order (`ENV K=V K2=V2` and the legacy `ENV K V`)."""
    env: dict[str, str] = {}
    for inst in instructions:
        if inst.keyword != "ENV":
            continue
        try:
            words = shlex.split(inst.value)
        except ValueError as err:  # an unclosed quote: docker build refuses it too
            raise DockerfileError(f"line {inst.line}: ENV {inst.value}: {err}") from None
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


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
