"""This project's own distribution as installed: its name and the requirements pyproject.toml declares.

Read through importlib.metadata, so each pin is written once, in pyproject.toml. Only where the project is installed
(its venv, at packaging time): a submission image holds the server's code without the distribution's metadata.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

PROJECT = "llm-effchal"  # the distribution's name (pyproject.toml)


def requirements(names: tuple[str, ...]) -> list[str]:
    """pyproject.toml's requirement specifiers of `names` (e.g. "psutil>=5.9"), in that order."""
    declared = {Requirement(line).name: line for line in metadata.requires(PROJECT) or []}
    return [declared[name] for name in names]


def pinned_version(name: str) -> str:
    """The version pyproject.toml pins `name` to (`name==<version>`)."""
    [specifier] = Requirement(requirements((name,))[0]).specifier
    if specifier.operator != "==":
        raise ValueError(f"pyproject.toml does not pin {name} with ==: {specifier}")
    return specifier.version
