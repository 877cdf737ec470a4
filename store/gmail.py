"""The Gmail side of the store: labels, Gmail message ids (their locations), message↔label rows, deletions.

Messages, bodies and contacts are the same tables and the same bulk, idempotent write as IMAP pages
(store.pages); a Gmail message's thread is Gmail's threadId (threads.provider_thread_id), not
Message-ID threading. Every function is idempotent: re-running a batch or a change set changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from mail.parse import ParsedMessage, parse_message
from providers.gmail.models import GmailLabel, GmailMessage
from store.db import STAGE_COLUMNS
from store.liveness import keep_placed, lock_messages
from store.pages import (
    _EXISTING_MESSAGES, _MISSING_BODIES, INSERT_STAGED_MESSAGES, PageWriteResult, _upsert_contacts, account_lock_key,
    refresh_thread_stats,
)

__all__ = [
    "LabelSync", "Refusals", "clear_listing", "clear_refused", "current_labels", "delete_unlisted", "mark_deleted",
    "mirror_size", "persist_gmail_messages", "record_refused", "refusals", "refused_ids", "replace_label_members",
    "set_message_labels", "stage_listing", "stored_gmail_ids", "thread_unthreaded", "upsert_labels",
]


@dataclass
class LabelSync:
    labels: int
    removed: int
    added: list[str]  # names of labels the store did not have


async def mirror_size(conn: asyncpg.Connection, account_id: str) -> tuple[int, int]:
    """Live Gmail messages of the account and their bytes (what the mirror holds now)."""
    row = await conn.fetchrow(
        """SELECT count(*) AS n, coalesce(sum(m.size), 0) AS b FROM gmail_messages g
           JOIN messages m ON m.id = g.message_pk WHERE g.account_id = $1 AND g.deleted_at IS NULL""",
        account_id,
    )
    return int(row["n"]), int(row["b"])


async def upsert_labels(conn: asyncpg.Connection, account_id: str, labels: Sequence[GmailLabel]) -> LabelSync:
    """The account's labels as Gmail lists them now: upserted, and labels gone from Gmail deleted."""
    ids = [label.id for label in labels]
    async with conn.transaction():
        known = {r["label_id"] for r in await conn.fetch(
            "SELECT label_id FROM gmail_labels WHERE account_id = $1", account_id)}
        await conn.executemany(
            """INSERT INTO gmail_labels (account_id, label_id, name, type, message_list_visibility,
                   label_list_visibility, background_color, text_color, messages_total, messages_unread,
                   threads_total, threads_unread)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (account_id, label_id) DO UPDATE SET
                   name = EXCLUDED.name, type = EXCLUDED.type,
                   message_list_visibility = EXCLUDED.message_list_visibility,
                   label_list_visibility = EXCLUDED.label_list_visibility,
                   background_color = EXCLUDED.background_color, text_color = EXCLUDED.text_color,
                   messages_total = EXCLUDED.messages_total, messages_unread = EXCLUDED.messages_unread,
                   threads_total = EXCLUDED.threads_total, threads_unread = EXCLUDED.threads_unread,
                   updated_at = now()""",
            [
                (account_id, lb.id, lb.name, lb.type, lb.message_list_visibility, lb.label_list_visibility,
                 lb.background_color, lb.text_color, lb.messages_total, lb.messages_unread, lb.threads_total,
                 lb.threads_unread)
                for lb in sorted(labels, key=lambda lb: lb.id)
            ],
        )
        removed = await conn.fetch(
            "DELETE FROM gmail_labels WHERE account_id = $1 AND NOT (label_id = ANY($2::text[])) RETURNING label_id",
            account_id, ids,
        )
        if removed:  # a deleted label is gone from every message too
            await conn.execute(
                "DELETE FROM gmail_message_labels WHERE account_id = $1 AND label_id = ANY($2::text[])",
                account_id, [r["label_id"] for r in removed],
            )
    added = sorted(lb.name for lb in labels if lb.id not in known)
    return LabelSync(labels=len(ids), removed=len(removed), added=added)


