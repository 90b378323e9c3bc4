"""Stage 6, evaluation (llmkit.helm_eval): crfm-helm in its own venv against the server; scores, charts, reports.

Public entry: `helm_eval(...)` (what `llmkit helm-eval` runs); `helm_setup()` installs HELM's venv.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmkit.helm_eval.evaluate import helm_eval
    from llmkit.helm_eval.setup import helm_setup

__all__ = ["helm_eval", "helm_setup"]


def __getattr__(name: str) -> object:
    # Imported on first use, so that the CLI can read this stage's defaults (confgen, decontaminate) at start
    # without importing the runner (httpx, rich, the server's launcher).
    if name == "helm_eval":
        from llmkit.helm_eval.evaluate import helm_eval

        return helm_eval
    if name == "helm_setup":
        from llmkit.helm_eval.setup import helm_setup

        return helm_setup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
