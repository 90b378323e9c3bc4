"""Stage 6, evaluation (llmkit.helm_eval): crfm-helm in its own venv against the server; scores, charts, reports.

Public entry: `helm_eval(...)` (what `llmkit helm-eval` runs); `helm_setup()` installs HELM's venv.
"""

from llmkit.helm_eval.evaluate import helm_eval
from llmkit.helm_eval.setup import helm_setup

__all__ = ["helm_eval", "helm_setup"]