async def stored_gmail_ids(conn: asyncpg.Connection, account_id: str, ids: Iterable[str]) -> set[str]:
    """Which of these Gmail ids the account holds (live): their bodies need no download."""
    rows = await conn.fetch(
        """SELECT g.gmail_id FROM unnest($2::text[]) AS u(id)
           JOIN gmail_messages g ON g.account_id = $1 AND g.gmail_id = u.id AND g.deleted_at IS NULL""",
        account_id, sorted(set(ids)),
    )
    return {r["gmail_id"] for r in rows}


async def current_labels(conn: asyncpg.Connection, account_id: str, ids: Iterable[str]) -> dict[str, set[str]]:
    """Stored labels of these (live) messages; a live message without labels maps to an empty set."""
    wanted = sorted(set(ids))
    rows = await conn.fetch(
        """SELECT g.gmail_id, l.label_id FROM unnest($2::text[]) AS u(id)
           JOIN gmail_messages g ON g.account_id = $1 AND g.gmail_id = u.id AND g.deleted_at IS NULL
           LEFT JOIN gmail_message_labels l ON l.account_id = $1 AND l.gmail_id = g.gmail_id""",
        account_id, wanted,
    )
    labels: dict[str, set[str]] = {}
    for r in rows:
        found = labels.setdefault(r["gmail_id"], set())
        if r["label_id"] is not None:
            found.add(r["label_id"])
    return labels


async def set_message_labels(conn: asyncpg.Connection, account_id: str, labels: Mapping[str, Iterable[str]]) -> int:
    """Make each message's label rows exactly the given set; returns the rows added plus removed."""
    if not labels:
        return 0
    ids = sorted(labels)
    pairs = sorted((g, label) for g in ids for label in set(labels[g]))
    removed = await conn.fetch(
        """DELETE FROM gmail_message_labels l
           WHERE l.account_id = $1 AND l.gmail_id = ANY($2::text[])
             AND NOT EXISTS (SELECT 1 FROM unnest($3::text[], $4::text[]) AS p(g, label)
                             WHERE p.g = l.gmail_id AND p.label = l.label_id)
           RETURNING 1""",
        account_id, ids, [p[0] for p in pairs], [p[1] for p in pairs],
    )
    added = await conn.fetch(
        """INSERT INTO gmail_message_labels (account_id, gmail_id, label_id)
           SELECT $1, g, label FROM unnest($2::text[], $3::text[]) AS p(g, label)
           WHERE EXISTS (SELECT 1 FROM gmail_messages m WHERE m.account_id = $1 AND m.gmail_id = p.g)
           ORDER BY g, label
           ON CONFLICT DO NOTHING RETURNING 1""",
        account_id, [p[0] for p in pairs], [p[1] for p in pairs],
    )
    return len(removed) + len(added)


async def clear_listing(conn: asyncpg.Connection, account_id: str, run: str) -> None:
    """A reconcile's staged rows, and those of reconciles abandoned more than a day ago."""
    await conn.execute(
        """DELETE FROM gmail_listing WHERE account_id = $1
             AND (run = $2 OR staged_at < now() - interval '1 day')""",
        account_id, run,
    )


async def stage_listing(conn: asyncpg.Connection, account_id: str, run: str, scope: str, ids: Sequence[str]) -> None:
    """One listed page of `scope` ('' for every message, else a label id), kept for reconcile `run`."""
    if ids:
        await conn.execute(
            """INSERT INTO gmail_listing (account_id, run, scope, gmail_id)
               SELECT $1, $2, $3, i FROM unnest($4::text[]) AS u(i) ORDER BY i ON CONFLICT DO NOTHING""",
            account_id, run, scope, sorted(set(ids)),
        )


