"""Authenticating webhook senders: a shared token for Pub/Sub pushes, an HMAC signature for events.

Both comparisons are constant-time (hmac.compare_digest) so response timing leaks nothing about
the secret. Checks run on the raw request before the body is parsed: an unauthenticated caller
learns nothing about the schema from 422 answers.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request, status
from pydantic import SecretStr

from gateway.settings import TokenSource


def _same(expected: str, presented: str) -> bool:
    # Bytes, not str: compare_digest refuses non-ASCII str, and a hostile header may contain any.
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))


def not_configured(what: str) -> HTTPException:
    # A missing secret is the operator's mistake, not the sender's: 503 makes senders retry until
    # it is fixed, so nothing is lost, where a 4xx might make them give up or disable the endpoint.
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"gateway has no {what} configured")


def presented_tokens(request: Request, source: TokenSource) -> list[str]:
    tokens: list[str] = []
    if source in ("query", "either") and (token := request.query_params.get("token")):
        tokens.append(token)
    if source in ("bearer", "either"):
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            tokens.append(credentials.strip())
    return tokens


def check_pubsub_token(request: Request, secret: SecretStr | None, source: TokenSource) -> None:
    """401 when no token is presented, 403 when a presented token is wrong."""
    if secret is None or not secret.get_secret_value():
        raise not_configured("Pub/Sub token (MAILSYNC_PUBSUB_TOKEN)")
    tokens = presented_tokens(request, source)
    if not tokens:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing Pub/Sub token", headers={"WWW-Authenticate": "Bearer"},
        )
    expected = secret.get_secret_value()
    # Evaluate every candidate (no short-circuit) so timing does not reveal which one was checked.
    if not any([_same(expected, t) for t in tokens]):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid Pub/Sub token")


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature a sender puts in the header: lowercase hex HMAC-SHA256 of the raw body."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def check_signature(body: bytes, header_value: str | None, secret: SecretStr | None, header_name: str) -> None:
    """401 unless `header_value` is the HMAC-SHA256 of `body` (hex, optionally `sha256=`-prefixed)."""
    if secret is None or not secret.get_secret_value():
        raise not_configured("webhook secret (MAILSYNC_WEBHOOK_SECRET)")
    if not header_value or not header_value.strip():
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"missing {header_name} header")
    presented = header_value.strip()
    if presented[:7].lower() == "sha256=":
        presented = presented[7:]
    if not _same(sign(secret.get_secret_value(), body), presented.lower()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "signature mismatch")
