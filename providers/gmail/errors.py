"""Gmail error classes and the one place where client exceptions become them (DESIGN rule 5).

Everything that leaves `providers.gmail` is a `providers.errors.ProviderError`:
callers never see googleapiclient's `HttpError`, google-auth's `RefreshError`
or httplib2's transport exceptions. `classify` maps them:

| raised by the client                                     | becomes                          | retryable |
|----------------------------------------------------------|----------------------------------|-----------|
| HTTP 401; `RefreshError` (invalid_grant, invalid_client) | `AuthExpired` (an `AuthError`)   | no        |
| HTTP 429; 403 rateLimitExceeded / userRateLimitExceeded  | `RateLimited(retry_after)`       | yes       |
| HTTP 403 dailyLimitExceeded / quotaExceeded              | `RateLimited(retry_after)`       | yes       |
| HTTP 403 (any other reason: forbidden, delegation)       | `AccessDenied` (an `AuthError`)  | no        |
| HTTP 404                                                 | `NotFound` (`HistoryExpired` for history.list) | no |
| HTTP 5xx, `BatchError` (garbled batch answer)            | `GmailServerError` (a `ServerError`) | yes   |
| other HTTP 4xx (400, 409, ...)                           | `RequestRejected`                | no        |
| socket errors, timeouts, httplib2 errors, `TransportError`, retryable `RefreshError` | `NetworkError` | yes |
"""

from __future__ import annotations

import email.utils
import json
import socket
import ssl
import time
from typing import Any

import httplib2
from google.auth.exceptions import RefreshError, TransportError
from googleapiclient.errors import BatchError, HttpError

from providers.errors import AuthError, NetworkError, ProviderError, ServerError

__all__ = [
    "AccessDenied",
    "AuthExpired",
    "GmailServerError",
    "HistoryExpired",
    "NotFound",
    "RateLimited",
    "RequestRejected",
    "classify",
    "error_reason",
    "retry_after_seconds",
]

DEFAULT_RETRY_AFTER = 1.0
# A daily/project quota answer without Retry-After: retrying within seconds only burns more requests.
DEFAULT_QUOTA_RETRY_AFTER = 60.0

_RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_QUOTA_REASONS = frozenset({"dailyLimitExceeded", "quotaExceeded"})


class AuthExpired(AuthError):
    """The grant is revoked or expired (401 after a refresh, `invalid_grant`): wait for new credentials."""

    retryable = False


class AccessDenied(AuthError):
    """403 that is not a rate limit: the credentials lack a scope or delegation for this mailbox."""

    retryable = False


class RateLimited(ProviderError):
    """429 / 403 rate or quota errors; `retry_after` is the server's Retry-After in seconds (1 s if absent)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HistoryExpired(ProviderError):
    """history.list answered 404: the stored historyId is too old, only a full resync can catch up."""

    retryable = False


class NotFound(ProviderError):
    """404 on a single resource (message, thread, label): it is gone; retrying cannot bring it back."""

    retryable = False


class GmailServerError(ServerError):
    """5xx (backendError) or a batch answer the client could not parse; usually transient."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RequestRejected(ProviderError):
    """Another 4xx (400 invalid argument, 409 ...): the request itself is wrong, so retrying repeats it."""

    retryable = False

    def __init__(self, message: str, *, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def error_reason(exc: HttpError) -> str:
    """The first `errors[].reason` of Google's JSON error body ('' when absent or not JSON)."""
    try:
        body = json.loads(exc.content)
        errors = body["error"].get("errors") or []
        return str(errors[0].get("reason", "")) if errors else str(body["error"].get("status", ""))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return ""


def retry_after_seconds(headers: Any, default: float = DEFAULT_RETRY_AFTER) -> float:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 section 10.2.3); `default` otherwise."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return default
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def _classify_http(exc: HttpError, what: str) -> ProviderError:
    status = int(exc.resp.status)
    reason = error_reason(exc)
    message = f"{what}: HTTP {status} {reason or exc.reason}".rstrip()
    if status == 401:
        return AuthExpired(message)
    if status == 429 or (status == 403 and reason in _RATE_REASONS):
        return RateLimited(message, retry_after=retry_after_seconds(exc.resp))
    if status == 403 and reason in _QUOTA_REASONS:
        return RateLimited(message, retry_after=retry_after_seconds(exc.resp, DEFAULT_QUOTA_RETRY_AFTER))
    if status == 403:
        return AccessDenied(message)
    if status == 404:
        return NotFound(message)
    if status >= 500:
        return GmailServerError(message, status=status)
    return RequestRejected(message, status=status, reason=reason)


def _refresh_reason(exc: RefreshError) -> str:
    """`invalid_grant: Token has been expired or revoked.` rather than the tuple google-auth carries."""
    detail = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    code = detail.get("error")
    text = detail.get("error_description")
    if code:
        return f"{code}: {text}" if text else str(code)
    first = exc.args[0] if exc.args else exc
    return str(first)


def classify(exc: BaseException, what: str = "gmail") -> ProviderError:
    """The `ProviderError` for an exception raised by google-api-python-client / google-auth / httplib2.

    `what` names the operation in the message (e.g. "history.list"). A `ProviderError` passes through.
    Anything unrecognised becomes a retryable `ProviderError`: an unknown failure should be retried
    with backoff rather than silently park an account.
    """
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, BatchError):  # an HttpError subclass, often without a response: check it first
        return GmailServerError(f"{what}: malformed batch response: {exc}")
    if isinstance(exc, HttpError):
        return _classify_http(exc, what)
    if isinstance(exc, RefreshError):
        # google-auth marks token-endpoint 5xx/429 answers retryable; invalid_grant/invalid_client are not.
        if exc.retryable:
            return NetworkError(f"{what}: token refresh failed, retryable: {exc}")
        return AuthExpired(f"{what}: the Gmail grant was refused ({_refresh_reason(exc)}): revoked or expired; "
                           "store a new one with `mailsync account update ACCOUNT --credentials FILE`")
    if isinstance(exc, TransportError):
        return NetworkError(f"{what}: token endpoint unreachable: {exc}")
    if isinstance(exc, (httplib2.HttpLib2Error, socket.timeout, TimeoutError, ssl.SSLError, OSError)):
        return NetworkError(f"{what}: {type(exc).__name__}: {exc}")
    return ProviderError(f"{what}: {type(exc).__name__}: {exc}")
