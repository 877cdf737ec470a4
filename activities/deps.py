"""What activities share inside one worker: the database pool, the credential box, settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from config import Settings
from providers.gmail import GmailCredentials, GmailSession, TokenBucket, parse_credentials
from providers.imap.client import ImapSession
from providers.imap.settings import ImapSettings
from store.accounts import get_account
from store.crypto import CredentialBox


@dataclass
class Deps:
    pool: asyncpg.Pool
    box: CredentialBox
    settings: Settings
    # account id -> (sealed credentials, their google-auth object): activities of an account share one
    # access token until it expires or the stored grant changes
    _google: dict[str, tuple[bytes, GmailCredentials, Any]] = field(default_factory=dict)

    async def imap_session(self, account_id: str) -> ImapSession:
        """An unopened session for the account (use `async with`); the password never leaves this process."""
        async with self.pool.acquire() as conn:
            account = await get_account(conn, account_id)
        password = self.box.open(account.credentials or b"", account.id).decode()
        return ImapSession(
            ImapSettings.model_validate(account.settings), password,
            auth_timeout=self.settings.imap_auth_timeout, timeout=self.settings.imap_timeout,
        )

    async def gmail_session(self, account_id: str, units_per_second: float) -> GmailSession:
        """An unopened Gmail session paying `units_per_second` of the account's quota (use `async with`).

        The workflow splits the account's quota between the activities it runs at once, so the shares
        add up to the account's limit whichever workers they land on (DESIGN: Gmail quota).
        """
        async with self.pool.acquire() as conn:
            account = await get_account(conn, account_id)
        sealed = account.credentials or b""
        cached = self._google.get(account_id)
        if cached is None or cached[0] != sealed:
            creds = parse_credentials(json.loads(self.box.open(sealed, account.id)))
            cached = (sealed, creds, creds.to_google())
            self._google[account_id] = cached
        _, creds, google = cached
        return GmailSession(
            creds, api_endpoint=account.settings.get("api_endpoint"), batch_uri=account.settings.get("batch_uri"),
            timeout=self.settings.imap_timeout, bucket=TokenBucket.for_quota(units_per_second),
            google_credentials=google,
        )