async def delete_unlisted(conn: asyncpg.Connection, account_id: str, run: str) -> tuple[int, int]:
    """Stored live messages the complete listing (scope '') of `run` does not hold: deleted in Gmail."""
    rows = await conn.fetch(
        """SELECT g.gmail_id FROM gmail_messages g
           WHERE g.account_id = $1 AND g.deleted_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM gmail_listing s
                             WHERE s.account_id = $1 AND s.run = $2 AND s.scope = '' AND s.gmail_id = g.gmail_id)""",
        account_id, run,
    )
    return await mark_deleted(conn, account_id, [r["gmail_id"] for r in rows])


async def replace_label_members(conn: asyncpg.Connection, account_id: str, run: str, label_id: str) -> int:
    """One label's membership made exactly its complete listing in `run` (scope = the label id), among
    live stored messages; returns rows changed."""
    async with conn.transaction():
        removed = await conn.fetchval(
            """WITH d AS (
                   DELETE FROM gmail_message_labels l
                   WHERE l.account_id = $1 AND l.label_id = $3
                     AND NOT EXISTS (SELECT 1 FROM gmail_listing s WHERE s.account_id = $1 AND s.run = $2
                                     AND s.scope = $3 AND s.gmail_id = l.gmail_id)
                   RETURNING 1)
               SELECT count(*) FROM d""",
            account_id, run, label_id,
        )
        added = await conn.fetchval(
            """WITH a AS (
                   INSERT INTO gmail_message_labels (account_id, gmail_id, label_id)
                   SELECT $1, g.gmail_id, $3 FROM gmail_listing s
                   JOIN gmail_messages g ON g.account_id = $1 AND g.gmail_id = s.gmail_id AND g.deleted_at IS NULL
                   WHERE s.account_id = $1 AND s.run = $2 AND s.scope = $3
                   ORDER BY g.gmail_id
                   ON CONFLICT DO NOTHING RETURNING 1)
               SELECT count(*) FROM a""",
            account_id, run, label_id,
        )
    return removed + added


async def mark_deleted(conn: asyncpg.Connection, account_id: str, ids: Iterable[str]) -> tuple[int, int]:
    """Messages deleted in Gmail: kept with deleted_at, labels dropped. Returns how many were live and
    their bytes (what leaves the mirror's size, see `mirror_size`)."""
    wanted = sorted(set(ids))
    if not wanted:
        return 0, 0
    async with conn.transaction():
        rows = await conn.fetch(
            """WITH gone AS (
                   UPDATE gmail_messages SET deleted_at = now(), updated_at = now()
                   WHERE account_id = $1 AND gmail_id = ANY($2::text[]) AND deleted_at IS NULL
                   RETURNING message_pk)
               SELECT gone.message_pk, m.size FROM gone JOIN messages m ON m.id = gone.message_pk""",
            account_id, wanted,
        )
        await conn.execute(
            "DELETE FROM gmail_message_labels WHERE account_id = $1 AND gmail_id = ANY($2::text[])", account_id, wanted
        )
        # the message itself is deleted once no live Gmail id holds it (the same bytes can be two ids)
        await conn.execute(
            """UPDATE messages m SET deleted_at = now()
               WHERE m.id = ANY($1::bigint[]) AND m.deleted_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM gmail_messages g WHERE g.message_pk = m.id AND g.deleted_at IS NULL)""",
            await lock_messages(conn, [r["message_pk"] for r in rows]),
        )
    return len(rows), sum(r["size"] for r in rows)


def _stage_row(i: int, m: GmailMessage, p: ParsedMessage) -> tuple:
    return (
        p.sha256, p.header_sha256, p.size, i, list(m.label_ids), m.internal_date, p.message_id, p.in_reply_to,
        p.references, p.subject, p.from_addr, p.from_name, p.to_addrs, p.cc_addrs, p.bcc_addrs,
        p.sent_at, p.snippet, p.parse_error,
    )


