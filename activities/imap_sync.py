"""IMAP activities: discover folders, plan a folder's UID pages, fetch-and-persist one page."""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress

from temporalio import activity

from activities.deps import Deps
from activities.errors import UNSERVED_AFTER_ATTEMPTS, classified_errors
from mail.model import FetchedMessage
from mail.parse import ParsedMessage, parse_many
from mail.windows import imap_date
from providers.errors import UidValidityChanged
from providers.imap.client import ImapSession
from store.folders import FolderRow, record_folder_state, upsert_folders
from store.pages import PageWriteResult, reuse_stored, thread_messages, write_page
from workflows.models import (
    DiscoverInput, DiscoverResult, FolderRef, PageSummary, PlanPagesInput, PlanPagesResult,
    SyncPageInput, UidRange,
)

# Folders a user reads first come first; the rest follow by name.
_ROLE_ORDER = {"inbox": 0, "sent": 1, "archive": 2, "drafts": 3, "flagged": 4}
_HEARTBEAT_EVERY_S = 5.0
_WRITES_IN_FLIGHT = 3
_THREAD_EVERY = 500  # messages written per threading transaction (and per resume point)


def _pages_newest_first(uids: list[int], page_size: int) -> list[UidRange]:
    ordered = sorted(uids, reverse=True)
    pages = []
    for i in range(0, len(ordered), page_size):
        chunk = ordered[i : i + page_size]
        pages.append(UidRange(lo=chunk[-1], hi=chunk[0], count=len(chunk)))
    return pages


def _window_criteria(inp: PlanPagesInput) -> str:
    """SEARCH criteria for a backfill window on INTERNALDATE: SINCE is inclusive, BEFORE exclusive."""
    parts = []
    if inp.since is not None:
        parts.append(f"SINCE {imap_date(inp.since)}")
    if inp.before is not None:
        parts.append(f"BEFORE {imap_date(inp.before)}")
    return " ".join(parts) or "ALL"


class ImapActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn
    async def discover_folders(self, inp: DiscoverInput) -> DiscoverResult:
        async with classified_errors():
            session = await self.deps.imap_session(inp.account_id)
            async with session:
                folders = [f for f in await session.list_folders() if f.selectable]
            rows = [FolderRow(f.name, f.delimiter, f.role, f.attributes) for f in folders]
            async with self.deps.pool.acquire() as conn:
                ids = await upsert_folders(conn, inp.account_id, rows)
                address = await conn.fetchval("SELECT address FROM accounts WHERE id = $1", inp.account_id)
            refs = [FolderRef(folder_id=ids[f.name], name=f.name, role=f.role) for f in folders]
            refs.sort(key=lambda r: (_ROLE_ORDER.get(r.role or "", 9), r.name))
            return DiscoverResult(address=address, folders=refs)

    @activity.defn
    async def plan_folder_pages(self, inp: PlanPagesInput) -> PlanPagesResult:
        async with classified_errors():
            session = await self.deps.imap_session(inp.account_id)
            async with session:
                status = await session.select(inp.folder.name)
                if inp.expected_uidvalidity is not None and status.uidvalidity != inp.expected_uidvalidity:
                    raise UidValidityChanged(
                        f"{inp.folder.name}: UIDVALIDITY {inp.expected_uidvalidity} -> {status.uidvalidity}"
                    )
                uids = await session.uid_search(_window_criteria(inp)) if status.messages else []
            matching = len(uids)
            if inp.below_uid is not None:
                uids = [u for u in uids if u < inp.below_uid]
            pages = _pages_newest_first(uids, inp.page_size)
            more_below = None
            if len(pages) > inp.max_pages:
                pages = pages[: inp.max_pages]
                more_below = pages[-1].lo
            async with self.deps.pool.acquire() as conn:
                removed = await record_folder_state(
                    conn, inp.folder.folder_id, uidvalidity=status.uidvalidity, uidnext=status.uidnext,
                    highestmodseq=status.highestmodseq, message_count=status.messages,
                )
            return PlanPagesResult(
                uidvalidity=status.uidvalidity, uidnext=status.uidnext, highestmodseq=status.highestmodseq,
                exists=status.messages, matching=matching, pages=pages, more_below=more_below,
                stale_locations_removed=removed,
            )

    @activity.defn
    async def sync_page(self, inp: SyncPageInput) -> PageSummary:
        """Fetch one page in chunks, newest first, writing chunk k while chunk k+1 downloads.

        Heartbeat details carry the lowest UID persisted so far (a retried attempt starts below it) and
        the UIDs the server would not serve so far (still reported by the attempt that finishes).
        """
        info = activity.info()
        resume_below: int | None = None
        unserved_before: list[int] = []
        if info.heartbeat_details:
            with suppress(Exception):
                resume_below = int(info.heartbeat_details[0])
            with suppress(Exception):
                unserved_before = [int(u) for u in info.heartbeat_details[1] if int(u) >= (resume_below or 0)]
        summary = PageSummary(resumed_from=resume_below, unserved=unserved_before)
        progress = {"below": resume_below}

        timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 60.0
        every = min(_HEARTBEAT_EVERY_S, timeout / 3)

        async def beat() -> None:
            while True:
                await asyncio.sleep(every)
                activity.heartbeat(progress["below"], summary.unserved)

        beater = asyncio.create_task(beat())
        try:
            async with classified_errors():
                session = await self.deps.imap_session(inp.account_id)
                async with session:
                    status = await session.select(inp.folder.name)
                    if status.uidvalidity != inp.uidvalidity:
                        raise UidValidityChanged(
                            f"{inp.folder.name}: UIDVALIDITY {inp.uidvalidity} -> {status.uidvalidity}"
                        )
                    uids = await session.fetch_uids(inp.page.lo, inp.page.hi)
                    if resume_below is not None:
                        # persisted by an earlier attempt: counted as done, not fetched again
                        summary.fetched += sum(1 for u in uids if u >= resume_below and u not in unserved_before)
                        uids = [u for u in uids if u < resume_below]
                    uids.sort(reverse=True)
                    summary.vanished = max(0, inp.page.count - len(uids)) if resume_below is None else 0
                    chunks = [uids[i : i + inp.chunk_size] for i in range(0, len(uids), inp.chunk_size)]
                    # Fetching chunk k+1 overlaps the writes of the chunks before it; a few writes run at
                    # once (each its own transaction) because one commit per chunk is latency-bound.
                    # Threading takes the account's lock, so it runs once per few chunks, not per chunk.
                    writes: deque[tuple[asyncio.Task[PageWriteResult], int]] = deque()
                    unthreaded: dict[int, ParsedMessage] = {}

                    async def settle_oldest() -> None:
                        task, lowest = writes.popleft()
                        unthreaded.update((await task).written)
                        if unthreaded and len(unthreaded) < _THREAD_EVERY and writes:
                            return  # threaded with the chunks after it; the resume point stays
                        if unthreaded:
                            await self._thread(inp, unthreaded)
                            unthreaded.clear()
                        # settled in fetch order, so every UID above `lowest` is stored and threaded
                        progress["below"] = lowest
                        activity.heartbeat(lowest, summary.unserved)

                    try:
                        for chunk in chunks:
                            wanted = await self._not_stored(session, inp, chunk, summary) if inp.reuse_bodies else chunk
                            # a message still not served on a late attempt is recorded as not stored, so
                            # the folder and the account finish instead of retrying this page for ever
                            fetched, unserved = await session.fetch_served(
                                wanted, give_up=info.attempt >= UNSERVED_AFTER_ATTEMPTS)
                            if unserved:
                                summary.unserved = sorted(set(summary.unserved) | set(unserved), reverse=True)
                            while len(writes) >= _WRITES_IN_FLIGHT:
                                await settle_oldest()
                            writes.append((asyncio.create_task(self._write(inp, fetched, summary)), min(chunk)))
                        while writes:
                            await settle_oldest()
                    finally:
                        # awaited, not only cancelled: a write of this page must not commit after the
                        # activity has ended (a restarted folder may already have planned over it)
                        for task, _ in writes:
                            task.cancel()
                        await asyncio.gather(*(task for task, _ in writes), return_exceptions=True)
        finally:
            beater.cancel()
        return summary

    async def _not_stored(
        self, session: ImapSession, inp: SyncPageInput, chunk: list[int], summary: PageSummary
    ) -> list[int]:
        """Place the chunk's messages the account already holds (by header key); the UIDs left need bodies."""
        heads = await session.fetch_headers(chunk)
        async with self.deps.pool.acquire() as conn:
            missing = await reuse_stored(conn, inp.account_id, inp.folder.folder_id, inp.uidvalidity, heads)
        reused = len(heads) - len(missing)
        summary.fetched += reused
        summary.reused += reused
        summary.reused_bytes += sum(h.size or 0 for h in heads) - sum(h.size or 0 for h in missing)
        summary.header_bytes += sum(len(h.raw) for h in heads)
        return [h.uid for h in missing]

    async def _write(self, inp: SyncPageInput, fetched: list[FetchedMessage], summary: PageSummary) -> PageWriteResult:
        parsed = parse_many([m.raw for m in fetched])
        async with self.deps.pool.acquire() as conn:
            result = await write_page(conn, inp.account_id, inp.folder.folder_id, inp.uidvalidity, fetched, parsed)
        summary.fetched += result.messages
        summary.new_messages += result.new_messages
        summary.bytes += result.bytes
        summary.parse_errors += result.parse_errors
        return result

    async def _thread(self, inp: SyncPageInput, written: dict[int, ParsedMessage]) -> None:
        async with self.deps.pool.acquire() as conn:
            await thread_messages(conn, inp.account_id, written)
