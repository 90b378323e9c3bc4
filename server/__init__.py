"""Stage 4, serving (llmkit.server): HELM's HTTP API. Public entry: `python -m llmkit.server` (`__main__.main`).

protocol.py holds the wire models, app.py the routes, engine.py the model work, scheduler.py the continuous batching
(batch.py: the padded KV cache it shares), settings.py the one settings class.
It imports only llmkit.core: the submission image ships this package and that part of the base, nothing else.
"""
