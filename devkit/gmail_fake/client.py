"""Build google-api-python-client objects that talk to a `GmailFake` (or any Gmail-compatible URL).

The service comes from the discovery document shipped next to this module
(a copy of the client's static `gmail.v1.json`), so nothing is fetched from
Google. Request URIs follow `api_endpoint` (`{endpoint}/gmail/v1/users/…`),
but a service's `new_batch_http_request()` still targets Google's batch URL
and takes no URL argument: `new_batch_request` builds the
`BatchHttpRequest` with the fake's batch URI instead.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google.oauth2.credentials
from googleapiclient.discovery import Resource, build_from_document
from googleapiclient.http import BatchHttpRequest

if TYPE_CHECKING:
    from devkit.gmail_fake.server import GmailFake

__all__ = ["DISCOVERY_DOCUMENT", "build_gmail_service", "discovery_document", "new_batch_request", "user_credentials"]

DISCOVERY_DOCUMENT = Path(__file__).with_name("gmail.v1.json")
SCOPES = ("https://www.googleapis.com/auth/gmail.readonly",)


@functools.cache
def discovery_document() -> str:
    return DISCOVERY_DOCUMENT.read_text(encoding="utf-8")


def _endpoint(target: GmailFake | str) -> str:
    return (target if isinstance(target, str) else target.endpoint).rstrip("/")


def build_gmail_service(
    target: GmailFake | str, credentials: Any = None, *, http: Any = None, **kwargs: Any
) -> Resource:
    """A Gmail v1 service whose requests go to `target` (a GmailFake or its endpoint URL).

    Pass `credentials` (google-auth), or an authorized `http` (e.g. an
    `AuthorizedHttp` with `max_refresh_attempts=0` to see raw 401s), not both.
    """
    return build_from_document(
        discovery_document(),
        credentials=credentials,
        http=http,
        client_options={"api_endpoint": _endpoint(target)},
        **kwargs,
    )


def new_batch_request(target: GmailFake | str, callback: Any = None) -> BatchHttpRequest:
    """A batch aimed at `{endpoint}/batch/gmail/v1` (the service's own would go to Google)."""
    return BatchHttpRequest(callback=callback, batch_uri=f"{_endpoint(target)}/batch/gmail/v1")


def user_credentials(
    fake: GmailFake, address: str, *, client_id: str | None = None, client_secret: str | None = None
) -> google.oauth2.credentials.Credentials:
    """Credentials as the app would hold them: no access token yet, a refresh token, the fake's token URI.

    The client id/secret default to the ones the fake was told to require, if any.
    """
    return google.oauth2.credentials.Credentials(
        token=None,
        refresh_token=fake.refresh_token(address),
        client_id=client_id or fake.tokens.client_id or "mailsync-test-client",
        client_secret=client_secret or fake.tokens.client_secret or "test-secret",
        token_uri=fake.token_uri,
        scopes=list(SCOPES),
    )