async def persist_gmail_messages(
    conn: asyncpg.Connection,
    account_id: str,
    fetched: Sequence[GmailMessage],
    parsed: Sequence[ParsedMessage] | None = None,
) -> PageWriteResult:
    """A batch of raw Gmail messages: bodies, messages, Gmail ids, labels (one transaction), then
    threads by Gmail threadId and contacts (a second, per-account serialized one)."""
    if not fetched:
        return PageWriteResult(0, 0, 0, 0)
    if parsed is None:
        parsed = [parse_message(m.raw) for m in fetched]
    raws = {p.sha256: m.raw for m, p in zip(fetched, parsed)}
    by_sha = {p.sha256: p for p in parsed}
    async with conn.transaction():
        await conn.copy_records_to_table(
            "page_stage", records=[_stage_row(i, m, p) for i, (m, p) in enumerate(zip(fetched, parsed))],
            columns=STAGE_COLUMNS,
        )
        ids = {bytes(r["sha256"]): r["id"] for r in await conn.fetch(INSERT_STAGED_MESSAGES, account_id)}
        new = sorted(ids)
        held = sorted(sha for sha in raws if sha not in ids)
        if held:
            rows = await conn.fetch(_EXISTING_MESSAGES, account_id, held)
            ids.update({bytes(r["sha256"]): r["id"] for r in rows})
            await keep_placed(conn, [r["id"] for r in rows])
        # checked rather than assumed (Gmail is quota-bound, one lookup per batch is free)
        bodies = [bytes(r["sha"]) for r in await conn.fetch(_MISSING_BODIES, account_id, sorted(raws))]
        if bodies:
            await conn.copy_records_to_table(
                "message_bodies", records=[(account_id, sha, raws[sha]) for sha in sorted(bodies)],
                columns=("account_id", "sha256", "raw"),
            )
        order = sorted(range(len(fetched)), key=lambda i: fetched[i].id)
        await conn.execute(
            """INSERT INTO gmail_messages (account_id, gmail_id, gmail_thread_id, message_pk, history_id, internaldate)
               SELECT $1, g, t, pk, h, d
               FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::timestamptz[]) AS u(g, t, pk, h, d)
               ON CONFLICT (account_id, gmail_id) DO UPDATE SET
                   gmail_thread_id = EXCLUDED.gmail_thread_id, message_pk = EXCLUDED.message_pk,
                   history_id = EXCLUDED.history_id, internaldate = EXCLUDED.internaldate,
                   deleted_at = NULL, updated_at = now()""",
            account_id, [fetched[i].id for i in order], [fetched[i].thread_id for i in order],
            [ids[parsed[i].sha256] for i in order], [fetched[i].history_id for i in order],
            [fetched[i].internal_date for i in order],
        )
        await set_message_labels(conn, account_id, {m.id: m.label_ids for m in fetched})
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", account_lock_key(account_id))
        unthreaded = await conn.fetch(
            """SELECT DISTINCT ON (m.id) m.id, m.sha256, g.gmail_thread_id FROM gmail_messages g
               JOIN messages m ON m.id = g.message_pk
               WHERE g.account_id = $1 AND g.gmail_id = ANY($2::text[]) AND m.thread_id IS NULL
               ORDER BY m.id, g.gmail_id""",
            account_id, sorted(m.id for m in fetched),
        )
        if unthreaded:
            await _assign_gmail_threads(conn, account_id, [(r["id"], r["gmail_thread_id"]) for r in unthreaded])
            await _upsert_contacts(conn, account_id, [by_sha[bytes(r["sha256"])] for r in unthreaded])
    return PageWriteResult(
        messages=len(fetched), new_messages=len(new), bytes=sum(len(m.raw) for m in fetched),
        parse_errors=sum(1 for p in parsed if p.parse_error),
    )


