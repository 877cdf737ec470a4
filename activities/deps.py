"""What activities share inside one worker: the database pool, the credential box, settings."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from config import Settings
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
