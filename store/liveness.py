"""Whether a stored message is still on the server: `deleted_at`, set when its last location goes.

Placing a message (a new location) and removing another of its locations can run at once, in two
transactions (a folder rebuilt beside an expunge, a backfill beside a pass). Under READ COMMITTED
the remover's "no location left" check cannot see the placer's uncommitted location, so both sides
lock the message rows first and then decide in a new statement, whose snapshot includes whatever
the other side committed while it waited. Both take FOR NO KEY UPDATE, in id order: a shared lock
for placers would deadlock two placers that both upgrade it to clear `deleted_at`; the foreign-key
checks' KEY SHARE locks do not conflict with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg


async def lock_messages(conn: asyncpg.Connection, message_pks: Sequence[int]) -> list[int]:
    """Lock messages being placed or losing a location; decide about them in the next statement."""
    pks = sorted(set(message_pks))
    await conn.execute("SELECT 1 FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE", pks)
    return pks


async def keep_placed(conn: asyncpg.Connection, message_pks: Sequence[int]) -> None:
    """Messages this transaction places somewhere: not deleted, even if a remover just marked them."""
    if not message_pks:
        return
    pks = await lock_messages(conn, message_pks)
    await conn.execute(
        "UPDATE messages SET deleted_at = NULL WHERE id = ANY($1::bigint[]) AND deleted_at IS NOT NULL", pks
    )


async def mark_orphans(conn: asyncpg.Connection, message_pks: Sequence[int]) -> None:
    """Messages whose location(s) this transaction removed: deleted if no location is left anywhere."""
    if not message_pks:
        return
    pks = await lock_messages(conn, message_pks)
    await conn.execute(
        """UPDATE messages m SET deleted_at = now()
           WHERE m.id = ANY($1::bigint[]) AND m.deleted_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM message_locations l WHERE l.message_pk = m.id)""",
        pks,
    )
