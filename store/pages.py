"""The bulk, idempotent write of one fetched page: bodies, messages, locations, threads, contacts.

One transaction per page: COPY into the session's staging table, then one INSERT … SELECT …
ON CONFLICT per target. Re-running the same page changes nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from mail.model import FetchedMessage
from mail.parse import ParsedMessage, header_key, parse_message
from mail.threads import group_page
from store.db import STAGE_COLUMNS
from store.liveness import keep_placed


@dataclass
class PageWriteResult:
    messages: int          # locations written (new or refreshed)
    new_messages: int      # messages seen for the first time in this account
    bytes: int
    parse_errors: int
    written: dict[int, ParsedMessage] = field(default_factory=dict)  # message id → parsed, to thread


def account_lock_key(account_id: str) -> int:
    """Serializes thread/contact merges per account; bodies and locations are written in parallel."""
    return zlib.crc32(("mailsync-account:" + account_id).encode())


def _stage_row(m: FetchedMessage, p: ParsedMessage) -> tuple:
    return (
        p.sha256, p.header_sha256, p.size, m.uid, m.flags, m.internaldate, p.message_id, p.in_reply_to,
        p.references, p.subject, p.from_addr, p.from_name, p.to_addrs, p.cc_addrs, p.bcc_addrs,
        p.sent_at, p.snippet, p.parse_error,
    )


# Messages and locations in one round trip. Only rows this statement inserts come back: a message
# the account already holds (another folder, a retried page, a concurrent writer that committed
# first) is placed by `_place_existing` in a later statement, whose snapshot sees that commit.
# The staged page's messages the account does not hold yet ($1: account id); returns (id, sha256)
# of the rows it inserted. Shared by IMAP pages and Gmail batches (store/gmail.py).
INSERT_STAGED_MESSAGES = """
    INSERT INTO messages (account_id, sha256, header_sha256, size, message_id, in_reply_to, refs, subject,
        from_addr, from_name, to_addrs, cc_addrs, bcc_addrs, sent_at, internaldate, snippet, parse_error)
    SELECT DISTINCT ON (sha256) $1, sha256, header_sha256, size, message_id, in_reply_to, refs, subject,
        from_addr, from_name, to_addrs, cc_addrs, bcc_addrs, sent_at, internaldate, snippet, parse_error
    FROM page_stage ORDER BY sha256
    ON CONFLICT (account_id, sha256) DO NOTHING
    RETURNING id, sha256"""

_INSERT_MESSAGES_AND_LOCATIONS = f"""
WITH new AS ({INSERT_STAGED_MESSAGES}
), placed AS (
    INSERT INTO message_locations (account_id, folder_id, uidvalidity, uid, message_pk, flags, internaldate)
    SELECT $1, $2, $3, s.uid, n.id, s.flags, s.internaldate
    FROM page_stage s JOIN new n ON n.sha256 = s.sha256
    ORDER BY s.uid
    ON CONFLICT (folder_id, uidvalidity, uid) DO UPDATE
        SET flags = EXCLUDED.flags, updated_at = now()
        WHERE message_locations.flags IS DISTINCT FROM EXCLUDED.flags
)
SELECT id, sha256 FROM new
"""

# Lookups by key go through a LATERAL … LIMIT 1 per key: a nested loop of unique-index probes
# whatever the statistics say. With `account_id = $1 AND key = ANY($2)` the planner, before the
# first ANALYZE of a growing table, scans every row of the account for each page (quadratic).
_EXISTING_MESSAGES = """
SELECT m.id, m.sha256
FROM unnest($2::bytea[]) AS u(sha)
CROSS JOIN LATERAL (SELECT id, sha256 FROM messages
                    WHERE account_id = $1 AND sha256 = u.sha LIMIT 1) m
"""
_MISSING_BODIES = """
SELECT u.sha FROM unnest($2::bytea[]) AS u(sha)
LEFT JOIN LATERAL (SELECT true AS hit FROM message_bodies
                   WHERE account_id = $1 AND sha256 = u.sha LIMIT 1) b ON true
