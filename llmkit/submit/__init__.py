"""Stage 5, the submission: a track's zip (Dockerfile, requirements, the server's code, manifest), verified.

Public entry: `build_submission(track, ...)`; `verify_submission(zip)` and `summarize(zip, ...)` check and report.
"""

from llmkit.submit.package import build_submission
from llmkit.submit.summary import summarize
from llmkit.submit.verify import verify_submission

__all__ = ["build_submission", "summarize", "verify_submission"]
