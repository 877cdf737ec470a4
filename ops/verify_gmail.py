"""Compare a Gmail account's mirror with Gmail: message ids, thread ids, exact bytes, labels.

What is compared, and what it costs in Gmail quota units (5 per messages.list page of 500 ids, 5 per
message fetched raw, 1 for labels.list):

- messages: every id Gmail lists (messages.list, spam and trash included) against the live rows of
  gmail_messages (deleted_at IS NULL): `missing` (on the server only), `extra` (in the database
  only), `thread_differences` (same id, another gmail_thread_id);
- bytes: every server message fetched raw (batched) and its sha256 compared with messages.sha256
  of the row's message_pk, and the stored body itself (message_bodies.raw, hashed by PostgreSQL)
  with that sha256: `mismatched` when either differs or the body is absent, `unverified` when Gmail
  refuses to serve a stored message (400 failedPrecondition), so it cannot be compared;
- labels: for every label, the ids Gmail lists under it against gmail_message_labels, over the
  messages present on both sides (a missing or extra message is counted once, above, not once per
  label): per label `missing` / `extra` assignments, summed as `label_differences`. Label ids the
  database holds but Gmail no longer has count as extra.

The server is read while it may change: a message that arrives or moves during the run shows up as a
difference, and a second run tells a race from a real divergence. No Temporal here: the CLI prints.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import asyncpg

from mail.windows import gmail_since
from providers.gmail import GmailSession


@dataclass
class LabelDiff:
    label_id: str
    name: str
    server: int = 0     # messages carrying the label on the server
    database: int = 0   # live messages carrying it in the database
    missing: int = 0    # assignments on the server, not in the database (messages present on both sides)
    extra: int = 0      # assignments in the database, not on the server (idem)


@dataclass
class GmailVerifyReport:
    server: int = 0                 # messages on the server (spam and trash included)
    database: int = 0               # live gmail_messages rows
    missing: int = 0
    extra: int = 0
    mismatched: int = 0             # other bytes than the server serves, or no stored body
    unverified: int = 0             # stored, but Gmail refused to serve it for the comparison
    thread_differences: int = 0
    labels: list[LabelDiff] = field(default_factory=list)

    @property
    def label_differences(self) -> int:
        return sum(label.missing + label.extra for label in self.labels)

    @property
    def identical(self) -> bool:
        return not (self.missing or self.extra or self.mismatched or self.unverified or self.thread_differences
                    or self.label_differences)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label_differences"] = self.label_differences
        data["identical"] = self.identical
        return data


async def _server_hashes(gmail: GmailSession, ids: Sequence[str]) -> tuple[dict[str, bytes], list[str]]:
    """sha256 of the raw bytes of each message (batched fetch); and the ids gone since they were listed.
    A message Gmail refuses to serve has no hash: it cannot be compared."""
    hashes: dict[str, bytes] = {}
    gone: list[str] = []
    async with contextlib.aclosing(gmail.iter_raw_messages(ids)) as batches:
        async for batch in batches:
            for message in batch.messages:
                hashes[message.id] = hashlib.sha256(message.raw).digest()
            gone.extend(batch.missing)
    return hashes, gone


async def verify_gmail_account(
    conn: asyncpg.Connection, gmail: GmailSession, account_id: str, since: date | None = None
) -> GmailVerifyReport:
    """With `since` (a sync's --window), only messages Gmail dates on or after that day must be
    mirrored; a stored message Gmail no longer lists is extra whatever its date."""
    report = GmailVerifyReport()

    everything = await gmail.list_all_messages()
    server_threads = everything if since is None else await gmail.list_all_messages(q=gmail_since(since))
    server_hashes, gone = await _server_hashes(gmail, list(server_threads))
    for message_id in gone:  # deleted between the listing and the fetch: no longer on the server
        server_threads.pop(message_id, None)
        everything.pop(message_id, None)

    rows = await conn.fetch(
        """SELECT g.gmail_id, g.gmail_thread_id, m.sha256,
                  (b.raw IS NOT NULL AND sha256(b.raw) = m.sha256) AS body_ok
           FROM gmail_messages g
           JOIN messages m ON m.id = g.message_pk
           LEFT JOIN message_bodies b ON b.account_id = m.account_id AND b.sha256 = m.sha256
           WHERE g.account_id = $1 AND g.deleted_at IS NULL""",
        account_id,
    )
    # outside the window but on the server: stored or not, nothing to compare
    mine = {r["gmail_id"]: r for r in rows if r["gmail_id"] in server_threads or r["gmail_id"] not in everything}
    report.server = len(server_threads)
    report.database = len(mine)
    for message_id, thread_id in server_threads.items():
        row = mine.get(message_id)
        if row is None:
            report.missing += 1
            continue
        served = server_hashes.get(message_id)
        if served is None:  # stored, but Gmail refused to serve it (failedPrecondition) just now
            report.unverified += 1
        elif served != bytes(row["sha256"]) or not row["body_ok"]:
            report.mismatched += 1
        if row["gmail_thread_id"] != thread_id:
            report.thread_differences += 1
    report.extra = sum(1 for message_id in mine if message_id not in server_threads)

    both = server_threads.keys() & mine.keys()
    stored: dict[str, set[str]] = {}
    for r in await conn.fetch(
        """SELECT l.label_id, l.gmail_id FROM gmail_message_labels l
           JOIN gmail_messages g ON g.account_id = l.account_id AND g.gmail_id = l.gmail_id
           WHERE l.account_id = $1 AND g.deleted_at IS NULL""",
        account_id,
    ):
        stored.setdefault(r["label_id"], set()).add(r["gmail_id"])
    names = {
        r["label_id"]: r["name"]
        for r in await conn.fetch("SELECT label_id, name FROM gmail_labels WHERE account_id = $1", account_id)
    }
    for label in await gmail.labels(with_counts=False):
        on_server = (await gmail.list_all_messages(label_ids=[label.id], q=gmail_since(since) if since else None)).keys()
        in_db = stored.pop(label.id, set())
        report.labels.append(LabelDiff(
            label_id=label.id, name=label.name, server=len(on_server), database=len(in_db),
            missing=len((on_server - in_db) & both), extra=len((in_db - on_server) & both),
        ))
    for label_id, in_db in sorted(stored.items()):  # labels deleted on the server, still assigned here
        report.labels.append(LabelDiff(
            label_id=label_id, name=names.get(label_id, label_id), database=len(in_db), extra=len(in_db & both),
        ))
    return report
