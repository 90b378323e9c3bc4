"""Read a Dockerfile's instructions: enough for verify (port, CMD, HEALTHCHECK, USER, ENV) and the smoke test."""

from __future__ import annotations

import io
import json
import posixpath
import re
import shlex
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
        DockerfileError: the last instruction ends in a line continuation (docker build refuses it).
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
