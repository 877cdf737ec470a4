"""IMAP activities of the live account: probe every folder, apply one folder's changes, watch for pushes.

An idle pass costs one connection, one LIST and one STATUS per folder, whatever the mailbox size;
only folders whose counters moved are selected and diffed.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

from temporalio import activity

from activities.deps import Deps
from activities.errors import UNSERVED_AFTER_ATTEMPTS, classified_errors
from mail.parse import parse_many
from providers.imap.client import ImapSession
from providers.imap.parse import FolderStatus
from store.changes import (
    HistoryRow, append_history, forget_folder, remove_locations, stored_count, stored_flags, stored_flags_for,
    stored_totals, update_flags,
)
from store.folders import FolderRow, live_folders, record_folder_state, upsert_folders
from store.pages import persist_page
from workflows.models import (
    FolderChangesInput, FolderChangesResult, FolderCursor, FolderRef, HistoryInput, ProbeInput, ProbeResult,
    WatchInput, WatchResult,
)

_MAX_UID = 4_294_967_295  # UIDs are 32-bit (RFC 3501 2.3.1.1)
_FLAG_PAGE = 2000


def _moved(cursor: FolderCursor, status: FolderStatus) -> bool:
    if status.highestmodseq is None:
        return True  # without CONDSTORE a flag change moves no counter: only a diff can find it
    return (
        status.uidvalidity != cursor.uidvalidity
        or status.uidnext != cursor.uidnext
        or status.messages != cursor.messages
        or (status.highestmodseq is not None and status.highestmodseq != cursor.highestmodseq)
    )


def _same_flags(a: list[str], b: list[str]) -> bool:
    return sorted(a) == sorted(b)


class ImapIncrementalActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn
    async def probe_account(self, inp: ProbeInput) -> ProbeResult:
        async with classified_errors():
            session = await self.deps.imap_session(inp.account_id)
            async with session:
                listed = [f for f in await session.list_folders() if f.selectable]
                async with self.deps.pool.acquire() as conn:
                    ids = await upsert_folders(
                        conn, inp.account_id, [FolderRow(f.name, f.delimiter, f.role, f.attributes) for f in listed]
                    )
                names = {f.name for f in listed}
                changed: list[int] = []
                for cursor in inp.cursors:
                    if cursor.folder.name not in names or not cursor.mirrored:
                        continue
                    if _moved(cursor, await session.status(cursor.folder.name)):
                        changed.append(cursor.folder.folder_id)
            removed = [c.folder for c in inp.cursors if c.folder.name not in names]
            async with self.deps.pool.acquire() as conn:
                for folder in removed:
                    await forget_folder(conn, folder.folder_id)
                # folders the mirror knows but neither the server nor the workflow does (deleted
                # while the workflow was not running)
                for name, folder_id in (await live_folders(conn, inp.account_id)).items():
                    if name not in names:
                        await forget_folder(conn, folder_id)
            return ProbeResult(
                folders=[FolderRef(folder_id=ids[f.name], name=f.name, role=f.role) for f in listed],
                changed=changed, removed=removed,
            )

    @activity.defn
    async def sync_folder_changes(self, inp: FolderChangesInput) -> FolderChangesResult:
        """New messages above the cursor's UIDNEXT, then flag changes and expunges below it.

        Heartbeat details carry the highest new UID persisted; a retried attempt continues above it.
        """
        info = activity.info()
        persisted_up_to = 0
        if info.heartbeat_details:
            with suppress(Exception):
                persisted_up_to = int(info.heartbeat_details[0])
        cursor = inp.cursor
        assert cursor.uidvalidity is not None and cursor.uidnext is not None
        result = FolderChangesResult(cursor=cursor.model_copy())
        async with classified_errors():
            session = await self.deps.imap_session(inp.account_id)
            async with session:
                changes = None
                if inp.check_flags and cursor.highestmodseq and await session.enable_qresync():
                    status, changes = await session.select_since(
                        cursor.folder.name, cursor.uidvalidity, cursor.highestmodseq
                    )
                else:
                    status = await session.select(cursor.folder.name)
                if status.uidvalidity != cursor.uidvalidity:
                    result.uidvalidity_changed = True
                    return result
                new_uids = sorted(u for u in await session.fetch_uids(cursor.uidnext, _MAX_UID) if u > persisted_up_to)
                if inp.check_flags:
                    await self._flags_and_expunges(session, inp, status, changes, len(new_uids), result)
                batch, rest = new_uids[: inp.max_new], new_uids[inp.max_new :]
                for i in range(0, len(batch), inp.chunk_size):
                    chunk = batch[i : i + inp.chunk_size]
                    # recorded as not stored on the last attempt: the folder's new mail goes on
                    fetched, unserved = await session.fetch_served(chunk, give_up=info.attempt >= UNSERVED_AFTER_ATTEMPTS)
                    result.unserved += unserved
                    parsed = parse_many([m.raw for m in fetched])
                    async with self.deps.pool.acquire() as conn:
                        written = await persist_page(
                            conn, inp.account_id, cursor.folder.folder_id, cursor.uidvalidity, fetched, parsed)
                    result.new += len(fetched)
                    result.bytes_delta += written.bytes
                    result.flagged_delta += written.parse_errors
                    activity.heartbeat(chunk[-1])
                result.more = bool(rest)
                if rest:
                    result.cursor.uidnext = batch[-1] + 1
                else:
                    result.cursor.uidnext = max([status.uidnext or 0, *(u + 1 for u in batch)]) or cursor.uidnext
                result.cursor.messages = status.messages
            async with self.deps.pool.acquire() as conn:
                await record_folder_state(
                    conn, cursor.folder.folder_id, uidvalidity=cursor.uidvalidity, uidnext=result.cursor.uidnext,
                    highestmodseq=result.cursor.highestmodseq, message_count=status.messages,
                )
                # deltas are exact only for a first attempt (a retried one may not see what an earlier
                # one wrote or removed); an unknown size is counted whole, once
                if cursor.stored_bytes is None or cursor.stored_flagged is None or info.attempt > 1:
                    result.stored_bytes, result.stored_flagged = await stored_totals(
                        conn, cursor.folder.folder_id, cursor.uidvalidity)
        return result

    async def _flags_and_expunges(
        self, session: ImapSession, inp: FolderChangesInput, status: FolderStatus, changes, new_count: int,  # type: ignore[no-untyped-def]
        result: FolderChangesResult,
    ) -> None:
        cursor = inp.cursor
        assert cursor.uidvalidity is not None and cursor.uidnext is not None
        folder_id, uidvalidity, top = cursor.folder.folder_id, cursor.uidvalidity, cursor.uidnext - 1
        flag_updates: list[tuple[int, list[str]]] = []
        gone: list[int] = []
        if changes is None and cursor.highestmodseq and session.has_condstore:
            changes = await session.changes_since(cursor.highestmodseq, max_uid=top)
        if changes is not None:  # CONDSTORE: only what changed since the stored mod-sequence
            # read back only the rows the server named: the pass stays small in a large folder
            reported = [m.uid for m in changes.changed] + list(changes.vanished)
            async with self.deps.pool.acquire() as conn:
                stored = await stored_flags_for(conn, folder_id, uidvalidity, reported)
                held = len(stored) if session.qresync_enabled else await stored_count(conn, folder_id, uidvalidity)
            flag_updates = [
                (m.uid, m.flags) for m in changes.changed if m.uid in stored and not _same_flags(m.flags, stored[m.uid])
            ]
            if session.qresync_enabled:
                gone = [u for u in changes.vanished if u in stored]
            elif status.messages != held + new_count:  # some stored UID no longer exists
                present = set(await session.uid_search_all())
                async with self.deps.pool.acquire() as conn:
                    gone = [u for u in await stored_flags(conn, folder_id, uidvalidity, 1, top) if u not in present]
            result.cursor.highestmodseq = changes.highestmodseq
        else:  # no CONDSTORE: compare every stored UID's flags, a page at a time
            async with self.deps.pool.acquire() as conn:
                stored = await stored_flags(conn, folder_id, uidvalidity, 1, top)
            uids = sorted(stored)
            for i in range(0, len(uids), _FLAG_PAGE):
                lo, hi = uids[i], uids[min(i + _FLAG_PAGE, len(uids)) - 1]
                current = {m.uid: m.flags for m in await session.flags_range(lo, hi)}
                for uid in uids[i : i + _FLAG_PAGE]:
                    if uid not in current:
                        gone.append(uid)
                    elif not _same_flags(current[uid], stored[uid]):
                        flag_updates.append((uid, current[uid]))
                activity.heartbeat()
            result.cursor.highestmodseq = status.highestmodseq
        async with self.deps.pool.acquire() as conn:
            result.updated = await update_flags(conn, folder_id, uidvalidity, flag_updates)
            removed = await remove_locations(conn, folder_id, uidvalidity, gone)
        result.expunged = removed.locations
        result.bytes_delta -= removed.bytes
        result.flagged_delta -= removed.flagged

    @activity.defn
    async def watch_mailbox(self, inp: WatchInput) -> WatchResult:
        """Hold IDLE (NOOP polling where the server has no IDLE) until the server reports a change."""
        async def beat() -> None:
            while True:
                activity.heartbeat()
                await asyncio.sleep(2.0)

        beater = asyncio.create_task(beat())
        try:
            async with classified_errors():
                session = await self.deps.imap_session(inp.account_id)
                async with session:
                    status = await session.select(inp.folder)
                    # a change between the last pass and this SELECT would raise no IDLE event
                    if inp.since is not None and inp.since.uidvalidity is not None and _moved(inp.since, status):
                        return WatchResult(changed=True, events=["changed before IDLE"])
                    events = await session.idle(inp.idle_seconds)
            return WatchResult(changed=events.changed, events=events.lines[:20])
        finally:
            beater.cancel()

    @activity.defn
    async def record_pass(self, inp: HistoryInput) -> None:
        r = inp.result
        finished = r.finished_at or r.started_at
        folder_errors = "; ".join(f"{f.folder}: {f.error}" for f in r.folders if f.error)
        rows = [HistoryRow(None, r.kind, r.started_at, finished, r.new, r.updated, r.expunged,
                           r.error or folder_errors or None)]
        rows += [
            HistoryRow(f.folder, "rebuild" if f.rebuilt else r.kind, r.started_at, finished, f.new, f.updated,
                       f.expunged, f.error)
            for f in r.folders if f.new or f.updated or f.expunged or f.error or f.rebuilt
        ]
        async with classified_errors():
            async with self.deps.pool.acquire() as conn:
                await append_history(conn, inp.account_id, rows)
