"""What Ctrl-C or SIGTERM says where no command names what it left, for llmkit.entry (while the CLI loads) and the
CLI's `_Commands` (from its parsing on). Nothing imported: llmkit.entry reads this before its handler is in place."""


def interrupted_line(command: str | None) -> str:
    """The one line: `command` is the subcommand, if known."""
    return f"interrupted: {' '.join(filter(None, ['llmkit', command]))} stopped before it finished"


def command_in(args: list[str]) -> str | None:
    """The subcommand in a command line not parsed yet: its first word that is no flag (the top level takes
    only --help)."""
    return next((arg for arg in args if not arg.startswith("-")), None)
