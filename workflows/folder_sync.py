"""FolderSyncWorkflow: mirrors one IMAP folder, newest page first; its state is the folder's checkpoint."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from workflows import patches
    from activities.imap_sync import ImapActivities
    from workflows.models import (
        FolderPhase, FolderProgress, FolderState, FolderSyncInput, FolderSyncResult, PageSummary,
        PlanPagesInput, PlanPagesResult, SyncPageInput, UidRange,
    )
    from workflows.policies import (
        ACTIVITY_RETRY, PAUSE_AFTER_EXHAUSTED, SHORT_TIMEOUT,
        failure_message, failure_type,
    )

PROGRESS_SIGNAL = "folder_progress"
LEND_SIGNAL = "lend_connections"
_REPORT_EVERY = timedelta(seconds=2)
_REPORT_SAME_ERROR_EVERY = timedelta(minutes=10)  # a page failing for hours must not flood the parent


class _Restart(Exception):
    """UIDVALIDITY moved under us: start the folder over."""


class _Stuck(Exception):
    """A page has failed for so long that the history is due to continue-as-new under it."""


@workflow.defn
class FolderSyncWorkflow:
    def __init__(self) -> None:
        self._state: FolderState | None = None
        self._last_report = None
        self._lent = 0  # lanes signalled but not yet folded into the state
        self._abandoning = False

    @workflow.query
    def progress(self) -> FolderProgress | None:
        return self._state.progress if self._state else None

    @workflow.signal(name=LEND_SIGNAL)
    def lend_connections(self, count: int) -> None:
        """The account workflow has idle connections (no folder waits for one): use them for more pages."""
        self._lent += count

    def _fold_lent(self, st: FolderState) -> None:
        st.lanes, self._lent = st.lanes + self._lent, 0

    @workflow.run
    async def run(self, inp: FolderSyncInput) -> FolderSyncResult:
        st = inp.state or FolderState(progress=FolderProgress(name=inp.folder.name, role=inp.folder.role))
        self._state = st
        st.progress.phase = FolderPhase.running
        pages_this_run = 0
        # Up to `st.lanes` pages at once, each its own activity and IMAP connection. A page runs to
        # completion before it leaves `pending`, so pending is the checkpoint whatever finishes first.
        running: dict[int, asyncio.Task[PageSummary]] = {}  # page.hi → its sync
        while True:
            self._fold_lent(st)
            try:
                if not st.planned or (not st.pending and st.more_below is not None):
                    await self._plan(inp, st)  # nothing runs here: planning needs every page settled
                if not st.pending:
                    break
                due = pages_this_run > 0 and (
                    pages_this_run >= inp.tuning.pages_per_run or workflow.info().is_continue_as_new_suggested()
                )
                if due and not running:
                    await self._report(inp, force=True)
                    self._fold_lent(st)
                    workflow.continue_as_new(inp.model_copy(update={"state": st}))
                if not due:
                    for page in st.pending:
                        if len(running) >= st.lanes:
                            break
                        if page.hi not in running:
                            running[page.hi] = asyncio.create_task(self._sync_page(inp, st, page))
                await workflow.wait_condition(
                    lambda: any(t.done() for t in running.values()) or (self._lent > 0 and not due)
                )
                settled = [hi for hi, t in running.items() if t.done()]
                # completed pages first: a failure raised below (a restart, a stuck page) must not drop them
                settled.sort(key=lambda hi: running[hi].cancelled() or running[hi].exception() is not None)
                for hi in settled:
                    summary = running.pop(hi).result()
                    page = next(p for p in st.pending if p.hi == hi)
                    st.pending.remove(page)
                    st.progress.done += summary.fetched
                    st.progress.total -= min(summary.vanished, page.count)
                    st.progress.flagged += summary.parse_errors
                    st.progress.bytes += summary.bytes + summary.reused_bytes
                    st.progress.downloaded += summary.bytes + summary.header_bytes
                    st.progress.reused += summary.reused
                    st.progress.failed += len(summary.unserved)
                    st.unserved = (st.unserved + summary.unserved)[:10]
                    st.sizes_exact = st.sizes_exact and summary.resumed_from is None
                    st.progress.error = _unserved_error(st)
                    st.pages_done += 1
                    pages_this_run += 1
                await self._report(inp)
            except _Stuck:
                # pages still pending stay in the state: the next run retries them, with a short history
                await self._abandon(running)
                await self._report(inp, force=True)
                self._fold_lent(st)
                workflow.continue_as_new(inp.model_copy(update={"state": st}))
            except _Restart:
                await self._abandon(running)
                st = self._state = FolderState(
                    progress=FolderProgress(name=inp.folder.name, role=inp.folder.role, phase=FolderPhase.running),
                    restarts=st.restarts + 1, lanes=st.lanes,
                )
                continue
            except _FolderGone as gone:
                await self._abandon(running)
                st.progress.phase = FolderPhase.failed
                st.progress.error = f"folder disappeared on the server: {gone}"
                st.pending.clear()
                await self._report(inp, force=True)
                return self._result(inp, st)
            except ApplicationError as err:
                # the account's credentials (or the account) failed, not this folder: it is left
                # unfinished, and the account workflow runs it again once the account works
                await self._abandon(running)
                st.progress.phase, st.progress.error = FolderPhase.pending, err.message
                try:
                    await self._report(inp, force=True)
                except Exception:  # the parent is gone: nobody to tell
                    workflow.logger.info("final report of %s not delivered", inp.folder.name)
                raise
            except BaseException:
                await self._abandon(running)
                raise
        st.progress.phase = FolderPhase.done
        st.progress.total = max(st.progress.total, st.progress.done)
        st.progress.error = _unserved_error(st)
        await self._report(inp, force=True)
        return self._result(inp, st)

    async def _abandon(self, running: dict[int, asyncio.Task[PageSummary]]) -> None:
        """Cancel the pages still in flight and wait until their activities have stopped: a page of the
        old UIDVALIDITY must not write after the restart's plan, nor hold a connection the account
        workflow has handed to another folder."""
        self._abandoning = True
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        running.clear()
        self._abandoning = False

    def _result(self, inp: FolderSyncInput, st: FolderState) -> FolderSyncResult:
        return FolderSyncResult(
            folder=inp.folder, progress=st.progress, uidvalidity=st.uidvalidity, uidnext=st.uidnext,
            highestmodseq=st.highestmodseq, sizes_exact=st.sizes_exact,
        )

    async def _plan(self, inp: FolderSyncInput, st: FolderState) -> None:
        plan: PlanPagesResult = await self._retrying(
            ImapActivities.plan_folder_pages,
            PlanPagesInput(
                account_id=inp.account_id, folder=inp.folder, expected_uidvalidity=st.uidvalidity,
                below_uid=st.more_below if st.planned else None, page_size=inp.tuning.page_size,
                since=inp.since, before=inp.before,
            ),
            SHORT_TIMEOUT, None, inp,
        )
        if not st.planned:
            st.uidvalidity, st.uidnext, st.highestmodseq = plan.uidvalidity, plan.uidnext, plan.highestmodseq
            st.progress.total = plan.matching
            st.planned = True
        st.pending.extend(plan.pages)
        st.more_below = plan.more_below
        await self._report(inp, force=True)

    async def _sync_page(self, inp: FolderSyncInput, st: FolderState, page: UidRange) -> PageSummary:
        assert st.uidvalidity is not None
        return await self._retrying(
            ImapActivities.sync_page,
            SyncPageInput(
                account_id=inp.account_id, folder=inp.folder, uidvalidity=st.uidvalidity, page=page,
                chunk_size=inp.tuning.chunk_size, reuse_bodies=inp.reuse_bodies,
            ),
            timedelta(seconds=inp.tuning.page_timeout_seconds), timedelta(seconds=inp.tuning.heartbeat_seconds), inp,
        )

    async def _retrying(self, fn, arg, timeout, heartbeat, inp: FolderSyncInput):  # type: ignore[no-untyped-def]
        """Run an activity; once its retries are spent, record the error, wait, and go again."""
        while True:
            try:
                return await workflow.execute_activity_method(
                    fn, arg, start_to_close_timeout=timeout, heartbeat_timeout=heartbeat,
                    retry_policy=ACTIVITY_RETRY,
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            except ActivityError as err:
                if isinstance(err.cause, CancelledError) or self._abandoning:  # another page ends the folder
                    raise
                kind = failure_type(err)
                if kind == "UidValidityChanged":
                    raise _Restart() from err
                if kind == "FolderGone":
                    raise _FolderGone(failure_message(err)) from err
                if kind in ("AuthError", "AccountNotFound", "SecretKeyError"):
                    raise ApplicationError(failure_message(err), type=kind, non_retryable=True) from err
                assert self._state is not None
                message = failure_message(err)
                changed = message != self._state.progress.error
                self._state.progress.error = message
                stale = self._last_report is None or workflow.now() - self._last_report >= _REPORT_SAME_ERROR_EVERY
                throttled = workflow.patched(patches.THROTTLED_ERROR_REPORTS)
                if changed or stale or not throttled:
                    await self._report(inp, force=True)
                await workflow.sleep(PAUSE_AFTER_EXHAUSTED)
                if throttled and workflow.info().is_continue_as_new_suggested():
                    raise _Stuck() from err

    async def _report(self, inp: FolderSyncInput, *, force: bool = False) -> None:
        """Tell the account workflow how far we are; throttled so its history stays small."""
        assert self._state is not None
        now = workflow.now()
        if not force and self._last_report is not None and now - self._last_report < _REPORT_EVERY:
            return
        self._last_report = now
        self._state.progress.updated_at = now
        handle = workflow.get_external_workflow_handle(inp.parent_workflow_id)
        await handle.signal(inp.progress_signal, self._state.progress)


class _FolderGone(Exception):
    pass


def not_served_note(count: int, uids: list[int]) -> str:
    """Names messages the server listed but would not serve (verify lists them missing; a resync asks
    for them again)."""
    return f"the server would not serve {count} message(s): UID {','.join(map(str, uids[:10]))}"


def _unserved_error(st: FolderState) -> str | None:
    """The folder's error once a page settles: kept while any message was not served."""
    return not_served_note(st.progress.failed, st.unserved) if st.progress.failed else None
