"""Google-shaped API errors: one exception type and the JSON bodies Gmail sends.

Every failure the fake serves goes through `GmailApiError`, so each one has
the body Google documents (`{"error": {"code", "message", "errors": [...],
"status"}}`) and clients under test exercise their real error parsing.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GmailApiError",
    "bad_request",
    "conflict",
    "delegation_denied",
    "error_body",
    "failed_precondition",
    "invalid_argument",
    "not_found",
    "rate_limited",
    "unauthenticated",
]

_STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_NOT_FOUND_MESSAGE = "Requested entity was not found."


class GmailApiError(Exception):
    """An HTTP error answered with Google's JSON error body (and optional extra headers)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str,
        domain: str = "global",
        status: str | None = None,
        location: str | None = None,
        location_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.status = status or _STATUS_NAMES.get(code, "UNKNOWN")
        self.location = location
        self.location_type = location_type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(
            self.code,
            self.message,
            reason=self.reason,
            domain=self.domain,
            status=self.status,
            location=self.location,
            location_type=self.location_type,
        )


def error_body(
    code: int,
    message: str,
    *,
    reason: str,
    domain: str = "global",
    status: str | None = None,
    location: str | None = None,
    location_type: str | None = None,
) -> dict[str, Any]:
    """The JSON document Google APIs answer errors with."""
    item: dict[str, Any] = {"message": message, "domain": domain, "reason": reason}
    if location is not None:
        item["location"] = location
    if location_type is not None:
        item["locationType"] = location_type
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [item],
            "status": status or _STATUS_NAMES.get(code, "UNKNOWN"),
        }
    }


def not_found(message: str = _NOT_FOUND_MESSAGE) -> GmailApiError:
    return GmailApiError(404, message, reason="notFound")


def bad_request(message: str) -> GmailApiError:
    return GmailApiError(400, message, reason="badRequest", status="FAILED_PRECONDITION")


def failed_precondition() -> GmailApiError:
    """What Gmail answers, now and then or for good, for a message it will not serve."""
    return GmailApiError(400, "Precondition check failed.", reason="failedPrecondition", status="FAILED_PRECONDITION")


def invalid_argument(message: str, *, location: str | None = None) -> GmailApiError:
    return GmailApiError(
        400,
        message,
        reason="invalidArgument",
        location=location,
        location_type="parameter" if location else None,
    )


def conflict(message: str) -> GmailApiError:
    return GmailApiError(409, message, reason="duplicate")


def unauthenticated(message: str = "Invalid Credentials") -> GmailApiError:
    # Google pairs the 401 body with this challenge; google-auth ignores it, other clients may not.
    return GmailApiError(
        401,
        message,
        reason="authError",
        location="Authorization",
        location_type="header",
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
    )


def delegation_denied(user_id: str) -> GmailApiError:
    return GmailApiError(403, f"Delegation denied for {user_id}", reason="forbidden")


def rate_limited(retry_after_seconds: int, retry_at_rfc3339: str, *, status_code: int = 429) -> GmailApiError:
    """Gmail's per-user rate error: 429 RESOURCE_EXHAUSTED, or the older 403 userRateLimitExceeded form."""
    headers = {"Retry-After": str(retry_after_seconds)}
    if status_code == 403:
        return GmailApiError(
            403,
            "User Rate Limit Exceeded",
            reason="userRateLimitExceeded",
            domain="usageLimits",
            status="PERMISSION_DENIED",
            headers=headers,
        )
    return GmailApiError(
        429,
        f"User-rate limit exceeded.  Retry after {retry_at_rfc3339}",
        reason="rateLimitExceeded",
        domain="usageLimits",
        headers=headers,
    )
