"""What activities share inside one worker: the database pool, the credential box, settings."""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

from config import Settings
from providers.gmail import GmailSession, TokenBucket, parse_credentials
from providers.imap.client import ImapSession
from providers.imap.settings import ImapSettings
from store.accounts import get_account
from store.crypto import CredentialBox


@dataclass
class Deps:
    pool: asyncpg.Pool
    box: CredentialBox
    settings: Settings

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
        creds = parse_credentials(json.loads(self.box.open(account.credentials or b"", account.id)))
        return GmailSession(
            creds, api_endpoint=account.settings.get("api_endpoint"), batch_uri=account.settings.get("batch_uri"),
            timeout=self.settings.imap_timeout, bucket=TokenBucket.for_quota(units_per_second),
        )
