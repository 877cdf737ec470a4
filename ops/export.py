"""Write a mirrored folder to a Maildir, byte-for-byte as the server served each message."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

_MAILDIR_FLAGS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}


class FolderNotFound(LookupError):
    pass


def maildir_name(uidvalidity: int, uid: int, flags: list[str]) -> str:
    letters = "".join(sorted(_MAILDIR_FLAGS[f] for f in flags if f in _MAILDIR_FLAGS))
    return f"{uidvalidity}.{uid}.mailsync:2,{letters}"


async def export_folder(conn: asyncpg.Connection, account_id: str, folder: str, target: Path) -> tuple[int, int]:
    """Returns (messages, bytes). Files are written to tmp/ then renamed, so a reader never sees half a file."""
    folder_row = await conn.fetchrow(
        "SELECT id, uidvalidity FROM folders WHERE account_id = $1 AND name = $2", account_id, folder
    )
    if folder_row is None:
        known = [r["name"] for r in await conn.fetch(
            "SELECT name FROM folders WHERE account_id = $1 ORDER BY name", account_id)]
        raise FolderNotFound(f"no folder {folder!r} in this account; known: {', '.join(known) or 'none'}")
    for sub in ("tmp", "new", "cur"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    count = total = 0
    async with conn.transaction():
        async for row in conn.cursor(
            """SELECT l.uid, l.uidvalidity, l.flags, l.internaldate, b.raw
               FROM message_locations l
               JOIN messages m ON m.id = l.message_pk
               JOIN message_bodies b ON b.account_id = m.account_id AND b.sha256 = m.sha256
               WHERE l.folder_id = $1 AND l.uidvalidity = $2 ORDER BY l.uid""",
            folder_row["id"], folder_row["uidvalidity"], prefetch=50,
        ):
            name = maildir_name(row["uidvalidity"], row["uid"], list(row["flags"]))
            tmp = target / "tmp" / name
            tmp.write_bytes(row["raw"])
            if row["internaldate"] is not None:
                ts = row["internaldate"].timestamp()
                os.utime(tmp, (ts, ts))
            os.replace(tmp, target / "cur" / name)
            count += 1
            total += len(row["raw"])
    return count, total