WHERE b.hit IS NULL
"""


async def persist_page(
    conn: asyncpg.Connection,
    account_id: str,
    folder_id: int,
    uidvalidity: int,
    fetched: Sequence[FetchedMessage],
    parsed: Sequence[ParsedMessage] | None = None,
) -> PageWriteResult:
    """Write the page and thread it: `write_page` then `thread_messages`."""
    result = await write_page(conn, account_id, folder_id, uidvalidity, fetched, parsed)
    await thread_messages(conn, account_id, result.written)
    return result


async def write_page(
    conn: asyncpg.Connection,
    account_id: str,
    folder_id: int,
    uidvalidity: int,
    fetched: Sequence[FetchedMessage],
    parsed: Sequence[ParsedMessage] | None = None,
) -> PageWriteResult:
    """Bodies, messages and locations of a page in one transaction; writers of an account run in
    parallel. The result's `written` ({message id: parsed}) still has to go through `thread_messages`."""
    if parsed is None:
        parsed = [parse_message(m.raw) for m in fetched]
    if not fetched:
        return PageWriteResult(0, 0, 0, 0)
    try:
        ids, new_count = await _write_page(conn, account_id, folder_id, uidvalidity, fetched, parsed, careful=False)
    except asyncpg.UniqueViolationError:
        # A body without its message row (not written by this code, which stores both in one
        # transaction): the page is written again, checking every body first.
        ids, new_count = await _write_page(conn, account_id, folder_id, uidvalidity, fetched, parsed, careful=True)
    by_sha = {p.sha256: p for p in parsed}
    return PageWriteResult(
        messages=len(fetched),
        new_messages=new_count,
        bytes=sum(len(m.raw) for m in fetched),
        parse_errors=sum(1 for p in parsed if p.parse_error),
        written={pk: by_sha[sha] for sha, pk in ids.items()},
    )


async def thread_messages(conn: asyncpg.Connection, account_id: str, written: dict[int, ParsedMessage]) -> None:
    """Thread the written messages not threaded yet, and count them in their contacts.

    Threads and contacts merge across the whole account, so this is serialized per account, in a
    transaction of its own that the bulk writes run beside. A message written but left unthreaded
    (a crash in between) is threaded by the next write of the same page. Called with many pages'
    messages at once, the lock is taken once for all of them.
    """
    if not written:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", account_lock_key(account_id))
        unthreaded = await conn.fetch(
            "SELECT id FROM messages WHERE id = ANY($1::bigint[]) AND thread_id IS NULL", sorted(written),
        )
        to_thread = {r["id"]: written[r["id"]] for r in unthreaded}
        if to_thread:
            await _assign_threads(conn, account_id, to_thread)
            await _upsert_contacts(conn, account_id, list(to_thread.values()))


async def _write_page(
    conn: asyncpg.Connection,
    account_id: str,
    folder_id: int,
    uidvalidity: int,
    fetched: Sequence[FetchedMessage],
    parsed: Sequence[ParsedMessage],
    *,
    careful: bool,
) -> tuple[dict[bytes, int], int]:
    """The page's messages, locations and bodies in one transaction: {sha256: message id}, count of new."""
    raws = {p.sha256: m.raw for m, p in zip(fetched, parsed)}
    async with conn.transaction():
        await conn.copy_records_to_table(
            "page_stage", records=[_stage_row(m, p) for m, p in zip(fetched, parsed)], columns=STAGE_COLUMNS,
        )
        ids = {bytes(r["sha256"]): r["id"] for r in await conn.fetch(
            _INSERT_MESSAGES_AND_LOCATIONS, account_id, folder_id, uidvalidity
        )}
        new = sorted(ids)
        held = [sha for sha in raws if sha not in ids]
        if held:
            ids.update(await _place_existing(conn, account_id, folder_id, uidvalidity, held))
        # A message row is only ever written together with its body, in one transaction, so the
        # messages inserted just now are exactly the bodies to store.
        bodies = sorted(set(new) | set(held)) if careful else new
        if careful or held:
            bodies = [bytes(r["sha"]) for r in await conn.fetch(_MISSING_BODIES, account_id, bodies)]
        if bodies:
            await conn.copy_records_to_table(
                "message_bodies", records=[(account_id, sha, raws[sha]) for sha in sorted(bodies)],
                columns=("account_id", "sha256", "raw"),
            )
    return ids, len(new)


async def _place_existing(
    conn: asyncpg.Connection, account_id: str, folder_id: int, uidvalidity: int, shas: list[bytes]
) -> dict[bytes, int]:
    """Locations of messages the account already held; a message seen again is no longer deleted."""
    rows = await conn.fetch(_EXISTING_MESSAGES, account_id, sorted(shas))
    found = {bytes(r["sha256"]): r["id"] for r in rows}
    if len(found) != len(set(shas)):  # cannot happen: the INSERT above met these rows
        raise RuntimeError(f"{len(set(shas)) - len(found)} messages neither inserted nor found")
    await keep_placed(conn, list(found.values()))
    await conn.execute(
        """INSERT INTO message_locations (account_id, folder_id, uidvalidity, uid, message_pk, flags, internaldate)
           SELECT $1, $2, $3, s.uid, u.pk, s.flags, s.internaldate
           FROM page_stage s JOIN unnest($4::bytea[], $5::bigint[]) AS u(sha, pk) ON u.sha = s.sha256
           ORDER BY s.uid
           ON CONFLICT (folder_id, uidvalidity, uid) DO UPDATE
               SET flags = EXCLUDED.flags, updated_at = now()
               WHERE message_locations.flags IS DISTINCT FROM EXCLUDED.flags""",
        account_id, folder_id, uidvalidity, list(found), list(found.values()),
    )
    return found


