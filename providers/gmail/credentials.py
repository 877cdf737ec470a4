"""Gmail credentials: an OAuth user grant (refresh token) or a service account with domain-wide delegation.

`GmailCredentials` is what mailsync stores (encrypted, as `model_dump_json()`)
and hands to `GmailSession`; secrets are kept out of `repr` so they never
reach a log line by accident. `load_credentials_file` accepts the JSON files
people actually have:

- an `authorized_user` file as google-auth / `gcloud auth application-default login`
  write it: `{"type": "authorized_user", "client_id", "client_secret", "refresh_token"}`;
- an OAuth client secret file (`{"installed": {...}}` or `{"web": {...}}`) with a
  `refresh_token` added at its top level;
- a `service_account` key file, with the mailbox to impersonate given separately (`subject`);
- a file written from `GmailCredentials` itself (`{"kind": ...}`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import google.auth.credentials
import google.oauth2.credentials
from google.oauth2 import service_account
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["GMAIL_READONLY", "GOOGLE_TOKEN_URI", "GmailCredentials", "load_credentials_file", "parse_credentials"]

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"


class GmailCredentials(BaseModel):
    """Either `kind="authorized_user"` (client id/secret + refresh token) or `kind="service_account"`.

    For a user grant, `scopes` defaults to None: the refresh request then asks for no scope and gets
    what the user consented to (asking for more than the grant holds fails with invalid_scope).
    A service account must name its scopes, gmail.readonly by default, and the `subject` it acts for.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["authorized_user", "service_account"] = "authorized_user"
    client_id: str | None = None
    client_secret: str | None = Field(default=None, repr=False)
    refresh_token: str | None = Field(default=None, repr=False)
    token_uri: str = GOOGLE_TOKEN_URI
    service_account_info: dict[str, Any] | None = Field(default=None, repr=False)
    subject: str | None = None
    scopes: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _complete(self) -> GmailCredentials:
        if self.kind == "authorized_user":
            missing = [name for name in ("client_id", "client_secret", "refresh_token") if not getattr(self, name)]
            if missing:
                raise ValueError(f"authorized_user credentials need {', '.join(missing)}")
        else:
            info = self.service_account_info or {}
            missing = [name for name in ("client_email", "private_key", "token_uri") if not info.get(name)]
            if missing:
                raise ValueError(f"service account key lacks {', '.join(missing)}")
            if not self.subject:
                raise ValueError("a service account needs the user to impersonate (subject)")
        return self

    @classmethod
    def oauth(
        cls, client_id: str, client_secret: str, refresh_token: str, *, token_uri: str = GOOGLE_TOKEN_URI
    ) -> GmailCredentials:
        return cls(client_id=client_id, client_secret=client_secret, refresh_token=refresh_token, token_uri=token_uri)

    @classmethod
    def service_account(
        cls, info: dict[str, Any], subject: str, *, scopes: tuple[str, ...] = (GMAIL_READONLY,)
    ) -> GmailCredentials:
        return cls(
            kind="service_account",
            service_account_info=dict(info),
            subject=subject,
            token_uri=str(info.get("token_uri") or GOOGLE_TOKEN_URI),
            scopes=scopes,
        )

    def to_google(self) -> google.auth.credentials.Credentials:
        """A fresh google-auth credentials object (no access token yet; the first request refreshes)."""
        if self.kind == "service_account":
            assert self.service_account_info is not None
            return service_account.Credentials.from_service_account_info(
                self.service_account_info, scopes=list(self.scopes or (GMAIL_READONLY,)), subject=self.subject
            )
        return google.oauth2.credentials.Credentials(
            token=None,
            refresh_token=self.refresh_token,
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_uri=self.token_uri,
            scopes=list(self.scopes) if self.scopes else None,
        )


def parse_credentials(data: dict[str, Any], *, subject: str | None = None) -> GmailCredentials:
    """`GmailCredentials` from a parsed credentials JSON document (see the module docstring for shapes)."""
    if not isinstance(data, dict):
        raise ValueError("credentials JSON must be an object")
    if "kind" in data:
        return GmailCredentials.model_validate({**data, **({"subject": subject} if subject else {})})
    kind = data.get("type")
    if kind == "authorized_user":
        return GmailCredentials.oauth(
            str(data.get("client_id") or ""),
            str(data.get("client_secret") or ""),
            str(data.get("refresh_token") or ""),
            token_uri=str(data.get("token_uri") or GOOGLE_TOKEN_URI),
        )
    if kind == "service_account":
        if not subject:
            raise ValueError("a service account key needs the user to impersonate (--user)")
        return GmailCredentials.service_account(data, subject)
    client = data.get("installed") or data.get("web")
    if isinstance(client, dict):
        refresh_token = data.get("refresh_token") or client.get("refresh_token")
        if not refresh_token:
            raise ValueError("an OAuth client secret file needs a refresh_token (run the consent flow first)")
        return GmailCredentials.oauth(
            str(client.get("client_id") or ""),
            str(client.get("client_secret") or ""),
            str(refresh_token),
            token_uri=str(client.get("token_uri") or GOOGLE_TOKEN_URI),
        )
    raise ValueError(
        "unrecognised credentials JSON: expected type authorized_user or service_account, "
        "or an OAuth client secret file with a refresh_token"
    )


def load_credentials_file(path: str | Path, *, subject: str | None = None) -> GmailCredentials:
    """Read a credentials JSON file; `subject` is the mailbox a service account acts for."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    return parse_credentials(data, subject=subject)
