"""Account rows: create, look up (by id or address), list with counts, and status changes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass
class Account:
    id: str
    provider: str
    address: str
    settings: dict[str, Any]
    credentials: bytes | None
    status: str
    status_reason: str | None
    created_at: datetime
    updated_at: datetime


class AccountNotFound(LookupError):
    pass


def _account(row: asyncpg.Record) -> Account:
    return Account(
        id=row["id"], provider=row["provider"], address=row["address"],
        settings=json.loads(row["settings"]), credentials=row["credentials"],
        status=row["status"], status_reason=row["status_reason"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


async def create_account(
    conn: asyncpg.Connection, *, account_id: str, provider: str, address: str,
    settings: dict[str, Any], credentials: bytes,
) -> Account:
    row = await conn.fetchrow(
        """INSERT INTO accounts (id, provider, address, settings, credentials)
           VALUES ($1, $2, $3, $4::jsonb, $5) RETURNING *""",
        account_id, provider, address, json.dumps(settings), credentials,
    )
    return _account(row)


async def get_account(conn: asyncpg.Connection, id_or_address: str) -> Account:
    rows = await conn.fetch(
        "SELECT * FROM accounts WHERE id = $1 OR lower(address) = lower($1) ORDER BY id = $1 DESC",
        id_or_address,
    )
    if not rows:
        raise AccountNotFound(f"no account {id_or_address!r} (see `mailsync account list`)")
    if len(rows) > 1 and rows[0]["id"] != id_or_address:
        ids = ", ".join(r["id"] for r in rows)
        raise AccountNotFound(f"{id_or_address!r} matches several accounts ({ids}): use the id")
    return _account(rows[0])


async def list_accounts(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT a.id, a.provider, a.address, a.status, a.status_reason, a.created_at,
                  -- IMAP folders (not deleted) or Gmail labels
                  (SELECT count(*) FROM folders f WHERE f.account_id = a.id AND f.deleted_at IS NULL)
                  + (SELECT count(*) FROM gmail_labels l WHERE l.account_id = a.id) AS folders,
                  -- what the mailbox holds now: deleted messages are kept but not counted
                  (SELECT count(*) FROM messages m WHERE m.account_id = a.id AND m.deleted_at IS NULL) AS messages,
                  (SELECT coalesce(sum(size), 0) FROM messages m
                   WHERE m.account_id = a.id AND m.deleted_at IS NULL) AS bytes
           FROM accounts a ORDER BY a.created_at"""
    )
    return [dict(r) for r in rows]


async def set_status(conn: asyncpg.Connection, account_id: str, status: str, reason: str | None) -> None:
    await conn.execute(
        "UPDATE accounts SET status = $2, status_reason = $3, updated_at = now() WHERE id = $1",
        account_id, status, reason,
    )


async def update_credentials(conn: asyncpg.Connection, account_id: str, credentials: bytes) -> None:
    await conn.execute(
        "UPDATE accounts SET credentials = $2, updated_at = now() WHERE id = $1", account_id, credentials
    )


async def delete_account(conn: asyncpg.Connection, account_id: str) -> int:
    """The account and everything mirrored for it (the foreign keys cascade); returns messages removed."""
    async with conn.transaction():
        n = await conn.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", account_id)
        await conn.execute("DELETE FROM accounts WHERE id = $1", account_id)
    return int(n)
