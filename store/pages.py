"""The bulk, idempotent write of one fetched page: bodies, messages, locations, threads, contacts.

One transaction per page: COPY into the session's staging table, then one INSERT … SELECT …
ON CONFLICT per target. Re-running the same page changes nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from mail.model import FetchedMessage
from mail.parse import ParsedMessage, header_key, parse_message
from mail.threads import group_page
from store.db import STAGE_COLUMNS


@dataclass
class PageWriteResult:
    messages: int          # locations written (new or refreshed)
    new_messages: int      # messages seen for the first time in this account
    bytes: int
    parse_errors: int


def account_lock_key(account_id: str) -> int:
    """Serializes thread/contact merges per account; bodies and locations are written in parallel."""
    return zlib.crc32(("mailsync-account:" + account_id).encode())


def _stage_row(m: FetchedMessage, p: ParsedMessage) -> tuple:
    return (
        p.sha256, p.header_sha256, p.size, m.uid, m.flags, m.internaldate, p.message_id, p.in_reply_to,
        p.references, p.subject, p.from_addr, p.from_name, p.to_addrs, p.cc_addrs, p.bcc_addrs,
        p.sent_at, p.snippet, p.parse_error,
    )


async def persist_page(
    conn: asyncpg.Connection,
    account_id: str,
    folder_id: int,
    uidvalidity: int,
    fetched: Sequence[FetchedMessage],
    parsed: Sequence[ParsedMessage] | None = None,
) -> PageWriteResult:
    if parsed is None:
        parsed = [parse_message(m.raw) for m in fetched]
    if not fetched:
        return PageWriteResult(0, 0, 0, 0)
    by_sha = {p.sha256: p for p in parsed}
    async with conn.transaction():
        await conn.copy_records_to_table(
            "page_stage", records=[_stage_row(m, p) for m, p in zip(fetched, parsed)],
            columns=STAGE_COLUMNS,
        )
        await _write_bodies(conn, account_id, fetched, parsed)
        new_rows = await conn.fetch(
            """INSERT INTO messages (account_id, sha256, header_sha256, size, message_id, in_reply_to, refs, subject,
                   from_addr, from_name, to_addrs, cc_addrs, bcc_addrs, sent_at, internaldate, snippet,
                   parse_error)
               SELECT DISTINCT ON (sha256) $1, sha256, header_sha256, size, message_id, in_reply_to, refs, subject,
                   from_addr, from_name, to_addrs, cc_addrs, bcc_addrs, sent_at, internaldate, snippet,
                   parse_error
               FROM page_stage ORDER BY sha256
               ON CONFLICT (account_id, sha256) DO NOTHING
               RETURNING id""",
            account_id,
        )
        # a message seen again (moved back, folder recreated) is no longer deleted
        await conn.execute(
            """UPDATE messages SET deleted_at = NULL
               WHERE account_id = $1 AND deleted_at IS NOT NULL AND sha256 IN (SELECT sha256 FROM page_stage)""",
            account_id,
        )
        await conn.execute(
            """INSERT INTO message_locations
                   (account_id, folder_id, uidvalidity, uid, message_pk, flags, internaldate)
               SELECT $1, $2, $3, s.uid, m.id, s.flags, s.internaldate
               FROM page_stage s JOIN messages m ON m.account_id = $1 AND m.sha256 = s.sha256
               ORDER BY s.uid
               ON CONFLICT (folder_id, uidvalidity, uid) DO UPDATE
                   SET flags = EXCLUDED.flags, updated_at = now()
                   WHERE message_locations.flags IS DISTINCT FROM EXCLUDED.flags""",
            account_id, folder_id, uidvalidity,
        )
    # Threads and contacts merge across the whole account, so they are serialized per account; a
    # second, short transaction keeps that lock from covering the bulk write above. Messages left
    # unthreaded by a crash between the two are picked up by the next write of the same page.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", account_lock_key(account_id))
        unthreaded = await conn.fetch(
            """SELECT id, sha256 FROM messages
               WHERE account_id = $1 AND sha256 = ANY($2::bytea[]) AND thread_id IS NULL""",
            account_id, list(by_sha),
        )
        to_thread = {r["id"]: by_sha[bytes(r["sha256"])] for r in unthreaded}
        if to_thread:
            await _assign_threads(conn, account_id, to_thread)
            await _upsert_contacts(conn, account_id, list(to_thread.values()))
    return PageWriteResult(
        messages=len(fetched),
        new_messages=len(new_rows),
        bytes=sum(len(m.raw) for m in fetched),
        parse_errors=sum(1 for p in parsed if p.parse_error),
    )


async def _write_bodies(
    conn: asyncpg.Connection, account_id: str, fetched: Sequence[FetchedMessage], parsed: Sequence[ParsedMessage]
) -> None:
    """Raw bytes go straight into message_bodies, once per sha256, never through the staging table.

    The bytes are the bulk of a page; copying them twice (staging, then INSERT … SELECT) was the
    slowest step of the write path. Bodies already stored are skipped before the COPY; when a
    concurrent writer (another folder holding the same message) wins the race, the COPY fails as a
    whole on the unique key and the idempotent INSERT … ON CONFLICT path takes over.
    """
    raws = {p.sha256: m.raw for m, p in zip(fetched, parsed)}
    present = {
        bytes(r["sha256"])
        for r in await conn.fetch(
            "SELECT sha256 FROM message_bodies WHERE account_id = $1 AND sha256 = ANY($2::bytea[])",
            account_id, list(raws),
        )
    }
    missing = sorted(sha for sha in raws if sha not in present)
    if not missing:
        return
    try:
        async with conn.transaction():  # a savepoint: a lost race undoes only this COPY
            await conn.copy_records_to_table(
                "message_bodies", records=[(account_id, sha, raws[sha]) for sha in missing],
                columns=("account_id", "sha256", "raw"),
            )
    except asyncpg.UniqueViolationError:
        await conn.execute(
            """INSERT INTO message_bodies (account_id, sha256, raw)
               SELECT $1, sha, raw FROM unnest($2::bytea[], $3::bytea[]) AS t(sha, raw) ORDER BY sha
               ON CONFLICT DO NOTHING""",
            account_id, missing, [raws[sha] for sha in missing],
        )


async def _assign_threads(
    conn: asyncpg.Connection, account_id: str, new_messages: dict[int, ParsedMessage]
) -> None:
    refs_by_message = {pk: p.thread_refs() for pk, p in new_messages.items()}
    all_refs = sorted({r for refs in refs_by_message.values() for r in refs})
    known = {
        r["ref"]: r["thread_id"]
        for r in await conn.fetch(
            "SELECT ref, thread_id FROM thread_refs WHERE account_id = $1 AND ref = ANY($2::text[])",
            account_id, all_refs,
        )
    }
    groups = group_page(refs_by_message, known)
    fresh = [g for g in groups if not g.existing_threads]
    new_ids = [
        r["id"]
        for r in await conn.fetch(
            "INSERT INTO threads (account_id) SELECT $1 FROM generate_series(1, $2) RETURNING id",
            account_id, len(fresh),
        )
    ]
    for g, tid in zip(fresh, new_ids):
        g.existing_threads = [tid]
    ref_rows: list[tuple[str, int]] = []
    msg_rows: list[tuple[int, int]] = []
    touched: set[int] = set()
    for g in groups:
        target, *merged = g.existing_threads
        if merged:  # this page links threads that were separate until now
            await conn.execute(
                "UPDATE thread_refs SET thread_id = $1 WHERE thread_id = ANY($2::bigint[])", target, merged
            )
            await conn.execute(
                "UPDATE messages SET thread_id = $1 WHERE thread_id = ANY($2::bigint[])", target, merged
            )
            await conn.execute("DELETE FROM threads WHERE id = ANY($1::bigint[])", merged)
        touched.add(target)
        ref_rows.extend((ref, target) for ref in g.refs)
        msg_rows.extend((pk, target) for pk in g.message_keys)
    await conn.execute(
        """INSERT INTO thread_refs (account_id, ref, thread_id)
           SELECT $1, ref, tid FROM unnest($2::text[], $3::bigint[]) AS t(ref, tid) ORDER BY ref
           ON CONFLICT (account_id, ref) DO UPDATE SET thread_id = EXCLUDED.thread_id""",
        account_id, [r for r, _ in ref_rows], [t for _, t in ref_rows],
    )
    await conn.execute(
        """UPDATE messages m SET thread_id = t.tid
           FROM unnest($1::bigint[], $2::bigint[]) AS t(pk, tid) WHERE m.id = t.pk""",
        [pk for pk, _ in msg_rows], [t for _, t in msg_rows],
    )
    await conn.execute(
        """UPDATE threads t SET message_count = s.n, first_date = s.first, last_date = s.last,
                  subject = COALESCE(s.subject, t.subject)
           FROM (SELECT thread_id, count(*) AS n, min(sent_at) AS first, max(sent_at) AS last,
                        (array_agg(subject ORDER BY sent_at NULLS LAST, id))[1] AS subject
                 FROM messages WHERE thread_id = ANY($1::bigint[]) GROUP BY thread_id) s
           WHERE t.id = s.thread_id""",
        sorted(touched),
    )


async def _upsert_contacts(conn: asyncpg.Connection, account_id: str, messages: list[ParsedMessage]) -> None:
    agg: dict[str, list] = {}
    for p in messages:
        for addr, name in dict(p.people).items():  # one count per message per address
            row = agg.setdefault(addr, [name, 0, p.sent_at, p.sent_at])
            row[0] = row[0] or name
            row[1] += 1
            if p.sent_at:
                row[2] = min(filter(None, (row[2], p.sent_at)), default=None)
                row[3] = max(filter(None, (row[3], p.sent_at)), default=None)
    if not agg:
        return
    addrs = sorted(agg)
    firsts: list[datetime | None] = [agg[a][2] for a in addrs]
    await conn.execute(
        """INSERT INTO contacts (account_id, address, display_name, message_count, first_seen, last_seen)
           SELECT $1, a, NULLIF(n, ''), c, f, l
           FROM unnest($2::text[], $3::text[], $4::int[], $5::timestamptz[], $6::timestamptz[])
                AS t(a, n, c, f, l)
           ON CONFLICT (account_id, address) DO UPDATE SET
               display_name = COALESCE(EXCLUDED.display_name, contacts.display_name),
               message_count = contacts.message_count + EXCLUDED.message_count,
               first_seen = LEAST(contacts.first_seen, EXCLUDED.first_seen),
               last_seen = GREATEST(contacts.last_seen, EXCLUDED.last_seen)""",
        account_id, addrs, [agg[a][0] for a in addrs], [agg[a][1] for a in addrs],
        firsts, [agg[a][3] for a in addrs],
    )


async def reuse_stored(
    conn: asyncpg.Connection, account_id: str, folder_id: int, uidvalidity: int, heads: Sequence[FetchedMessage]
) -> list[FetchedMessage]:
    """Place messages the account already holds at these UIDs, matched by header key and size.

    `heads` carry the header block (`BODY[HEADER]`) as `raw` and RFC822.SIZE as `size`. Returns the
    heads nothing matched: their bodies must be downloaded. Same header block and same size is
    taken as the same message (the header holds Message-ID, Date and the Received trail).
    """
    if not heads:
        return []
    keys = {m.uid: header_key(m.raw) for m in heads}
    rows = await conn.fetch(
        """SELECT id, header_sha256, size FROM messages
           WHERE account_id = $1 AND header_sha256 = ANY($2::bytea[])""",
        account_id, list(set(keys.values())),
    )
    known = {(bytes(r["header_sha256"]), r["size"]): r["id"] for r in rows}
    placed: list[tuple[int, int, list[str], datetime | None]] = []
    missing: list[FetchedMessage] = []
    for m in heads:
        pk = known.get((keys[m.uid], m.size))
        if pk is None:
            missing.append(m)
        else:
            placed.append((m.uid, pk, m.flags, m.internaldate))
    if placed:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO message_locations
                       (account_id, folder_id, uidvalidity, uid, message_pk, flags, internaldate)
                   SELECT $1, $2, $3, uid, pk, string_to_array(f, ' '), d
                   FROM unnest($4::bigint[], $5::bigint[], $6::text[], $7::timestamptz[]) AS t(uid, pk, f, d)
                   ORDER BY uid
                   ON CONFLICT (folder_id, uidvalidity, uid) DO UPDATE
                       SET message_pk = EXCLUDED.message_pk, flags = EXCLUDED.flags, updated_at = now()""",
                account_id, folder_id, uidvalidity, [p[0] for p in placed], [p[1] for p in placed],
                [" ".join(p[2]) for p in placed], [p[3] for p in placed],
            )
            await conn.execute(
                "UPDATE messages SET deleted_at = NULL WHERE id = ANY($1::bigint[]) AND deleted_at IS NOT NULL",
                [p[1] for p in placed],
            )
    return missing
