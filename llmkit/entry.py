"""The `llmkit` command (and `python -m llmkit`): loads llmkit.cli and runs it, with Ctrl-C while it loads said
as at any later moment.

llmkit.cli imports typer, pydantic and the stages' settings at its top, most of a second on a cold start: a
Ctrl-C there reached no handler of the CLI (typer's and `_Commands`' run later) and printed a traceback. This
module imports nothing that is not loaded already but sys and the standard-library-free llmkit.core.interrupted, so
the window left is the interpreter's own start and the moment it takes to read these two files.
"""

import sys

from llmkit.core.interrupted import command_in, interrupted_line, is_ctrl_c, record_sigint


def main() -> None:
    record_sigint()
    try:
        from llmkit.cli import app

        # typer's own parsing turns a Ctrl-C into a bare exit and `_Commands` says the line from there on; what
        # reaches here is the moments before (typer building the click command) and the import above
        app()
    except (KeyboardInterrupt, ImportError) as err:
        if not is_ctrl_c(err):
            raise  # an import that failed of itself
        sys.stderr.write(f"\n{interrupted_line(command_in(sys.argv[1:]))}\n")
        sys.exit(130)
