"""What Ctrl-C or SIGTERM says where no command names what it left, for llmkit.entry (while the CLI loads) and the
CLI's `_Commands` (from its parsing on), and whether a Ctrl-C came at all. Only the built-in signal module imported:
llmkit.entry reads this before its handler is in place."""

import signal

_sigint = {"received": False}


def record_sigint() -> None:
    """Ctrl-C raises KeyboardInterrupt as Python's own handler does, and is remembered: inside an extension's import
    (numpy's, as torch loads) it comes out as an ImportError ("cannot load module more than once per process"),
    which only this record tells from a broken install."""

    def handler(signum: int, frame: object) -> None:
        _sigint["received"] = True
        signal.default_int_handler(signum, frame)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where it is ignored (nohup, `cmd &`)
        signal.signal(signal.SIGINT, handler)


def sigint_received() -> bool:
    return _sigint["received"]


def is_ctrl_c(err: BaseException) -> bool:
    """A KeyboardInterrupt, or the ImportError an extension's import made of a Ctrl-C (`record_sigint`); an import
    that failed of itself is none."""
    return isinstance(err, KeyboardInterrupt) or (isinstance(err, ImportError) and sigint_received())


def interrupted_line(command: str | None) -> str:
    """The one line: `command` is the subcommand, if known."""
    return f"interrupted: {' '.join(filter(None, ['llmkit', command]))} stopped before it finished"


def command_in(args: list[str]) -> str | None:
    """The subcommand in a command line not parsed yet: its first word that is no flag (the top level takes
    only --help)."""
    return next((arg for arg in args if not arg.startswith("-")), None)
