"""OAuth 2.0 for the fake: refresh tokens bound to mailboxes, short-lived access tokens.

The token endpoint answers like Google's (`invalid_grant` for a revoked
refresh token, `invalid_client` for a wrong client), so google-auth's
`Credentials.refresh` raises the same `RefreshError` it would in
production. Tests revoke or expire tokens to drive a client through its
auth failure paths.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from devkit.gmail_fake.errors import unauthenticated

__all__ = ["AccessToken", "OAuthError", "TokenIssuer"]

SCOPE = "https://www.googleapis.com/auth/gmail.readonly"


class OAuthError(Exception):
    """An RFC 6749 error answer of the token endpoint."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class AccessToken:
    token: str
    user: str
    expires_at: float


class TokenIssuer:
    """Refresh tokens per user, access tokens per refresh; thread-safe."""

    def __init__(
        self,
        *,
        access_token_ttl: int = 3600,
        client_id: str | None = None,
        client_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.access_token_ttl = access_token_ttl
        self.client_id = client_id
        self.client_secret = client_secret
        self._clock = clock
        self._lock = threading.Lock()
        self._refresh: dict[str, str] = {}  # refresh token -> user address
        self._access: dict[str, AccessToken] = {}
        self.refreshes = 0

    def bind(self, user: str, refresh_token: str | None = None) -> str:
        """Give `user` a (new) valid refresh token; returns it."""
        token = refresh_token or f"1//fake-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._refresh[token] = user
        return token

    def refresh_tokens(self, user: str) -> list[str]:
        with self._lock:
            return [token for token, owner in self._refresh.items() if owner.lower() == user.lower()]

    def grant(self, form: dict[str, str]) -> AccessToken:
        """Handle a token-endpoint request (form fields already decoded)."""
        grant_type = form.get("grant_type", "")
        if grant_type != "refresh_token":
            raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        if self.client_id is not None and form.get("client_id") != self.client_id:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        if self.client_secret is not None and form.get("client_secret") != self.client_secret:
            raise OAuthError(401, "invalid_client", "Unauthorized")
        refresh_token = form.get("refresh_token", "")
        if not refresh_token:
            raise OAuthError(400, "invalid_request", "Missing required parameter: refresh_token")
        with self._lock:
            user = self._refresh.get(refresh_token)
            if user is None:
                raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
            token = AccessToken(f"ya29.fake-{secrets.token_urlsafe(32)}", user, self._clock() + self.access_token_ttl)
            self._access[token.token] = token
            self.refreshes += 1
            return token

    def issue(self, user: str) -> AccessToken:
        """An access token for `user` without the token endpoint (tests that need a bare token)."""
        with self._lock:
            token = AccessToken(f"ya29.fake-{secrets.token_urlsafe(32)}", user, self._clock() + self.access_token_ttl)
            self._access[token.token] = token
            return token

    def authenticate(self, authorization: str | None) -> str:
        """The user an `Authorization: Bearer …` header speaks for, or the 401 Google answers."""
        if not authorization:
            raise unauthenticated(
                "Request is missing required authentication credential. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential."
            )
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise unauthenticated()
        with self._lock:
            token = self._access.get(credential.strip())
            if token is None or token.expires_at <= self._clock():
                raise unauthenticated()
            return token.user

    def revoke(self, user: str) -> None:
        """What a user removing the app's access does: refresh and access tokens all stop working."""
        with self._lock:
            for token, owner in list(self._refresh.items()):
                if owner.lower() == user.lower():
                    del self._refresh[token]
        self.revoke_access_tokens(user)

    def revoke_access_tokens(self, user: str) -> None:
        with self._lock:
            for token, access in list(self._access.items()):
                if access.user.lower() == user.lower():
                    del self._access[token]

    def expire_access_tokens(self, user: str) -> None:
        with self._lock:
            for access in self._access.values():
                if access.user.lower() == user.lower():
                    access.expires_at = 0.0


