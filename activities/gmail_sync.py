"""Gmail activities: profile and labels, one listing page, one batch of threads, history, reconcile, watch.

Thin: a GmailSession (providers.gmail) paying the share of the account's quota the workflow gave
this activity, and the store (store.gmail). Bodies never leave the activity; it returns counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timezone

from pydantic import BaseModel
from temporalio import activity

from activities.deps import Deps
from activities.errors import classified_errors
from mail.parse import parse_many
from providers.gmail import (
    GmailMessage, GmailSession, HistoryChange, LabelsAdded, LabelsRemoved, MessageAdded, MessageDeleted,
    RequestRejected,
)
from store.accounts import get_account
from store.gmail import (
    clear_listing, clear_refused, current_labels, delete_unlisted, mark_deleted, mirror_size, persist_gmail_messages,
    record_refused, refusals, refused_ids, replace_label_members, set_message_labels, stage_listing,
    stored_gmail_ids, thread_unthreaded, upsert_labels,
)
from workflows.models import (
    DescribeAccountResult, DiscoverInput, GmailFetchInput, GmailFetchResult, GmailHistoryInput, GmailHistoryResult,
    GmailListInput, GmailListResult, GmailReconcileInput, GmailReconcileResult, GmailStartInput, GmailStartResult,
    GmailWatchInput, GmailWatchResult, ThreadBatch,
)

_HEARTBEAT_EVERY_S = 5.0
_WRITE_GROUP = 100        # messages per write transaction at most
_WRITE_GROUP_S = 1.0      # and at least this often: a crash refetches at most a second of quota
_REFUSED_PER_PASS = 500   # messages Gmail refused before, asked for again by each pass
_HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")


class _ReconcileCheckpoint(BaseModel):
    """Where a reconcile stands (its heartbeat details): the scopes to list ('' = every message, then
    each label id), the one being listed and its next page token; what is staged is in gmail_listing."""

    run: str                # staged rows are this reconcile's own (gmail_listing.run)
    scopes: list[str]
    scope: int = 0
    token: str | None = None
    listed: int = 0
    deleted: int = 0
    changed: int = 0
    resumed: bool = False  # set on the copy a retried attempt reads back


@contextlib.asynccontextmanager
async def _heartbeating(progress: Callable[[], object]) -> AsyncIterator[None]:
    """Heartbeat `progress()` every few seconds while the body runs (a quota-bound fetch waits a lot)."""
    info = activity.info()
    timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 60.0
    every = min(_HEARTBEAT_EVERY_S, timeout / 3)

    async def beat() -> None:
        while True:
            activity.heartbeat(progress())
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _thread_batches(pairs: list[tuple[str, str]], per_batch: int) -> list[ThreadBatch]:
    """Group a listing page by thread (first-seen order: newest activity first), `per_batch` threads each."""
    threads: dict[str, list[str]] = {}
    for message_id, thread_id in pairs:
        threads.setdefault(thread_id, []).append(message_id)
    order = list(threads)
    batches = []
    for i in range(0, len(order), per_batch):
        chunk = order[i : i + per_batch]
        batches.append(ThreadBatch(thread_ids=chunk, message_ids=[m for t in chunk for m in threads[t]]))
    return batches


class GmailActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn
    async def describe_account(self, inp: DiscoverInput) -> DescribeAccountResult:
        async with classified_errors():
            async with self.deps.pool.acquire() as conn:
                account = await get_account(conn, inp.account_id)
            return DescribeAccountResult(provider=account.provider, address=account.address)

    @activity.defn
    async def gmail_start(self, inp: GmailStartInput) -> GmailStartResult:
        """The profile (historyId to resume from) and the labels, upserted (removed ones deleted)."""
        async with classified_errors():
            async with await self.deps.gmail_session(inp.account_id, inp.units_per_second) as gmail:
                # the historyId first: whatever changes while we list is replayed from it afterwards
                profile = await gmail.profile()
                labels = await gmail.labels()
            async with self.deps.pool.acquire() as conn:
                synced = await upsert_labels(conn, inp.account_id, labels)
                stored, stored_bytes = await mirror_size(conn, inp.account_id)
            return GmailStartResult(
                address=profile.email, history_id=profile.history_id, messages_total=profile.messages_total,
                labels=synced.labels, labels_removed=synced.removed, stored=stored, stored_bytes=stored_bytes,
            )

    @activity.defn
    async def gmail_list_page(self, inp: GmailListInput) -> GmailListResult:
        """One messages.list page (ids and thread ids, newest first), as batches of threads."""
        async with classified_errors():
            async with await self.deps.gmail_session(inp.account_id, inp.units_per_second) as gmail:
                pairs, token = await gmail.list_messages(inp.page_token, q=inp.query, page_size=inp.page_size)
            return GmailListResult(
                batches=_thread_batches(pairs, inp.thread_batch), next_page_token=token, listed=len(pairs)
            )

    @activity.defn
    async def gmail_fetch_messages(self, inp: GmailFetchInput) -> GmailFetchResult:
        """Raw bytes of the batch's messages not stored yet, in Gmail batches, persisted as each arrives.

        A retried attempt skips what the earlier one persisted (looked up, not remembered), so it resumes
        mid-batch; messages gone since the listing (404) are counted as missing.
        """
        result = GmailFetchResult(listed=len(inp.message_ids))
        async with classified_errors(), _heartbeating(lambda: result.fetched + result.reused):
            async with self.deps.pool.acquire() as conn:
                stored = await stored_gmail_ids(conn, inp.account_id, inp.message_ids)
                if stored:  # an earlier attempt may have died between a batch's two transactions
                    await thread_unthreaded(conn, inp.account_id, sorted(stored))
            result.reused = len(stored)
            wanted = [m for m in inp.message_ids if m not in stored]
            async with await self.deps.gmail_session(inp.account_id, inp.units_per_second) as gmail:
                missing = await self._fetch_and_persist(gmail, inp.account_id, wanted, result)
            result.missing = len(missing)
            return result

    async def _fetch_and_persist(
        self, gmail: GmailSession, account_id: str, ids: list[str], result: GmailFetchResult
    ) -> list[str]:
        """Raw messages in Gmail batches, each parsed and persisted as it arrives (counted into `result`);
        returns the ids Gmail answered 404 for (deleted since they were listed)."""
        missing: list[str] = []
        refused: dict[str, str] = {}
        stored: list[str] = []
        # At Google's quota a Gmail batch holds 2-5 messages (its size is what a bucket's burst pays
        # for): writing each as its own transaction costs more than the fetch, so batches are grouped.
        pending: list[GmailMessage] = []
        oldest = 0.0

        async def flush() -> None:
            nonlocal pending
            group, pending = pending, []
            parsed = await asyncio.to_thread(parse_many, [m.raw for m in group])
            async with self.deps.pool.acquire() as conn:
                written = await persist_gmail_messages(conn, account_id, group, parsed)
            stored.extend(m.id for m in group)
            result.fetched += written.messages
            result.new_messages += written.new_messages
            result.bytes += written.bytes
            result.parse_errors += written.parse_errors

        async with contextlib.aclosing(gmail.iter_raw_messages(ids)) as batches:
            async for batch in batches:
                missing.extend(batch.missing)
                refused.update(batch.refused)
                result.retried_parts += batch.retried_parts
                if not pending:
                    oldest = time.monotonic()
                pending.extend(batch.messages)
                if len(pending) >= _WRITE_GROUP or (pending and time.monotonic() - oldest >= _WRITE_GROUP_S):
                    await flush()
        if pending:
            await flush()
        # A message Gmail keeps refusing is left out, not allowed to stall the rest: it is recorded,
        # and every pass asks for it again (gmail_apply_history).
        async with self.deps.pool.acquire() as conn:
            await record_refused(conn, account_id, refused)
            await clear_refused(conn, account_id, stored + missing)
            now = await refusals(conn, account_id)
        result.refused += len(refused)
        result.refused_total, result.refused_reason = now.count, now.reason
        return missing

    @activity.defn
    async def gmail_apply_history(self, inp: GmailHistoryInput) -> GmailHistoryResult:
        """Every change since `start_history_id`, applied idempotently; the result's history_id is where
        the mirror now stands (the workflow stores it only after this returns: nothing is skipped).

        Changes are replayed per message in history order: a message added and deleted within the window
        is never fetched; added messages are fetched raw (their labels come with them); label changes on
        stored messages are applied to the stored set. `HistoryExpired` (404) ends the activity for good:
        the workflow resyncs.
        """
        records: list[HistoryChange] = []
        result = GmailHistoryResult(history_id=inp.start_history_id)
        async with classified_errors(), _heartbeating(lambda: len(records)):
            async with await self.deps.gmail_session(inp.account_id, inp.units_per_second) as gmail:
                token: str | None = None
                latest = inp.start_history_id
                while True:
                    page = await gmail.history(inp.start_history_id, token, history_types=_HISTORY_TYPES)
                    records.extend(page.records)
                    latest = max(latest, page.history_id)
                    token = page.next_page_token
                    if not token:
                        break
                result.records = len(records)
                # labels may have been created, renamed or deleted: history does not say
                labels = await gmail.labels()
                touched = list(dict.fromkeys(r.message_id for r in records))
                async with self.deps.pool.acquire() as conn:
                    synced = await upsert_labels(conn, inp.account_id, labels)
                    stored = await current_labels(conn, inp.account_id, touched)
                    asked_again = await refused_ids(conn, inp.account_id, _REFUSED_PER_PASS)
                result.labels_removed, result.labels_added = synced.removed, synced.added
                deleted: set[str] = set()
                labels_now = {k: set(v) for k, v in stored.items()}
                for change in sorted(records, key=lambda r: r.history_id):  # stable: a record's own order kept
                    mid = change.message_id
                    if isinstance(change, MessageDeleted):
                        deleted.add(mid)
                    elif isinstance(change, MessageAdded):
                        deleted.discard(mid)
                    elif isinstance(change, LabelsAdded) and mid in labels_now:
                        labels_now[mid] |= set(change.label_ids)
                    elif isinstance(change, LabelsRemoved) and mid in labels_now:
                        labels_now[mid] -= set(change.label_ids)
                # anything touched that we do not hold (added, or changed before we ever saw it) is fetched
                to_fetch = [m for m in touched if m not in stored and m not in deleted]
                # and the messages Gmail refused so far: one may be served now (or be gone: a 404)
                to_fetch += [m for m in asked_again if m not in deleted and m not in stored and m not in to_fetch]
                fetched = GmailFetchResult()
                # a 404 is a message deleted since: the next history page will say so too
                gone = sorted(deleted) + await self._fetch_and_persist(gmail, inp.account_id, to_fetch, fetched)
                result.added, result.bytes = fetched.fetched, fetched.bytes
                result.refused_total, result.refused_reason = fetched.refused_total, fetched.refused_reason
            async with self.deps.pool.acquire() as conn:
                # a label deleted in Gmail within the window may still be "added" by an earlier record
                existing = {label.id for label in labels}
                final = {m: labels_now[m] & existing for m in labels_now if m not in deleted}
                relabel = {m: now for m, now in final.items() if now != stored[m]}
                async with conn.transaction():
                    await set_message_labels(conn, inp.account_id, relabel)
                result.relabeled = len(relabel)
                result.deleted, result.deleted_bytes = await mark_deleted(conn, inp.account_id, gone)
            result.history_id = latest
            return result

    @activity.defn
    async def gmail_reconcile(self, inp: GmailReconcileInput) -> GmailReconcileResult:
        """Before a resync's listing: stored messages Gmail no longer lists are marked deleted, and every
        label's membership is rebuilt from `messages.list?labelIds=…` (5 units per 500 ids, where
        fetching each message's labels would cost 5 units per message). New messages are the listing's job.

        Resumable: each listed page is staged (gmail_listing) before the heartbeat records the next page
        token, so a retried attempt goes on from there: a mailbox too big to list within one attempt's
        timeout still gets through, an attempt at a time.
        """
        cp: _ReconcileCheckpoint | None = None
        with contextlib.suppress(Exception):
            cp = _ReconcileCheckpoint.model_validate(activity.info().heartbeat_details[0])
            cp = cp.model_copy(update={"resumed": True})
        # `cp` is replaced, never changed in place: the heartbeat task may send it at any moment, and
        # what it sends must say "every page before `token` of scope `scope` is staged (and counted)"
        async with classified_errors(), _heartbeating(lambda: cp):
            async with await self.deps.gmail_session(inp.account_id, inp.units_per_second) as gmail:
                if cp is None:
                    cp = await self._begin_reconcile(gmail, inp.account_id)
                while cp.scope < len(cp.scopes):
                    label = cp.scopes[cp.scope]
                    try:
                        pairs, token = await gmail.list_messages(
                            cp.token, label_ids=[label] if label else None, page_size=inp.page_size)
                    except RequestRejected:
                        if cp.token is None:
                            raise
                        activity.logger.info("reconcile of %s: page token refused, listing again", inp.account_id)
                        cp = await self._begin_reconcile(gmail, inp.account_id)
                        continue
                    deleted = changed = 0
                    async with self.deps.pool.acquire() as conn:
                        await stage_listing(conn, inp.account_id, cp.run, label, [m for m, _ in pairs])
                        if token is None:  # the scope is complete: apply it
                            if label:
                                changed = await replace_label_members(conn, inp.account_id, cp.run, label)
                            else:
                                deleted = (await delete_unlisted(conn, inp.account_id, cp.run))[0]
                    cp = cp.model_copy(update={
                        "scope": cp.scope + (token is None), "token": token,
                        "listed": cp.listed + (0 if label else len(pairs)),
                        "deleted": cp.deleted + deleted, "changed": cp.changed + changed,
                    })
                    activity.heartbeat(cp)
            async with self.deps.pool.acquire() as conn:
                await clear_listing(conn, inp.account_id, cp.run)
                stored, stored_bytes = await mirror_size(conn, inp.account_id)
            return GmailReconcileResult(
                listed=cp.listed, deleted=cp.deleted, label_rows_changed=cp.changed, stored=stored,
                stored_bytes=stored_bytes, resumed=cp.resumed,
            )

    async def _begin_reconcile(self, gmail: GmailSession, account_id: str) -> _ReconcileCheckpoint:
        labels = [label.id for label in await gmail.labels(with_counts=False)]
        return _ReconcileCheckpoint(run=uuid.uuid4().hex, scopes=["", *labels])

    @activity.defn
    async def gmail_watch(self, inp: GmailWatchInput) -> GmailWatchResult:
        """users.watch on the Pub/Sub topic (start or renew: Gmail wants it renewed at least weekly)."""
        async with classified_errors():
            async with await self.deps.gmail_session(inp.account_id, inp.units_per_second) as gmail:
                watch = await gmail.watch(inp.topic)
            expiration = watch.expiration
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=timezone.utc)
            return GmailWatchResult(history_id=watch.history_id, expiration=expiration)

