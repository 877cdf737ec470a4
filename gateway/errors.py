"""Failures the gateway answers with 503 + Retry-After: a dependency is down, the sender should retry."""

from __future__ import annotations


class ServiceUnavailable(Exception):
    """Temporal or PostgreSQL could not be reached (or answered too slowly) for this request."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service} unavailable: {reason}")
        self.service = service
        self.reason = reason


class UpstreamError(Exception):
    """A dependency answered, but with an error that retrying will not fix (e.g. a failing query handler)."""
