"""AccountSyncWorkflow: one per account (id `account-sync/<account id>`), the single writer for it.

A long-lived entity. First the initial sync: discover folders, fan out one FolderSyncWorkflow per
folder with at most `connection_limit` in flight. Then it loops: wait for a `mailbox_changed`
signal (IDLE watcher, gateway), a `sync_now` update or the poll interval, run an incremental pass,
and continue-as-new with its cursors after a bounded number of passes. Its state is the only
checkpoint. Auth failures park the account in `auth_failed` until `credentials_updated`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta

from temporalio import workflow
from temporalio.workflow import ParentClosePolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from workflows import patches
    from activities.accounts import AccountActivities
    from activities.gmail_sync import GmailActivities
    from activities.imap_incremental import ImapIncrementalActivities
    from activities.imap_sync import ImapActivities
    from workflows.folder_sync import LEND_SIGNAL, PROGRESS_SIGNAL, FolderSyncWorkflow, not_served_note
    from workflows.models import (
        AccountPhase, AccountProgress, AccountState, AccountSyncInput, AccountSyncResult, CredentialsExpired,
        DescribeAccountResult, DiscoverInput, DiscoverResult, FolderChanges, FolderChangesInput, FolderChangesResult, FolderCursor,
        FolderPhase, FolderProgress, FolderRef, FolderSyncInput, FolderSyncResult, HistoryInput,
        MailboxChanged, PassResult, ProbeInput, ProbeResult, SetStatusInput, WatchInput, WatchResult,
    )
    from workflows import search
    from workflows.gmail_flow import GmailFlow
    from workflows.policies import (
        ACTIVITY_RETRY, AUTH_TYPES, PASS_RETRY, PAUSE_AFTER_EXHAUSTED, SHORT_TIMEOUT, AccountAuthFailed, failure_message,
        failure_type,
    )

BACKFILL_SIGNAL = "backfill_progress"
_WATCH_ORDER = {"inbox": 0, "sent": 1, "flagged": 2, "archive": 3, "drafts": 4}
_KEEP_RESULTS = 20


def account_workflow_id(account_id: str) -> str:
    return f"account-sync/{account_id}"




@dataclass
class _Mirroring:
    """A folder being mirrored: its child workflow and the connections (pages at once) it has."""

    folder: FolderRef
    task: asyncio.Task[FolderSyncResult | None]
    lanes: int = 1


def _lanes(running: dict[str, _Mirroring]) -> int:
    """Connections the folders being mirrored hold."""
    return sum(m.lanes for m in running.values())


def _outcome_reported_elsewhere(child: asyncio.Future) -> None:  # type: ignore[type-arg]
    if not child.cancelled():
        child.exception()  # retrieved, so that asyncio does not log it as never retrieved


@workflow.defn
class AccountSyncWorkflow:
    @workflow.init
    def __init__(self, inp: AccountSyncInput) -> None:
        # state from the input before any signal or update of a continued run is handled
        self._progress: AccountProgress | None = None
        self._folders: dict[str, FolderProgress] = {}
        self._auth_error: str | None = None
        self._st = inp.state or AccountState()
        self._results: dict[int, PassResult] = {}
        self._pass_running = False
        self._credentials_gen = 0  # credentials_updated signals this run has received
        self._refused_gen = 0      # _credentials_gen when the credentials were last refused
        self._watches: dict[str, asyncio.Task[WatchResult]] = {}
        self._watch_gen: dict[str, int] = {}  # _credentials_gen when each watch started
        self._account_id = inp.account_id
        self._tuning = inp.tuning
        self._published: AccountPhase | None = None
        self._backfill: dict[str, FolderProgress] = {}
        self._backfill_changed = False

    # ---- queries, signals, updates -------------------------------------------------------------

    @workflow.query
    def progress(self) -> AccountProgress:
        if self._progress is None:
            return AccountProgress(account_id=self._account_id, phase=AccountPhase.starting)
        p = self._progress.model_copy()
        p.folders = list(self._folders.values())
        p.total = sum(f.total for f in p.folders)
        p.done = sum(f.done for f in p.folders)
        p.flagged = sum(f.flagged for f in p.folders)
        p.failed = sum(f.failed for f in p.folders)
        p.bytes = sum(f.bytes for f in p.folders)
        stamps = [f.updated_at for f in p.folders if f.updated_at]
        p.updated_at = max(stamps) if stamps else p.started_at
        if p.started_at and p.updated_at and p.done and not self._st.initial_done:
            elapsed = (p.updated_at - p.started_at).total_seconds() - self._st.parked_seconds
            if elapsed > 0:
                p.messages_per_second = round(p.done / elapsed, 1)
                p.eta_seconds = round(max(0, p.total - p.done) / p.messages_per_second, 1)
        elif self._st.initial_done:
            p.messages_per_second = self._st.initial_rate  # what the initial sync achieved
        errors = [f"{f.name}: {f.error}" for f in p.folders if f.error]
        p.last_error = self._auth_error or (errors[-1] if errors else p.last_error)
        st = self._st
        p.passes, p.last_pass, p.runs = st.passes, st.last_pass, st.runs
        p.backfill = list(self._backfill.values())
        p.backfill_pending = len(st.backfill_queue) + len(st.backfill_running)
        p.total_new, p.total_updated, p.total_expunged = st.total_new, st.total_updated, st.total_expunged
        if st.last_pass and st.last_pass.finished_at:
            p.lag_seconds = round(max(0.0, (workflow.now() - st.last_pass.finished_at).total_seconds()), 1)
        return p

    @workflow.signal(name=PROGRESS_SIGNAL)
    def folder_progress(self, update: FolderProgress) -> None:
        self._folders[update.name] = update

    @workflow.signal
    def mailbox_changed(self, change: MailboxChanged) -> None:
        self._st.changed = True

    @workflow.signal
    def pause(self) -> None:
        self._st.paused = True

    @workflow.signal
    def resume(self) -> None:
        self._st.paused = False

    @workflow.signal
    def resync(self) -> None:
        self._st.resync = True

    @workflow.signal
    def credentials_updated(self) -> None:
        self._credentials_gen += 1
        self._st.changed = True

    @workflow.signal
    def credentials_expired(self, expired: CredentialsExpired) -> None:
        self._auth_failed(expired.reason)

    def _stale_refusal(self, gen: int) -> bool:
        """A refusal of credentials that were replaced while the call ran: the new ones get a try
        instead (the activity read the old ones when it started)."""
        return self._credentials_gen != gen and workflow.patched(patches.STALE_REFUSALS_RETRIED)

    def _auth_failed(self, reason: str) -> None:
        """Record refused credentials. Only credentials signalled from now on can end the wait: new
        ones that arrived while other folders were still finishing (after the refusal) still count."""
        if self._auth_error is None:
            self._refused_gen = self._credentials_gen
        self._auth_error = reason

    @workflow.update
    async def sync_now(self) -> PassResult:
        """Run an incremental pass now (or join the one about to start) and return what it changed."""
        target = self._st.passes + (2 if self._pass_running else 1)
        self._st.changed = True
        await workflow.wait_condition(lambda: self._st.passes >= target or self._auth_error is not None)
        if target not in self._results:
            raise ApplicationError(self._auth_error or "the pass did not run", type="SyncNotRun")
        return self._results[target]

    @sync_now.validator
    def _validate_sync_now(self) -> None:
        if self._st.paused:
            raise ValueError("the account is paused: resume it first")
        if self._auth_error is not None:
            raise ValueError(f"authentication failed, waiting for new credentials: {self._auth_error}")
        if not self._st.initial_done:
            raise ValueError("the initial sync is still running")

    # a long initial sync may continue-as-new under it: clients send it again to the new run
    # (runtime.temporal.update_following_runs), so the unfinished handler is abandoned on purpose
    @workflow.update(unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON)
    async def wait_initial(self) -> AccountProgress:
        """Returns once the initial sync is complete (or the account's credentials were refused)."""
        await workflow.wait_condition(lambda: self._st.initial_done or self._auth_error is not None)
        if self._auth_error is not None and not self._st.initial_done:
            raise ApplicationError(f"authentication failed: {self._auth_error}", type="AuthFailed")
        return self.progress()

    # ---- the run --------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: AccountSyncInput) -> AccountSyncResult:
        self._account_id = inp.account_id
        st = self._st
        st.started_at = st.started_at or workflow.now()
        self._progress = AccountProgress(
            account_id=inp.account_id, phase=AccountPhase.discovering, started_at=st.started_at or workflow.now()
        )
        for c in st.cursors.values():  # a continued run shows its folders straight away
            self._folders[c.folder.name] = FolderProgress(
                name=c.folder.name, role=c.folder.role, phase=FolderPhase.done, total=c.messages or 0,
                done=c.messages or 0, bytes=c.stored_bytes or 0, flagged=c.stored_flagged or 0,
                failed=c.not_stored,
            )
        if st.provider is None:
            described: DescribeAccountResult = await self._activity(
                GmailActivities.describe_account, DiscoverInput(account_id=inp.account_id), SHORT_TIMEOUT
            )
            st.provider = described.provider
            self._progress.address = described.address
        if st.provider == "gmail":
            return await GmailFlow(self, inp).run()
        return await self.lifecycle(inp, lambda: self._initial(inp), lambda: self._live(inp))

    async def lifecycle(
        self, inp: AccountSyncInput, initial: Callable[[], Awaitable[None]], live: Callable[[], Awaitable[None]],
    ) -> AccountSyncResult:
        """Initial sync until it succeeds (an auth failure waits for new credentials, or ends a one-shot
        sync), then the live loop, which only ever continues-as-new. Same for every provider."""
        assert self._progress is not None
        while not self._st.initial_done:
            try:
                await initial()
            except AccountAuthFailed:
                if not inp.live:
                    return await self._fail_auth(inp)
                await self._wait_for_credentials(inp)
        if not inp.live:
            self._publish(AccountPhase.completed)
            return AccountSyncResult(account_id=inp.account_id, phase=self._progress.phase, progress=self.progress())
        while True:  # the live loop only ever continues-as-new; an auth failure escaping it waits here
            try:
                await live()
            except AccountAuthFailed:
                await self._wait_for_credentials(inp)

    async def _initial(self, inp: AccountSyncInput) -> None:
        assert self._progress is not None
        st = self._st
        self._progress.phase = AccountPhase.discovering
        discovered = await self._discover(inp)
        self._progress.address = discovered.address
        for f in discovered.folders:
            self._folders.setdefault(f.name, FolderProgress(name=f.name, role=f.role))
            st.cursors.setdefault(f.folder_id, FolderCursor(folder=f))
        self._publish(AccountPhase.initial)
        todo = [c.folder for c in st.cursors.values() if not c.mirrored]
        await self._mirror_folders(inp, todo, since=inp.since)
        if self._auth_error:
            raise AccountAuthFailed()
        failed = [f for f in self._folders.values() if f.phase == FolderPhase.failed]
        st.initial_rate = self.progress().messages_per_second
        st.initial_done = True
        if inp.since is not None and (inp.window_start is None or inp.window_start < inp.since):
            # usable now; the older mail follows in the background, newest first
            st.backfill_queue = [c.folder for c in st.cursors.values() if c.mirrored]
            st.backfill_since, st.backfill_before = inp.window_start, inp.since
        self._publish(AccountPhase.backfill if st.backfill_queue else AccountPhase.idle)  # usable from here
        await self._set_status(inp.account_id, "active", f"{len(failed)} folder(s) failed" if failed else None)

    async def _mirror_folders(
        self, inp: AccountSyncInput, folders: list[FolderRef], since: date | None = None
    ) -> list[FolderSyncResult]:
        """Full mirror of these folders (initial, new folder, UIDVALIDITY change) on at most
        `connection_limit` connections. Once no folder waits for one, an idle connection is lent to
        the folder with the most left, so one big folder (INBOX, All Mail) does not finish alone."""
        limit = max(1, inp.tuning.connection_limit)
        waiting = list(folders)
        running: dict[str, _Mirroring] = {}  # by child workflow id
        results: list[FolderSyncResult] = []
        while waiting or running:
            while waiting and _lanes(running) < limit and not self._auth_error:
                folder = waiting.pop(0)
                # nothing is lent to it before its own child reports (a row left `running` by an
                # earlier attempt would draw a lend to a child that does not exist yet)
                self._folders[folder.name] = FolderProgress(name=folder.name, role=folder.role)
                task = asyncio.create_task(self._sync_folder(inp, folder, since))
                running[self._folder_child_id(folder)] = _Mirroring(folder=folder, task=task)
            if self._auth_error:  # no point logging in again with a password the server just refused
                waiting.clear()
            if not running:
                break
            while (lend_to := self._lend_candidate(inp, running, limit, waiting)) is not None:
                running[lend_to].lanes += 1
                if not await self._lend(lend_to):
                    running[lend_to].lanes -= 1
                    break
            await workflow.wait_condition(
                lambda: any(m.task.done() for m in running.values())
                or self._lend_candidate(inp, running, limit, waiting) is not None
            )
            for child_id in [c for c, m in running.items() if m.task.done()]:
                result = running.pop(child_id).task.result()
                if result is not None:
                    results.append(result)
        for r in results:
            cursor = self._st.cursors.get(r.folder.folder_id)
            if cursor is not None and r.progress.phase == FolderPhase.done:
                cursor.uidvalidity, cursor.uidnext, cursor.highestmodseq = r.uidvalidity, r.uidnext, r.highestmodseq
                cursor.messages = r.progress.total
                cursor.mirrored = True
                # a folder placed partly from stored bodies did not parse them: the next pass recounts
                fresh = r.progress.reused == 0 and r.sizes_exact
                cursor.stored_bytes = r.progress.bytes if fresh else None
                cursor.stored_flagged = r.progress.flagged if fresh else None
                cursor.not_stored = r.progress.failed
        return results

    def _lend_candidate(
        self, inp: AccountSyncInput, running: dict[str, _Mirroring], limit: int, waiting: list[FolderRef]
    ) -> str | None:
        """The running folder an idle connection should go to: the most messages left per connection,
        and more left than its connections already have in flight (one page each)."""
        # only during the initial sync: later, backfills and IDLE watches hold connections of their own
        if self._st.initial_done or waiting or self._auth_error or _lanes(running) >= limit:
            return None
        best, best_share = None, 0.0
        for child_id, m in running.items():
            p = self._folders.get(m.folder.name)
            if m.task.done() or p is None or p.phase != FolderPhase.running:
                continue
            left = p.total - p.done
            if left > m.lanes * inp.tuning.page_size and left / m.lanes > best_share:
                best, best_share = child_id, left / m.lanes
        return best

    async def _lend(self, child_id: str) -> bool:
        try:
            await workflow.get_external_workflow_handle(child_id).signal(LEND_SIGNAL, 1)
        except Exception:  # the folder finished meanwhile
            workflow.logger.info("lending a connection to %s: it has finished", child_id)
            return False
        return True

    def _folder_child_id(self, folder: FolderRef) -> str:
        return f"{workflow.info().workflow_id}/folder/{folder.folder_id}"

    async def _live(self, inp: AccountSyncInput) -> None:
        assert self._progress is not None
        st = self._st
        passes_this_run = 0
        while True:
            due = passes_this_run >= inp.tuning.passes_per_run or workflow.info().is_continue_as_new_suggested()
            if await self._between_passes(inp, due):
                continue
            try:
                if st.resync:
                    st.resync = False
                    await self._resync(inp)
                else:
                    self._progress.phase = AccountPhase.syncing
                    await self._incremental_pass(inp)
            except AccountAuthFailed:
                continue
            passes_this_run += 1
            await self._launch_backfills(inp)
            self._publish(AccountPhase.backfill if st.backfill_queue or st.backfill_running else AccountPhase.idle)
            if passes_this_run >= inp.tuning.passes_per_run:
                continue
            self._ensure_watch(inp)
            try:
                await workflow.wait_condition(
                    lambda: st.changed or st.paused or st.resync or self._auth_error is not None
                    or self._watch_done() or self._backfill_changed,
                    timeout=timedelta(seconds=inp.tuning.poll_seconds),
                )
            except asyncio.TimeoutError:
                pass
            self._reap_watch()

    async def _between_passes(self, inp: AccountSyncInput, due_for_new_run: bool) -> bool:
        """Continue-as-new when due; wait out an auth failure or a pause. True: start the loop over."""
        st = self._st
        if due_for_new_run:
            # let answered sync_now calls return; one still waiting for a pass (it set `changed`)
            # gets that pass in this run first
            await workflow.wait_condition(lambda: workflow.all_handlers_finished() or st.changed)
            if workflow.all_handlers_finished():
                await self._stop_watch()
                st.runs += 1
                workflow.continue_as_new(inp.model_copy(update={"state": st}))
        if self._auth_error is not None:
            await self._wait_for_credentials(inp)
            return True
        if st.paused:
            self._publish(AccountPhase.paused)
            await self._stop_watch()
            await self._set_status(inp.account_id, "paused", None)  # `account list` says so too
            await workflow.wait_condition(lambda: not st.paused)
            await self._set_status(inp.account_id, "active", None)
            st.changed = True
            return True
        return False

    async def _incremental_pass(self, inp: AccountSyncInput) -> PassResult:
        st = self._st
        st.changed = False
        self._pass_running = True
        result = PassResult(seq=st.passes + 1, started_at=workflow.now())
        try:
            try:
                # not retried forever: a pass that cannot reach the server ends with its error (in
                # history and in sync_now's answer) and the next pass tries again
                probe: ProbeResult = await self._activity(
                    ImapIncrementalActivities.probe_account,
                    ProbeInput(account_id=inp.account_id, cursors=list(st.cursors.values())), SHORT_TIMEOUT,
                    retry_forever=False,
                )
            except ActivityError as err:
                result.error = failure_message(err)
                assert self._progress is not None
                self._progress.last_error = result.error
                probe = ProbeResult(folders=[], changed=[], removed=[])
                probe_failed = True
            else:
                probe_failed = False
            for gone in probe.removed:
                st.cursors.pop(gone.folder_id, None)
                self._folders.pop(gone.name, None)
                result.folders_removed.append(gone.name)
            fresh = [f for f in probe.folders if f.folder_id not in st.cursors]
            for f in fresh:
                st.cursors[f.folder_id] = FolderCursor(folder=f)
                self._folders[f.name] = FolderProgress(name=f.name, role=f.role)
                result.folders_added.append(f.name)
            rebuild = [] if probe_failed else [c.folder for c in st.cursors.values() if not c.mirrored]
            # folders whose stored size is unknown (after a rebuild or a backfill) are looked at too: recounted
            recount = [] if probe_failed or not workflow.patched(patches.STORED_SIZE_RECOUNT) else [
                i for i, c in st.cursors.items() if c.mirrored and c.stored_bytes is None and i not in probe.changed]
            for folder_id in [*probe.changed, *recount]:
                cursor = st.cursors.get(folder_id)
                if cursor is None or not cursor.mirrored:
                    continue
                changes = await self._folder_changes(inp, cursor)
                if changes is None:
                    cursor.mirrored = False
                    rebuild.append(cursor.folder)
                else:
                    result.folders.append(changes)
            if rebuild:
                for r in await self._mirror_folders(inp, rebuild):
                    result.folders.append(FolderChanges(
                        folder=r.folder.name, new=r.progress.done - r.progress.reused, rebuilt=True,
                        reused=r.progress.reused, downloaded_bytes=r.progress.downloaded,
                        error=r.progress.error if r.progress.phase == FolderPhase.failed else None,
                    ))
            if self._auth_error:
                raise AccountAuthFailed()
        except AccountAuthFailed:
            # in the audit log too, before the account parks: `sync history` says why passes stopped
            if workflow.patched(patches.RECORD_REFUSED_PASS):
                result.error = f"authentication failed: {self._auth_error}"
                await self._record_pass(inp, result)
            raise
        finally:
            self._pass_running = False
        await self._record_pass(inp, result)
        return result

    async def _record_pass(self, inp: AccountSyncInput, result: PassResult) -> None:
        result.finished_at = workflow.now()
        await self._activity(
            ImapIncrementalActivities.record_pass, HistoryInput(account_id=inp.account_id, result=result), SHORT_TIMEOUT
        )
        self._count_pass(result)

    def _count_pass(self, result: PassResult) -> None:
        """A finished pass: counters, last pass, and the answer a waiting `sync_now` returns."""
        st = self._st
        st.passes = result.seq
        st.last_pass = result
        st.total_new += result.new
        st.total_updated += result.updated
        st.total_expunged += result.expunged
        self._results[result.seq] = result
        for old in [k for k in self._results if k <= result.seq - _KEEP_RESULTS]:
            del self._results[old]

    async def _folder_changes(self, inp: AccountSyncInput, cursor: FolderCursor) -> FolderChanges | None:
        """Apply one folder's changes; None when its UIDVALIDITY moved and it must be rebuilt."""
        changes = FolderChanges(folder=cursor.folder.name)
        check_flags = True
        while True:
            epoch = cursor.size_epoch
            try:
                r: FolderChangesResult = await self._activity(
                    ImapIncrementalActivities.sync_folder_changes,
                    FolderChangesInput(
                        account_id=inp.account_id, cursor=cursor, max_new=inp.tuning.page_size,
                        check_flags=check_flags, chunk_size=inp.tuning.chunk_size,
                    ),
                    timedelta(seconds=inp.tuning.page_timeout_seconds), retry_forever=False,
                    heartbeat=timedelta(seconds=inp.tuning.heartbeat_seconds),
                )
            except ActivityError as err:
                # an attempt may have removed or written part of the changes: the size is recounted
                cursor.stored_bytes = cursor.stored_flagged = None
                if failure_type(err) == "FolderGone":
                    return changes  # the next probe sees it gone
                changes.error = failure_message(err)
                return changes
            if r.uidvalidity_changed:
                return None
            cursor.uidnext, cursor.highestmodseq, cursor.messages = r.cursor.uidnext, r.cursor.highestmodseq, r.cursor.messages
            if cursor.size_epoch != epoch:
                pass  # a backfill finished meanwhile: the size stays unknown, the next pass recounts it
            elif r.stored_bytes is not None:
                cursor.stored_bytes, cursor.stored_flagged = r.stored_bytes, r.stored_flagged
            elif cursor.stored_bytes is not None and cursor.stored_flagged is not None:
                cursor.stored_bytes += r.bytes_delta
                cursor.stored_flagged += r.flagged_delta
            changes.new += r.new
            changes.updated += r.updated
            changes.expunged += r.expunged
            if r.unserved:  # counted as not stored, named in the pass's history
                cursor.not_stored += len(r.unserved)
                changes.error = not_served_note(len(r.unserved), r.unserved)
            progress = self._folders.get(cursor.folder.name)
            if progress is not None:
                progress.total = cursor.messages or 0
                progress.done, progress.failed = max(0, progress.total - cursor.not_stored), cursor.not_stored
                progress.bytes, progress.flagged = cursor.stored_bytes or 0, cursor.stored_flagged or 0
                progress.updated_at = workflow.now()
            if not r.more:
                return changes
            check_flags = False

    async def _resync(self, inp: AccountSyncInput) -> None:
        """Full re-mirror of every folder; bodies already stored are matched by sha256, not rewritten."""
        assert self._progress is not None
        started = workflow.now()
        self._publish(AccountPhase.initial)
        for c in self._st.cursors.values():
            c.mirrored = False
            self._folders[c.folder.name] = FolderProgress(name=c.folder.name, role=c.folder.role)
        self._progress.started_at = started
        result = PassResult(seq=self._st.passes + 1, kind="resync", started_at=started)
        for r in await self._mirror_folders(inp, [c.folder for c in self._st.cursors.values()]):
            result.folders.append(FolderChanges(
                folder=r.folder.name, new=r.progress.done - r.progress.reused, rebuilt=True,
                reused=r.progress.reused, downloaded_bytes=r.progress.downloaded,
            ))
        await self._record_pass(inp, result)

    # ---- backfill -------------------------------------------------------------------------------

    @workflow.signal(name=BACKFILL_SIGNAL)
    def backfill_progress(self, update: FolderProgress) -> None:
        self._backfill[update.name] = update
        st = self._st
        if update.name not in st.backfill_running:
            return
        if update.phase in (FolderPhase.done, FolderPhase.failed):
            st.backfill_running.remove(update.name)
            self._backfill_changed = True
            # older mail is in the folder's mirror now (part of it, if the backfill failed): the next pass
            # recounts (adding the backfill's bytes could count twice what a pass meanwhile recounted)
            for c in st.cursors.values():
                if c.folder.name == update.name:
                    c.stored_bytes = c.stored_flagged = None
                    c.size_epoch += 1
        elif update.phase == FolderPhase.pending:  # stopped unfinished (credentials): queued again, first
            st.backfill_running.remove(update.name)
            folder = next((c.folder for c in st.cursors.values() if c.folder.name == update.name), None)
            if folder is not None:
                st.backfill_queue.insert(0, folder)
            # not a refusal of the account's credentials by itself: the report may come late, after new
            # credentials were stored; the next pass finds out (and backfills relaunch only after a pass)
            self._backfill_changed = True

    async def _launch_backfills(self, inp: AccountSyncInput) -> None:
        """Older mail, folder by folder, beside the live loop: one connection stays for the passes.

        The children are abandoned on continue-as-new and keep running; they report to the account
        workflow's id, so the next run hears them finish.
        """
        st = self._st
        self._backfill_changed = False
        while st.backfill_queue and len(st.backfill_running) < max(1, inp.tuning.connection_limit - 1):
            folder = st.backfill_queue.pop(0)
            if folder.folder_id not in st.cursors:
                continue  # deleted on the server since
            st.backfill_running.append(folder.name)  # before the await: its first report may come at once
            try:
                child = await workflow.start_child_workflow(
                    FolderSyncWorkflow.run,
                    FolderSyncInput(
                        account_id=inp.account_id, folder=folder, parent_workflow_id=workflow.info().workflow_id,
                        tuning=inp.tuning, since=st.backfill_since, before=st.backfill_before,
                        progress_signal=BACKFILL_SIGNAL,
                    ),
                    id=f"{workflow.info().workflow_id}/backfill/{folder.folder_id}",
                    parent_close_policy=ParentClosePolicy.ABANDON,
                )
            except WorkflowAlreadyStartedError:  # its previous child has not closed yet: after the next pass
                st.backfill_running.remove(folder.name)
                st.backfill_queue.insert(0, folder)
                return
            # its outcome arrives as a backfill_progress signal (also in later runs): the handle's is not needed
            child.add_done_callback(_outcome_reported_elsewhere)

    # ---- the IDLE watcher -----------------------------------------------------------------------

    def _watched_folders(self, inp: AccountSyncInput) -> list[str]:
        """INBOX first, then the folders people read most, up to the connection limit less the one
        the passes use (at least the INBOX)."""
        def rank(c: FolderCursor) -> tuple[int, str]:
            inbox = c.folder.role == "inbox" or c.folder.name.upper() == "INBOX"
            return (0 if inbox else _WATCH_ORDER.get(c.folder.role or "", 9), c.folder.name)

        cursors = sorted((c for c in self._st.cursors.values() if c.mirrored), key=rank)
        return [c.folder.name for c in cursors[: max(1, inp.tuning.connection_limit - 1)]]

    def _ensure_watch(self, inp: AccountSyncInput) -> None:
        if not inp.tuning.watch:
            return
        by_name = {c.folder.name: c for c in self._st.cursors.values()}
        for name in self._watched_folders(inp):
            if name in self._watches:
                continue
            self._watch_gen[name] = self._credentials_gen
            self._watches[name] = asyncio.ensure_future(workflow.execute_activity_method(
                ImapIncrementalActivities.watch_mailbox,
                WatchInput(
                    account_id=inp.account_id, folder=name, idle_seconds=inp.tuning.idle_seconds,
                    since=by_name.get(name),
                ),
                task_queue=f"{workflow.info().task_queue}.watch",  # worker.watch_queue
                start_to_close_timeout=timedelta(seconds=inp.tuning.idle_seconds + 120),
                heartbeat_timeout=timedelta(seconds=30), retry_policy=ACTIVITY_RETRY,
            ))

    def _watch_done(self) -> bool:
        return any(task.done() for task in self._watches.values())

    def _reap_watch(self) -> None:
        for name, task in [(n, t) for n, t in self._watches.items() if t.done()]:
            del self._watches[name]
            try:
                if task.result().changed:
                    self._st.changed = True
            except ActivityError as err:  # the poll interval still covers the account; retried next idle
                if failure_type(err) in AUTH_TYPES:
                    if not self._stale_refusal(self._watch_gen.get(name, self._credentials_gen)):
                        self._auth_failed(failure_message(err))
                elif self._progress is not None:
                    self._progress.last_error = f"watch {name}: {failure_message(err)}"

    async def _stop_watch(self) -> None:
        tasks, self._watches = list(self._watches.values()), {}
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, ActivityError):
                pass

    # ---- failures and bookkeeping -----------------------------------------------------------------

    def _publish(self, phase: AccountPhase) -> None:
        """Set the phase; stable phases also go to the search attributes (passes are too brief)."""
        assert self._progress is not None
        self._progress.phase = phase
        if not self._tuning.search_attributes or phase == self._published:
            return
        self._published = phase
        workflow.upsert_search_attributes([
            search.ACCOUNT_ID.value_set(self._account_id),
            search.ADDRESS.value_set(self._progress.address or ""),
            search.PROVIDER.value_set(self._st.provider or "imap"),
            search.PHASE.value_set(phase.value),
        ])

    async def _wait_for_credentials(self, inp: AccountSyncInput) -> None:
        assert self._progress is not None
        if not workflow.patched(patches.CREDENTIALS_FLAG_AT_REFUSAL):
            self._refused_gen = self._credentials_gen  # how runs started before the patch decided
        await self._stop_watch()
        phase = self._auth_phase()
        self._publish(phase)
        reason = self._auth_error or "authentication failed"
        await self._set_status(inp.account_id, phase.value, reason)
        parked = workflow.now()
        await workflow.wait_condition(lambda: self._credentials_gen > self._refused_gen)
        self._st.parked_seconds += (workflow.now() - parked).total_seconds()
        self._auth_error = None
        self._progress.last_error = None
        await self._set_status(inp.account_id, "active", None)

    async def _discover(self, inp: AccountSyncInput) -> DiscoverResult:
        while True:
            gen = self._credentials_gen
            try:
                return await workflow.execute_activity_method(
                    ImapActivities.discover_folders, DiscoverInput(account_id=inp.account_id),
                    start_to_close_timeout=SHORT_TIMEOUT, retry_policy=ACTIVITY_RETRY,
                )
            except ActivityError as err:
                assert self._progress is not None
                if failure_type(err) in AUTH_TYPES:
                    if self._stale_refusal(gen):
                        continue
                    self._auth_failed(failure_message(err))
                    raise AccountAuthFailed() from err
                self._progress.last_error = failure_message(err)
                await workflow.sleep(PAUSE_AFTER_EXHAUSTED)

    async def _activity(self, fn, arg, timeout: timedelta, *, retry_forever: bool = True,  # type: ignore[no-untyped-def]
                        heartbeat: timedelta | None = None):
        """Run an activity; auth failures park the account, other failures wait and retry."""
        while True:
            gen = self._credentials_gen
            try:
                return await workflow.execute_activity_method(
                    fn, arg, start_to_close_timeout=timeout, heartbeat_timeout=heartbeat,
                    retry_policy=ACTIVITY_RETRY if retry_forever else PASS_RETRY,
                )
            except ActivityError as err:
                if failure_type(err) in AUTH_TYPES:
                    if self._stale_refusal(gen):
                        continue
                    self._auth_failed(failure_message(err))
                    raise AccountAuthFailed() from err
                if not retry_forever:
                    raise
                assert self._progress is not None
                self._progress.last_error = failure_message(err)
                await workflow.sleep(PAUSE_AFTER_EXHAUSTED)

    async def _sync_folder(
        self, inp: AccountSyncInput, folder: FolderRef, since: date | None = None
    ) -> FolderSyncResult | None:
        while True:
            gen = self._credentials_gen
            try:
                result = await workflow.execute_child_workflow(
                    FolderSyncWorkflow.run,
                    FolderSyncInput(
                        account_id=inp.account_id, folder=folder, parent_workflow_id=workflow.info().workflow_id,
                        tuning=inp.tuning, reuse_bodies=self._st.initial_done, since=since,
                    ),
                    id=self._folder_child_id(folder),
                )
                break
            except ChildWorkflowError as err:
                if failure_type(err) in AUTH_TYPES and self._stale_refusal(gen) and not self._auth_error:
                    continue  # the folder again, with the credentials stored meanwhile
                return self._folder_failed(folder, err)
        self._folders[folder.name] = result.progress
        return result

    def _folder_failed(self, folder: FolderRef, err: ChildWorkflowError) -> FolderSyncResult | None:
        message = failure_message(err)
        if failure_type(err) in AUTH_TYPES:
            self._auth_failed(message)
            return None
        progress = self._folders.get(folder.name) or FolderProgress(name=folder.name)
        progress.phase, progress.error = FolderPhase.failed, message
        self._folders[folder.name] = progress
        return FolderSyncResult(folder=folder, progress=progress)

    def _auth_phase(self) -> AccountPhase:
        """Gmail grants expire or get revoked (OAuth); IMAP passwords are refused."""
        return AccountPhase.auth_expired if self._st.provider == "gmail" else AccountPhase.auth_failed

    async def _fail_auth(self, inp: AccountSyncInput) -> AccountSyncResult:
        assert self._progress is not None
        phase = self._auth_phase()
        self._publish(phase)
        reason = self._auth_error or "authentication failed"
        await self._set_status(inp.account_id, phase.value, reason)
        raise ApplicationError(
            f"account {inp.account_id}: authentication failed, waiting for new credentials: {reason}",
            type="AuthFailed", non_retryable=True,
        )

    async def _set_status(self, account_id: str, status: str, reason: str | None) -> None:
        # retried until it lands: a database outage must not end the workflow (and lose its state)
        await self._activity(
            AccountActivities.set_account_status,
            SetStatusInput(account_id=account_id, status=status, reason=reason), SHORT_TIMEOUT,
        )
