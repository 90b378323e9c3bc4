"""python -m llmkit.server [--model ...] [--adapter [NAME=]DIR ...] [--host ...] [--port ...]: serve HELM's HTTP API
(and OpenAI's, /metrics).

Every flag is a field of `ServerSettings` (also settable as an `LLMKIT_<FIELD>` environment variable).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from llmkit.core.devices import quiet_bitsandbytes_kernel_notice
from llmkit.core.errors import problems
from llmkit.core.models import local_model_dir
from llmkit.core.processes import log_to_stderr, no_bars_when_piped
from llmkit.server.settings import EngineName, ServerSettings


def parse_settings(argv: Sequence[str] | None = None) -> ServerSettings:
    return ServerSettings(
        _cli_parse_args=list(argv) if argv is not None else True,
        _cli_prog_name="python -m llmkit.server",
        _cli_kebab_case=True,
        _cli_implicit_flags=True,
        _cli_hide_none_type=True,  # help: "--model str", not "--model {str,null}" (still accepts null)
    )


def _setting_name(field: str, args: Sequence[str]) -> str:
    """The flag a bad value came from, or its LLMKIT_ environment variable (and the flag) when no flag gave it."""
    flag, variable = "--" + field.replace("_", "-"), "LLMKIT_" + field.upper()
    given = any(arg == flag or arg.startswith(flag + "=") for arg in args)
    return f"{variable} ({flag})" if variable in os.environ and not given else flag


def main(argv: Sequence[str] | None = None) -> None:
    log_to_stderr(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    no_bars_when_piped()  # a container's log, a test's file: no "Loading weights" bar redrawn in it
    quiet_bitsandbytes_kernel_notice()
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        settings = parse_settings(args)
    except ValidationError as err:
        lines = problems(err, key=lambda field: _setting_name(field, args))  # `--max-context: ... (got '0')`
        sys.stderr.write(f"Error: invalid settings: {'; '.join(lines)}\n")
        raise SystemExit(2) from None  # a usage error, as argparse's for an unknown flag and click's in every command
    if settings.model is not None:
        try:  # before torch and the engine: a mistyped --model is one line at once, not after 5 s of imports
            local_model_dir(settings.model)
        except OSError as err:
            raise SystemExit(f"Error: cannot serve: {err}") from None
    if settings.engine is EngineName.vllm and importlib.util.find_spec("vllm") is None:
        from llmkit.core.venvs import ToolVenvError
        from llmkit.server.vllm_venv import exec_server

        try:
            exec_server(args)  # the same flags, in vLLM's venv
        except ToolVenvError as err:
            raise SystemExit(f"Error: cannot serve: {err}") from None
    from llmkit.server.app import serve

    serve(settings)


if __name__ == "__main__":
    main()
