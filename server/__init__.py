"""Stage 4, serving (llmkit.server): HELM's HTTP API. Public entry: `python -m llmkit.server` (`__main__.main`).

protocol.py holds the wire models, helm_routes.py the routes, app.py the app (and its shutdown), errors.py and
middleware.py what every route shares, engine.py the model work, scheduler.py the continuous batching (batch.py: the
padded KV cache it shares), settings.py the one settings class. OpenAI's API: openai_protocol.py
(wire models) and openai_routes.py (routes), on the same engine; serving.py what both APIs' routes share;
observe.py the /metrics, the access log and the request id.
It imports only llmkit.core: the submission image ships this package and that part of the base, nothing else.
"""