async def thread_unthreaded(conn: asyncpg.Connection, account_id: str, gmail_ids: Sequence[str]) -> int:
    """Threads and contacts for stored messages that have none: a crash between the two transactions
    of `persist_gmail_messages` leaves them so, and a retried batch skips stored ids. Returns how many."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", account_lock_key(account_id))
        rows = await conn.fetch(
            """SELECT DISTINCT ON (m.id) m.id, g.gmail_thread_id, b.raw FROM gmail_messages g
               JOIN messages m ON m.id = g.message_pk
               JOIN message_bodies b ON b.account_id = m.account_id AND b.sha256 = m.sha256
               WHERE g.account_id = $1 AND g.gmail_id = ANY($2::text[]) AND m.thread_id IS NULL
               ORDER BY m.id, g.gmail_id""",
            account_id, sorted(gmail_ids),
        )
        if rows:
            await _assign_gmail_threads(conn, account_id, [(r["id"], r["gmail_thread_id"]) for r in rows])
            await _upsert_contacts(conn, account_id, [parse_message(bytes(r["raw"])) for r in rows])
    return len(rows)


async def _assign_gmail_threads(conn: asyncpg.Connection, account_id: str, members: list[tuple[int, str]]) -> None:
    """Gmail's threadId is the thread: one threads row per threadId, messages pointed at it."""
    thread_keys = sorted({t for _, t in members})
    await conn.execute(
        """INSERT INTO threads (account_id, provider_thread_id)
           SELECT $1, t FROM unnest($2::text[]) AS u(t) ORDER BY t
           ON CONFLICT (account_id, provider_thread_id) WHERE provider_thread_id IS NOT NULL DO NOTHING""",
        account_id, thread_keys,
    )
    rows = await conn.fetch(
        "SELECT id, provider_thread_id FROM threads WHERE account_id = $1 AND provider_thread_id = ANY($2::text[])",
        account_id, thread_keys,
    )
    tid = {r["provider_thread_id"]: r["id"] for r in rows}
    await conn.execute(
        """UPDATE messages m SET thread_id = u.tid
           FROM unnest($1::bigint[], $2::bigint[]) AS u(pk, tid) WHERE m.id = u.pk""",
        [pk for pk, _ in members], [tid[t] for _, t in members],
    )
    await refresh_thread_stats(conn, sorted(tid.values()))


@dataclass
class Refusals:
    """Messages Gmail keeps refusing to serve: how many, and its latest answer."""

    count: int = 0
    reason: str | None = None


async def record_refused(conn: asyncpg.Connection, account_id: str, refused: Mapping[str, str]) -> None:
    """Remember messages Gmail refused (another attempt counted for those already known)."""
    if not refused:
        return
    ids = sorted(refused)
    await conn.execute(
        """INSERT INTO gmail_refused (account_id, gmail_id, reason)
           SELECT $1, i, r FROM unnest($2::text[], $3::text[]) AS t(i, r)
           ON CONFLICT (account_id, gmail_id) DO UPDATE
               SET reason = EXCLUDED.reason, attempts = gmail_refused.attempts + 1, last_refused = now()""",
        account_id, ids, [refused[i] for i in ids],
    )


async def clear_refused(conn: asyncpg.Connection, account_id: str, ids: Iterable[str]) -> None:
    """Forget refusals of messages now stored, or gone from Gmail."""
    ids = sorted(set(ids))
    if ids:
        await conn.execute(
            "DELETE FROM gmail_refused WHERE account_id = $1 AND gmail_id = ANY($2::text[])", account_id, ids)


async def refused_ids(conn: asyncpg.Connection, account_id: str, limit: int) -> list[str]:
    """The refused messages due to be asked for again, least recently refused first: 2 minutes after
    the first refusal, doubling with each one up to a day (a pass should not pay for them every time)."""
    rows = await conn.fetch(
        """SELECT gmail_id FROM gmail_refused
           WHERE account_id = $1
             AND last_refused <= now() - make_interval(mins => least(power(2, attempts), 1440)::int)
           ORDER BY last_refused, gmail_id LIMIT $2""",
        account_id, limit,
    )
    return [r["gmail_id"] for r in rows]


async def refusals(conn: asyncpg.Connection, account_id: str) -> Refusals:
    row = await conn.fetchrow(
        """SELECT count(*) AS n, (array_agg(reason ORDER BY last_refused DESC))[1] AS reason
           FROM gmail_refused WHERE account_id = $1""",
        account_id,
    )
    return Refusals(count=row["n"], reason=row["reason"])
