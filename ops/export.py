"""Write a mirrored folder (IMAP) or label (Gmail) to a Maildir, byte-for-byte as the server served each message."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import asyncpg

_MAILDIR_FLAGS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}


class FolderNotFound(LookupError):
    pass


def maildir_name(uidvalidity: int, uid: int, flags: list[str]) -> str:
    letters = "".join(sorted(_MAILDIR_FLAGS[f] for f in flags if f in _MAILDIR_FLAGS))
    return f"{uidvalidity}.{uid}.mailsync:2,{letters}"


async def export_folder(conn: asyncpg.Connection, account_id: str, folder: str, target: Path) -> tuple[int, int]:
    """Returns (messages, bytes). A Gmail account's "folders" are its labels (by name or id)."""
    provider = await conn.fetchval("SELECT provider FROM accounts WHERE id = $1", account_id)
    if provider == "gmail":
        return await _write_maildir(_label_messages(conn, account_id, folder), target)
    return await _write_maildir(_folder_messages(conn, account_id, folder), target)


async def _write_maildir(messages: AsyncIterator[tuple[str, datetime | None, bytes]], target: Path) -> tuple[int, int]:
    """Files are written to tmp/ then renamed, so a reader never sees half a file."""
    count = total = 0
    async for name, internaldate, raw in messages:
        if count == 0:
            _make_maildir(target)
        tmp = target / "tmp" / name
        tmp.write_bytes(raw)
        if internaldate is not None:
            ts = internaldate.timestamp()
            os.utime(tmp, (ts, ts))
        os.replace(tmp, target / "cur" / name)
        count += 1
        total += len(raw)
    if count == 0:  # an empty folder still makes a (valid, empty) Maildir
        _make_maildir(target)
    return count, total


def _make_maildir(target: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (target / sub).mkdir(parents=True, exist_ok=True)


async def _folder_messages(
    conn: asyncpg.Connection, account_id: str, folder: str
) -> AsyncIterator[tuple[str, datetime | None, bytes]]:
    # INBOX is case-insensitive in IMAP (RFC 3501 5.1); every other name is as the server spells it
    folder_row = await conn.fetchrow(
        """SELECT id, uidvalidity FROM folders WHERE account_id = $1
             AND (name = $2 OR (upper($2) = 'INBOX' AND upper(name) = 'INBOX'))
           ORDER BY name = $2 DESC LIMIT 1""", account_id, folder,
    )
    if folder_row is None:
        known = [r["name"] for r in await conn.fetch(
            "SELECT name FROM folders WHERE account_id = $1 ORDER BY name", account_id)]
        raise FolderNotFound(f"no folder {folder!r} in this account; known: {', '.join(known) or 'none'}")
    async with conn.transaction():
        async for row in conn.cursor(
            """SELECT l.uid, l.uidvalidity, l.flags, l.internaldate, b.raw
               FROM message_locations l
               JOIN messages m ON m.id = l.message_pk
               JOIN message_bodies b ON b.account_id = m.account_id AND b.sha256 = m.sha256
               WHERE l.folder_id = $1 AND l.uidvalidity = $2 ORDER BY l.uid""",
            folder_row["id"], folder_row["uidvalidity"], prefetch=50,
        ):
            yield maildir_name(row["uidvalidity"], row["uid"], list(row["flags"])), row["internaldate"], row["raw"]


def gmail_maildir_name(gmail_id: str, labels: list[str]) -> str:
    """Flags from labels: read (no UNREAD) is S, STARRED is F, DRAFT is D."""
    letters = {"D"} if "DRAFT" in labels else set()
    letters |= {"F"} if "STARRED" in labels else set()
    letters |= set() if "UNREAD" in labels else {"S"}
    return f"{gmail_id}.mailsync:2,{''.join(sorted(letters))}"


async def _label_messages(
    conn: asyncpg.Connection, account_id: str, label: str
) -> AsyncIterator[tuple[str, datetime | None, bytes]]:
    # by name or id in the label list; else an id the messages carry (system ids are upper case)
    label_id = await conn.fetchval(
        """SELECT label_id FROM gmail_labels WHERE account_id = $1
             AND (label_id = $2 OR name = $2 OR (type = 'system' AND upper(name) = upper($2)))
           ORDER BY label_id = $2 DESC, name = $2 DESC LIMIT 1""", account_id, label,
    ) or await conn.fetchval(
        """SELECT label_id FROM gmail_message_labels WHERE account_id = $1 AND label_id IN ($2, upper($2))
           ORDER BY label_id = $2 DESC LIMIT 1""", account_id, label,
    )
    if label_id is None:
        known = [r["name"] for r in await conn.fetch(
            """SELECT name FROM gmail_labels WHERE account_id = $1
               UNION SELECT DISTINCT label_id FROM gmail_message_labels WHERE account_id = $1 ORDER BY 1""",
            account_id)]
        raise FolderNotFound(f"no label {label!r} in this Gmail account; known: {', '.join(known) or 'none'}")
    async with conn.transaction():
        async for row in conn.cursor(
            """SELECT g.gmail_id, g.internaldate, b.raw,
                      ARRAY(SELECT a.label_id FROM gmail_message_labels a
                            WHERE a.account_id = g.account_id AND a.gmail_id = g.gmail_id) AS labels
               FROM gmail_message_labels l
               JOIN gmail_messages g ON g.account_id = l.account_id AND g.gmail_id = l.gmail_id
               JOIN messages m ON m.id = g.message_pk
               JOIN message_bodies b ON b.account_id = m.account_id AND b.sha256 = m.sha256
               WHERE l.account_id = $1 AND l.label_id = $2 AND g.deleted_at IS NULL
               ORDER BY g.gmail_id""",
            account_id, label_id, prefetch=50,
        ):
            yield gmail_maildir_name(row["gmail_id"], list(row["labels"])), row["internaldate"], row["raw"]
