"""Folder rows: the read model of each mailbox's name, role and server counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from store.changes import remove_stale_locations


@dataclass
class FolderRow:
    name: str
    delimiter: str | None
    role: str | None
    attributes: list[str]


async def upsert_folders(conn: asyncpg.Connection, account_id: str, folders: Sequence[FolderRow]) -> dict[str, int]:
    rows = await conn.fetch(
        """INSERT INTO folders (account_id, name, delimiter, role, attributes)
           SELECT $1, n, d, r, string_to_array(a, ' ')
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS t(n, d, r, a)
           ON CONFLICT (account_id, name) DO UPDATE SET delimiter = EXCLUDED.delimiter,
               role = EXCLUDED.role, attributes = EXCLUDED.attributes, deleted_at = NULL, updated_at = now()
           RETURNING id, name""",
        account_id, [f.name for f in folders], [f.delimiter for f in folders],
        [f.role for f in folders], [" ".join(f.attributes) for f in folders],
    )
    return {r["name"]: r["id"] for r in rows}


async def record_folder_state(
    conn: asyncpg.Connection, folder_id: int, *, uidvalidity: int, uidnext: int | None,
    highestmodseq: int | None, message_count: int,
) -> int:
    """Store the server's counters; locations under another UIDVALIDITY are stale and go.

    Returns how many stale locations were removed (non-zero means the folder is being re-mirrored).
    """
    async with conn.transaction():
        await conn.execute(
            """UPDATE folders SET uidvalidity = $2, uidnext = $3, highestmodseq = $4,
                   message_count = $5, deleted_at = NULL, updated_at = now() WHERE id = $1""",
            folder_id, uidvalidity, uidnext, highestmodseq, message_count,
        )
        return await remove_stale_locations(conn, folder_id, uidvalidity)


async def folder_by_name(conn: asyncpg.Connection, account_id: str, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM folders WHERE account_id = $1 AND name = $2", account_id, name)


async def live_folders(conn: asyncpg.Connection, account_id: str) -> dict[str, int]:
    """Name → id of the folders that exist on the server as far as the mirror knows."""
    rows = await conn.fetch(
        "SELECT id, name FROM folders WHERE account_id = $1 AND deleted_at IS NULL", account_id
    )
    return {r["name"]: r["id"] for r in rows}
