"""Incremental changes to a folder's mirror: flag updates, expunges, deleted folders, sync history.

Every function is idempotent: applying the same change twice leaves the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from store.liveness import mark_orphans


async def stored_flags(
    conn: asyncpg.Connection, folder_id: int, uidvalidity: int, lo: int = 1, hi: int | None = None
) -> dict[int, list[str]]:
    """UID → flags of the stored locations of a folder under one UIDVALIDITY, in lo..hi."""
    rows = await conn.fetch(
        """SELECT uid, flags FROM message_locations
           WHERE folder_id = $1 AND uidvalidity = $2 AND uid >= $3 AND ($4::bigint IS NULL OR uid <= $4)""",
        folder_id, uidvalidity, lo, hi,
    )
    return {r["uid"]: list(r["flags"]) for r in rows}


async def stored_flags_for(
    conn: asyncpg.Connection, folder_id: int, uidvalidity: int, uids: Sequence[int]
) -> dict[int, list[str]]:
    """UID → flags of just these stored locations (those a CONDSTORE answer named)."""
    if not uids:
        return {}
    rows = await conn.fetch(
        """SELECT uid, flags FROM message_locations
           WHERE folder_id = $1 AND uidvalidity = $2 AND uid = ANY($3::bigint[])""",
        folder_id, uidvalidity, list(uids),
    )
    return {r["uid"]: list(r["flags"]) for r in rows}


async def stored_count(conn: asyncpg.Connection, folder_id: int, uidvalidity: int) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM message_locations WHERE folder_id = $1 AND uidvalidity = $2", folder_id, uidvalidity
    )


async def stored_totals(conn: asyncpg.Connection, folder_id: int, uidvalidity: int) -> tuple[int, int]:
    """(bytes, messages flagged unparseable) the folder holds in the mirror."""
    row = await conn.fetchrow(
        """SELECT coalesce(sum(m.size), 0) AS bytes, count(*) FILTER (WHERE m.parse_error IS NOT NULL) AS flagged
           FROM message_locations l JOIN messages m ON m.id = l.message_pk
           WHERE l.folder_id = $1 AND l.uidvalidity = $2""",
        folder_id, uidvalidity,
    )
    return int(row["bytes"]), int(row["flagged"])


async def update_flags(
    conn: asyncpg.Connection, folder_id: int, uidvalidity: int, changes: Sequence[tuple[int, list[str]]]
) -> int:
    """Set the flags of stored locations; returns how many actually changed."""
    if not changes:
        return 0
    status = await conn.execute(
        """UPDATE message_locations l SET flags = t.flags, updated_at = now()
           FROM (SELECT uid, string_to_array(f, ' ') AS flags
                 FROM unnest($3::bigint[], $4::text[]) AS u(uid, f)) t
           WHERE l.folder_id = $1 AND l.uidvalidity = $2 AND l.uid = t.uid
             AND l.flags IS DISTINCT FROM coalesce(t.flags, '{}')""",
        folder_id, uidvalidity, [u for u, _ in changes], [" ".join(sorted(f)) for _, f in changes],
    )
    return int(status.split()[-1])


@dataclass
class Removed:
    locations: int = 0
    bytes: int = 0      # sizes of the messages those locations held (a folder's mirror shrinks by this)
    flagged: int = 0    # of them, flagged unparseable


async def remove_locations(
    conn: asyncpg.Connection, folder_id: int, uidvalidity: int, uids: Sequence[int]
) -> Removed:
    """Expunged UIDs: their locations go; a message left with no location is marked deleted."""
    if not uids:
        return Removed()
    async with conn.transaction():
        gone = await conn.fetch(
            """WITH gone AS (
                   DELETE FROM message_locations WHERE folder_id = $1 AND uidvalidity = $2 AND uid = ANY($3::bigint[])
                   RETURNING message_pk)
               SELECT g.message_pk, m.size, m.parse_error IS NOT NULL AS flagged
               FROM gone g JOIN messages m ON m.id = g.message_pk""",
            folder_id, uidvalidity, list(uids),
        )
        await mark_orphans(conn, [r["message_pk"] for r in gone])
    return Removed(len(gone), sum(r["size"] for r in gone), sum(1 for r in gone if r["flagged"]))


async def remove_stale_locations(conn: asyncpg.Connection, folder_id: int, uidvalidity: int) -> int:
    """Locations under another UIDVALIDITY than the folder's current one (the folder was rebuilt)."""
    async with conn.transaction():
        gone = await conn.fetch(
            "DELETE FROM message_locations WHERE folder_id = $1 AND uidvalidity <> $2 RETURNING message_pk",
            folder_id, uidvalidity,
        )
        await mark_orphans(conn, [r["message_pk"] for r in gone])
    return len(gone)


async def forget_folder(conn: asyncpg.Connection, folder_id: int) -> int:
    """The folder was deleted (or renamed away) on the server: drop its locations, keep the row."""
    async with conn.transaction():
        gone = await conn.fetch(
            "DELETE FROM message_locations WHERE folder_id = $1 RETURNING message_pk", folder_id
        )
        await mark_orphans(conn, [r["message_pk"] for r in gone])
        await conn.execute(
            "UPDATE folders SET deleted_at = now(), updated_at = now() WHERE id = $1 AND deleted_at IS NULL",
            folder_id,
        )
    return len(gone)


@dataclass
class HistoryRow:
    folder: str | None
    kind: str
    started_at: datetime
    finished_at: datetime
    new_messages: int = 0
    updated: int = 0
    expunged: int = 0
    error: str | None = None


async def append_history(conn: asyncpg.Connection, account_id: str, rows: Sequence[HistoryRow]) -> None:
    await conn.executemany(
        """INSERT INTO sync_history (account_id, folder, kind, started_at, finished_at, new_messages,
               updated, expunged, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        [(account_id, r.folder, r.kind, r.started_at, r.finished_at, r.new_messages, r.updated, r.expunged,
          r.error) for r in rows],
    )


async def list_history(conn: asyncpg.Connection, account_id: str, limit: int = 50) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT folder, kind, started_at, finished_at, new_messages, updated, expunged, error
           FROM sync_history WHERE account_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2""",
        account_id, limit,
    )
