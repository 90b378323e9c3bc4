"""llmkit: the one command-line entry point; the Makefile's targets call it.

Each command only parses its arguments and hands over to the stage's module, imported lazily so that
`llmkit --help` starts without torch.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


# --- serve: server/ -------------------------------------------------------------------------------------------
@app.command(context_settings=_PASS_THROUGH)
def serve(ctx: typer.Context) -> None:
    """Serve a model over HELM's HTTP API; flags as `python -m server --help` lists them."""
    from server.__main__ import main

    main(ctx.args)


@app.command()
def bench(out: str = typer.Option("bench-results", help="Folder for the JSON results.")) -> None:
    """Benchmarks on the embedded default model; prints ratios and writes JSON."""
    from server.bench import run_benchmarks

    run_benchmarks(out)


if __name__ == "__main__":
    app()
