"""Read a Dockerfile's instructions: enough for verify (port, CMD, HEALTHCHECK, USER, ENV) and the smoke test."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath


class DockerfileError(ValueError):
    """The Dockerfile lacks something the harness needs, or says it in a form this reader cannot run."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, CMD...
    value: str  # the rest, continuation lines joined
    line: int  # where it starts, 1-based


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments dropped and backslash continuations joined (no heredocs)."""
    instructions, parts, start = [], [], 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, value = " ".join(parts).partition(" ")
            instructions.append(Instruction(keyword.upper(), value.strip(), start))
            parts = []
    if parts:
        raise DockerfileError(f"line {start}: the instruction ends in a line continuation")
    return instructions


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
