"""Compare the mirror with the server: UID + sha256 (+ flags) of every message in every folder (or window)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date

import asyncpg

from mail.windows import imap_date
from providers.imap.client import ImapSession

_VERIFY_CHUNK = 200


@dataclass
class FolderDiff:
    folder: str
    server: int = 0
    database: int = 0
    missing: int = 0        # on the server, not in the database
    extra: int = 0          # in the database, not on the server (under the current UIDVALIDITY or a stale one)
    mismatched: int = 0     # same UID, different bytes
    flag_differences: int = 0


@dataclass
class VerifyReport:
    folders: list[FolderDiff] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(not (f.missing or f.extra or f.mismatched or f.flag_differences) for f in self.folders)

    def totals(self) -> FolderDiff:
        t = FolderDiff(folder="(all)")
        for f in self.folders:
            for name in ("server", "database", "missing", "extra", "mismatched", "flag_differences"):
                setattr(t, name, getattr(t, name) + getattr(f, name))
        return t


async def _server_folder(
    session: ImapSession, name: str, since: date | None
) -> tuple[int, set[int], dict[int, tuple[bytes, list[str]]]]:
    """UIDVALIDITY, every UID, and sha256 + flags of the messages in the window (all without one)."""
    status = await session.select(name)
    uids = await session.uid_search_all() if status.messages else []
    wanted = uids if since is None or not uids else await session.uid_search(f"SINCE {imap_date(since)}")
    found: dict[int, tuple[bytes, list[str]]] = {}
    for i in range(0, len(wanted), _VERIFY_CHUNK):
        for m in await session.fetch(wanted[i : i + _VERIFY_CHUNK]):
            found[m.uid] = (hashlib.sha256(m.raw).digest(), m.flags)
    return status.uidvalidity, set(uids), found


async def verify_account(
    conn: asyncpg.Connection, session: ImapSession, account_id: str, since: date | None = None
) -> VerifyReport:
    """Every folder compared; with `since` (a sync's --window), only messages whose INTERNALDATE is on
    or after that day must be mirrored, but a stored message the server no longer has is extra whatever
    its date."""
    report = VerifyReport()
    server_folders = sorted((f for f in await session.list_folders() if f.selectable),
                            key=lambda f: (f.name.upper() != "INBOX", f.name))
    db_folders = {
        r["name"]: r["id"]
        for r in await conn.fetch("SELECT id, name FROM folders WHERE account_id = $1", account_id)
    }
    for folder in server_folders:
        uidvalidity, on_server, server = await _server_folder(session, folder.name, since)
        diff = FolderDiff(folder=folder.name, server=len(server))
        folder_id = db_folders.pop(folder.name, None)
        rows = [] if folder_id is None else await conn.fetch(
            """SELECT l.uid, l.uidvalidity, m.sha256, l.flags FROM message_locations l
               JOIN messages m ON m.id = l.message_pk WHERE l.folder_id = $1""",
            folder_id,
        )
        current = {
            r["uid"]: (bytes(r["sha256"]), sorted(r["flags"])) for r in rows
            # outside the window but on the server: stored or not, nothing to compare
            if r["uidvalidity"] == uidvalidity and (r["uid"] in server or r["uid"] not in on_server)
        }
        diff.database = len(current)
        diff.extra = sum(1 for r in rows if r["uidvalidity"] != uidvalidity)
        for uid, (sha, flags) in server.items():
            mine = current.pop(uid, None)
            if mine is None:
                diff.missing += 1
            elif mine[0] != sha:
                diff.mismatched += 1
            elif mine[1] != sorted(flags):
                diff.flag_differences += 1
        diff.extra += len(current)
        report.folders.append(diff)
    for name, folder_id in db_folders.items():  # folders gone from the server
        n = await conn.fetchval("SELECT count(*) FROM message_locations WHERE folder_id = $1", folder_id)
        if n:
            report.folders.append(FolderDiff(folder=name, database=n, extra=n))
    return report