async def _assign_threads(
    conn: asyncpg.Connection, account_id: str, new_messages: dict[int, ParsedMessage]
) -> None:
    refs_by_message = {pk: p.thread_refs() for pk, p in new_messages.items()}
    all_refs = sorted({r for refs in refs_by_message.values() for r in refs})
    known = {
        r["ref"]: r["thread_id"]
        for r in await conn.fetch(
            """SELECT t.ref, t.thread_id FROM unnest($2::text[]) AS u(ref)
               CROSS JOIN LATERAL (SELECT ref, thread_id FROM thread_refs
                                   WHERE account_id = $1 AND ref = u.ref LIMIT 1) t""",
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
           ON CONFLICT (account_id, ref) DO UPDATE SET thread_id = EXCLUDED.thread_id
               WHERE thread_refs.thread_id IS DISTINCT FROM EXCLUDED.thread_id""",
        account_id, [r for r, _ in ref_rows], [t for _, t in ref_rows],
    )
    await conn.execute(
        """UPDATE messages m SET thread_id = t.tid
           FROM unnest($1::bigint[], $2::bigint[]) AS t(pk, tid) WHERE m.id = t.pk""",
        [pk for pk, _ in msg_rows], [t for _, t in msg_rows],
    )
    await refresh_thread_stats(conn, sorted(touched))


async def refresh_thread_stats(conn: asyncpg.Connection, thread_ids: Sequence[int]) -> None:
    """Message count, first/last date and subject of these threads, from their messages."""
    await conn.execute(
        # per thread through its index, whatever the statistics say (a plan that scans every message
        # and every thread of the account per page makes a long sync quadratic)
        """UPDATE threads t SET message_count = s.n, first_date = s.first, last_date = s.last,
                  subject = COALESCE(s.subject, t.subject)
           FROM unnest($1::bigint[]) AS u(tid)
           CROSS JOIN LATERAL (SELECT count(*) AS n, min(sent_at) AS first, max(sent_at) AS last,
                                      (array_agg(subject ORDER BY sent_at NULLS LAST, id))[1] AS subject
                               FROM messages WHERE thread_id = u.tid) s
           WHERE t.id = u.tid AND t.id = ANY($1::bigint[]) AND s.n > 0""",
        list(thread_ids),
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
    taken as the same message (the header holds Message-ID, Date and the Received trail). A placed
    message not threaded yet (its page's attempt died between writing and threading) is threaded here.
    """
    if not heads:
        return []
    keys = {m.uid: header_key(m.raw) for m in heads}
    rows = await conn.fetch(
        """SELECT m.id, m.header_sha256, m.size FROM unnest($2::bytea[]) AS u(key)
           CROSS JOIN LATERAL (SELECT id, header_sha256, size FROM messages
                               WHERE account_id = $1 AND header_sha256 = u.key) m""",
        account_id, sorted(set(keys.values())),
    )
    known = {(bytes(r["header_sha256"]), r["size"]): r["id"] for r in rows}
    placed: list[tuple[int, int, list[str], datetime | None]] = []
    missing: list[FetchedMessage] = []
    head_of: dict[int, bytes] = {}
    for m in heads:
        pk = known.get((keys[m.uid], m.size))
        if pk is None:
            missing.append(m)
        else:
            placed.append((m.uid, pk, m.flags, m.internaldate))
            head_of[pk] = m.raw
    if placed:
        async with conn.transaction():
            # lock, then insert, as every placer does (store/liveness.py): the other order deadlocks
            await keep_placed(conn, [p[1] for p in placed])
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
        # written by an attempt that died before threading them: their header block is enough
        unthreaded = await conn.fetch(
            "SELECT id FROM messages WHERE id = ANY($1::bigint[]) AND thread_id IS NULL", sorted(head_of))
        if unthreaded:
            await thread_messages(conn, account_id, {r["id"]: parse_message(head_of[r["id"]]) for r in unthreaded})
    return missing
