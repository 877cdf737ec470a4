"""Webhook gateway: provider push notifications in, Temporal signals to account workflows out.

Entry points: `gateway.app.create_app(settings)` (the FastAPI app), `gateway.server.serve(host, port)`
(what `mailsync gateway` runs), `python -m gateway`, and `python -m gateway.latency` (benchmark).
"""
