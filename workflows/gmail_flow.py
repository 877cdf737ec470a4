"""The Gmail decisions of AccountSyncWorkflow: full listing fanned out to ThreadSyncWorkflow children,
history-based passes, resync on an expired historyId, the daily watch renewal.

Runs inside the account workflow (same id, signals, updates and `progress` query as IMAP accounts);
deterministic, no I/O. Quota: the workflow is the only thing that starts Gmail activities for the
account, and it knows what runs at once: at most `gmail_children` children (one activity each) plus
the listing during a full listing, or one activity alone otherwise. It gives each a share of
`gmail_quota` so the shares add up to the account's limit whichever workers they run on — no shared
bucket to coordinate. Each share adapts on 429 (halves, honours Retry-After, recovers) in its session.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from activities.gmail_sync import GmailActivities
    from activities.imap_incremental import ImapIncrementalActivities
    from workflows.models import (
        AccountPhase, AccountSyncInput, AccountSyncResult, FolderChanges, FolderPhase, FolderProgress,
        GmailFetchResult, GmailHistoryInput, GmailHistoryResult, GmailListInput, GmailListResult,
        GmailReconcileInput, GmailReconcileResult, GmailStartInput, GmailStartResult, GmailWatchInput,
        GmailWatchResult, HistoryInput, PassResult, ThreadBatch, ThreadSyncInput,
    )
    from workflows.policies import (
        AUTH_TYPES, PASS_RETRY, PAUSE_AFTER_EXHAUSTED, SHORT_TIMEOUT, AccountAuthFailed, failure_message, failure_type,
    )
    from mail.windows import gmail_epoch, gmail_since
    from workflows.thread_sync import ThreadSyncWorkflow

if TYPE_CHECKING:
    from workflows.account_sync import AccountSyncWorkflow

ALL_MAIL = "All Mail"
OLDER = "All Mail (older)"
_WATCH_RETRY = timedelta(hours=1)
# Continue-as-new during a long listing before the history gets heavy (children cost ~10 events each).
_LISTING_HISTORY_LIMIT = 20_000
_LISTING_SHARE = 0.05


class GmailFlow:
    def __init__(self, wf: AccountSyncWorkflow, inp: AccountSyncInput) -> None:
        self.wf = wf
        self.inp = inp
        self.st = wf._st
        self.g = wf._st.gmail

    # ---- shares of the account's quota -------------------------------------------------------------

    def _child_share(self) -> float:
        """Units/s of one child's activity: the fetches get the quota but a small listing share."""
        return self.inp.tuning.gmail_quota * (1 - _LISTING_SHARE) / max(1, self.inp.tuning.gmail_children)

    def _listing_share(self) -> float:
        """The listing runs beside the children but costs 5 units per 500 messages: a sliver is plenty."""
        return self.inp.tuning.gmail_quota * _LISTING_SHARE

    def _solo_share(self) -> float:
        """Activities that never overlap children or each other (profile, history pass, reconcile, watch)."""
        return self.inp.tuning.gmail_quota

    # ---- the run ----------------------------------------------------------------------------------

    async def run(self) -> AccountSyncResult:
        self._show()
        return await self.wf.lifecycle(self.inp, self._initial, self._live)

    def _show(self) -> FolderProgress:
        """The progress rows of a Gmail account: "All Mail" (labels are not folders: a message has
        several) and, while a --since sync backfills, "All Mail (older)"."""
        g = self.g
        row = self.wf._folders.get(ALL_MAIL) or FolderProgress(name=ALL_MAIL, role="all")
        if g.listing:  # what this listing has mirrored (or found stored) out of the mailbox
            row.total, row.done = max(g.messages_total, g.synced), g.synced
            row.bytes = g.stored_bytes + g.bytes
        elif g.backfill_query:  # usable: the window is mirrored; the older part shows below
            row.total = row.done = g.window_synced
            row.bytes = g.window_bytes
        else:  # the mirror as last counted
            row.total = row.done = g.stored
            row.bytes = g.stored_bytes
        row.failed = g.refused
        row.phase = FolderPhase.running if g.listing else FolderPhase.done
        row.updated_at = workflow.now()
        self.wf._folders[ALL_MAIL] = row
        older = self.wf._backfill
        if g.backfill_query or OLDER in older:
            done = g.synced - g.window_synced
            older[OLDER] = FolderProgress(
                name=OLDER, role="all", phase=FolderPhase.running if g.backfill_query else FolderPhase.done,
                done=done, total=max(done, g.messages_total - g.window_synced), bytes=g.bytes - g.window_bytes,
                updated_at=workflow.now(),
            )
        return row

    def _refusals(self, count: int, reason: str | None) -> None:
        """Messages Gmail keeps refusing: counted as failed, and said in the last error until served."""
        g, progress = self.g, self.wf._progress
        assert progress is not None
        g.refused, g.refused_reason = count, reason
        if count:
            progress.last_error = (f"Gmail refuses {count} message(s) ({reason}): not in the mirror, "
                                   "asked for again on every pass")
        elif progress.last_error and progress.last_error.startswith("Gmail refuses"):
            progress.last_error = None
        self._show()

    def _count(self, stored: int, stored_bytes: int) -> None:
        self.g.stored, self.g.stored_bytes = stored, stored_bytes
        self._show()

    async def _start(self) -> GmailStartResult:
        assert self.wf._progress is not None
        start: GmailStartResult = await self.wf._activity(
            GmailActivities.gmail_start,
            GmailStartInput(account_id=self.inp.account_id, units_per_second=self._solo_share()), SHORT_TIMEOUT,
        )
        self.wf._progress.address = start.address
        self.g.messages_total = start.messages_total
        if not self.g.listing:
            self.g.stored, self.g.stored_bytes = start.stored, start.stored_bytes
        self._show()
        return start

    def _begin_listing(self, start: GmailStartResult, *, resync: bool) -> None:
        g = self.g
        if g.listing:  # resumed (continue-as-new, new credentials): keep its start and position
            return
        g.listing, g.resync = True, resync
        g.start_history_id = start.history_id
        g.list_token = None
        g.synced = g.fetched = g.bytes = 0

    def _end_listing(self) -> None:
        g = self.g
        g.history_id = g.start_history_id  # everything since is replayed by the next pass
        g.listing = g.resync = False
        g.list_token = None
        g.window_synced, g.window_bytes = g.synced, g.bytes
        if not g.backfill_query:  # what the listing saw, and the stored bytes plus what it downloaded
            g.stored, g.stored_bytes = g.synced, g.stored_bytes + g.bytes
        self._show()

    async def _initial(self) -> None:
        wf, st, inp = self.wf, self.st, self.inp
        assert wf._progress is not None
        wf._progress.phase = AccountPhase.discovering
        start = await self._start()
        # a fresh run over a mirror that exists (a --once sync before, a terminated workflow) must also
        # catch what was deleted or relabelled meanwhile: that is a resync's reconcile
        self._begin_listing(start, resync=start.stored > 0)
        wf._publish(AccountPhase.initial)
        await self._reconcile_if_needed()
        query = None
        if inp.since is not None:  # Gmail's after:/before: take epoch seconds
            query = gmail_since(inp.since)
            if inp.window_start is None or inp.window_start < inp.since:
                older = f"before:{gmail_epoch(inp.since)}"
                if inp.window_start is not None:
                    older += " " + gmail_since(inp.window_start)
                self.g.backfill_query = older
        await self._list_all(query)
        st.initial_rate = wf.progress().messages_per_second
        self._end_listing()
        st.initial_done = True
        wf._publish(self._resting_phase())
        await wf._set_status(inp.account_id, "active", None)

    async def _list_all(self, query: str | None) -> None:
        """messages.list page by page (newest first); each page's threads go to children, at most
        `gmail_children` in flight. The page token advances in workflow state, so a continued run or a
        retry goes on from the next page."""
        g = self.g
        while True:
            await self._list_pages(query)
            if not g.lost_batches:
                return
            # a child ended without its batch (terminated, timed out): list again; stored ids are skipped.
            # The count is workflow state: a continue-as-new between the loss and here keeps it.
            g.lost_batches = 0
            await workflow.sleep(PAUSE_AFTER_EXHAUSTED)
            g.list_token = None

    async def _list_page(self, token: str | None, query: str | None) -> GmailListResult:
        return await self.wf._activity(
            GmailActivities.gmail_list_page,
            GmailListInput(
                account_id=self.inp.account_id, page_token=token, query=query,
                thread_batch=self.inp.tuning.gmail_thread_batch, units_per_second=self._listing_share(),
            ),
            SHORT_TIMEOUT,
        )

    async def _start_children(
        self, batches: list[ThreadBatch], running: list[asyncio.Future[None]], *, pausable: bool = False
    ) -> bool:
        """A child per batch, waiting for a free slot before each; False when it stopped early (an auth
        failure, or with `pausable` a pause: the backfill does not make a pause wait for a whole page)."""
        wf, g = self.wf, self.g
        slots = max(1, self.inp.tuning.gmail_children)

        def stop() -> bool:
            return wf._auth_error is not None or (pausable and self.st.paused)

        for batch in batches:
            await workflow.wait_condition(lambda: sum(not t.done() for t in running) < slots or stop())
            if stop():
                return False
            g.batches += 1
            running.append(asyncio.ensure_future(self._child(batch, g.batches)))
        return True

    async def _list_pages(self, query: str | None) -> None:
        wf, g, inp = self.wf, self.g, self.inp
        running: list[asyncio.Future[None]] = []
        first = True
        try:
            while first or g.list_token:
                first = False
                page = await self._list_page(g.list_token, query)
                await self._start_children(page.batches, running)
                running = [t for t in running if not t.done()]
                if wf._auth_error is not None:
                    break
                g.list_token = page.next_page_token
                if g.list_token and workflow.info().get_current_history_length() > _LISTING_HISTORY_LIMIT:
                    await asyncio.gather(*running)
                    self.st.runs += 1
                    workflow.continue_as_new(inp.model_copy(update={"state": self.st}))
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        if wf._auth_error is not None:
            # the token is already past pages whose batches failed with it: list again from the top
            g.list_token = None
            raise AccountAuthFailed()

    async def _child(self, batch: ThreadBatch, n: int) -> None:
        wf, g = self.wf, self.g
        try:
            r: GmailFetchResult = await workflow.execute_child_workflow(
                ThreadSyncWorkflow.run,
                ThreadSyncInput(
                    account_id=self.inp.account_id, batch=batch, units_per_second=self._child_share(),
                    timeout_seconds=self.inp.tuning.page_timeout_seconds,
                    heartbeat_seconds=self.inp.tuning.heartbeat_seconds,
                ),
                id=f"{workflow.info().workflow_id}/threads/{n}",
            )
        except ChildWorkflowError as err:
            if failure_type(err) in AUTH_TYPES:
                wf._auth_failed(failure_message(err))
                return
            g.lost_batches += 1
            assert wf._progress is not None
            wf._progress.last_error = f"thread batch {n}: {failure_message(err)}"
            return
        g.synced += r.fetched + r.reused
        g.fetched += r.fetched
        g.bytes += r.bytes
        self._refusals(r.refused_total, r.refused_reason)

    # ---- live -------------------------------------------------------------------------------------

    async def _live(self) -> None:
        wf, st, inp = self.wf, self.st, self.inp
        assert wf._progress is not None
        passes_this_run = 0
        while True:
            due = (passes_this_run >= inp.tuning.passes_per_run or workflow.info().is_continue_as_new_suggested()
                   or workflow.info().get_current_history_length() > _LISTING_HISTORY_LIMIT)
            if await wf._between_passes(inp, due):
                continue
            try:
                if st.resync or self.g.listing:
                    st.resync = False
                    await self._resync()
                elif self.g.backfill_query and passes_this_run and not st.changed and not self._poll_due():
                    # one page of older mail; a change (or the poll interval) gets its pass in between
                    await self._backfill_page()
                    continue
                else:
                    wf._progress.phase = AccountPhase.syncing
                    await self._pass()
            except AccountAuthFailed:
                continue
            passes_this_run += 1
            await self._renew_watch()
            wf._publish(self._resting_phase())
            if self.g.backfill_query:
                continue
            timeout = inp.tuning.poll_seconds
            if self.g.watch_renew_at is not None:
                timeout = min(timeout, max(1.0, (self.g.watch_renew_at - workflow.now()).total_seconds()))
            try:
                await workflow.wait_condition(
                    lambda: st.changed or st.paused or st.resync or wf._auth_error is not None,
                    timeout=timedelta(seconds=timeout),
                )
            except asyncio.TimeoutError:
                pass

    def _poll_due(self) -> bool:
        last = self.st.last_pass
        if last is None or last.finished_at is None:
            return True
        return (workflow.now() - last.finished_at).total_seconds() >= self.inp.tuning.poll_seconds

    def _resting_phase(self) -> AccountPhase:
        return AccountPhase.backfill if self.g.backfill_query else AccountPhase.idle

    async def _backfill_page(self) -> None:
        """Older mail of a `--since` sync, one listing page at a time between passes: a change waits
        at most one page (500 messages) before its pass runs."""
        g = self.g
        lost_before = g.lost_batches
        running: list[asyncio.Future[None]] = []
        page = await self._list_page(g.backfill_token, g.backfill_query)
        try:
            complete = await self._start_children(page.batches, running, pausable=True)
        finally:
            await asyncio.gather(*running, return_exceptions=True)
        if self.wf._auth_error is not None:
            raise AccountAuthFailed()
        if g.lost_batches > lost_before or not complete:  # the same page again; stored ids are skipped
            g.lost_batches = lost_before
            return
        g.backfill_token = page.next_page_token
        if not g.backfill_token:
            g.backfill_query = None
            g.stored, g.stored_bytes = g.synced, g.stored_bytes + g.bytes
        self._show()

    async def _pass(self) -> None:
        """history.list from the stored historyId; it advances only once the changes are persisted."""
        wf, st, g = self.wf, self.st, self.g
        st.changed = False
        wf._pass_running = True
        result = PassResult(seq=st.passes + 1, started_at=workflow.now())
        expired = False
        try:
            assert g.history_id is not None
            r: GmailHistoryResult = await wf._activity(
                GmailActivities.gmail_apply_history,
                GmailHistoryInput(
                    account_id=self.inp.account_id, start_history_id=g.history_id,
                    units_per_second=self._solo_share(),  # no child runs during a pass
                ),
                timedelta(seconds=self.inp.tuning.page_timeout_seconds), retry_forever=False,
                heartbeat=timedelta(seconds=self.inp.tuning.heartbeat_seconds),
            )
        except ActivityError as err:
            if failure_type(err) == "HistoryExpired":
                expired = True
            else:
                result.error = failure_message(err)
                assert wf._progress is not None
                wf._progress.last_error = result.error
        else:
            g.history_id = r.history_id
            result.folders.append(FolderChanges(
                folder=ALL_MAIL, new=r.added, updated=r.relabeled, expunged=r.deleted, downloaded_bytes=r.bytes,
            ))
            result.folders_added = r.labels_added
            if not g.backfill_query:  # the mirror's size moves by what the pass added and deleted
                self._count(g.stored + r.added - r.deleted, g.stored_bytes + r.bytes - r.deleted_bytes)
            self._refusals(r.refused_total, r.refused_reason)
        finally:
            wf._pass_running = False
        if expired:  # Gmail no longer has our historyId: only a full resync can catch up
            await self._resync(seq=result.seq)
            return
        await self._record(result)

    async def _resync(self, seq: int | None = None) -> None:
        """Every message listed again: stored ones are reconciled (deletions, labels), not downloaded."""
        wf, g, inp = self.wf, self.g, self.inp
        assert wf._progress is not None
        result = PassResult(seq=seq or self.st.passes + 1, kind="resync", started_at=workflow.now())
        wf._publish(AccountPhase.initial)
        start = await self._start()
        self._begin_listing(start, resync=True)
        self._show()
        reconciled = await self._reconcile_if_needed()
        await self._list_all(None)
        changes = FolderChanges(
            folder=ALL_MAIL, new=g.fetched, rebuilt=True, reused=g.synced - g.fetched, downloaded_bytes=g.bytes,
            expunged=reconciled.deleted if reconciled else 0,
            updated=reconciled.label_rows_changed if reconciled else 0,
        )
        self._end_listing()
        result.folders.append(changes)
        await self._record(result)

    async def _reconcile_if_needed(self) -> GmailReconcileResult | None:
        """Deletions and label membership of stored messages, before a listing that skips them."""
        g, inp = self.g, self.inp
        if not g.resync:
            return None
        reconciled: GmailReconcileResult = await self.wf._activity(
            GmailActivities.gmail_reconcile,
            GmailReconcileInput(account_id=inp.account_id, units_per_second=self._solo_share()),
            timedelta(seconds=inp.tuning.page_timeout_seconds),
            heartbeat=timedelta(seconds=inp.tuning.heartbeat_seconds),
        )
        g.resync = False
        # what the listing then downloads adds to this (see _end_listing)
        g.stored, g.stored_bytes = reconciled.stored, reconciled.stored_bytes
        return reconciled

    async def _record(self, result: PassResult) -> None:
        result.finished_at = workflow.now()
        await self.wf._activity(
            ImapIncrementalActivities.record_pass, HistoryInput(account_id=self.inp.account_id, result=result),
            SHORT_TIMEOUT,
        )
        self.wf._count_pass(result)

    async def _renew_watch(self) -> None:
        """users.watch now and then daily (Gmail drops a watch after 7 days without renewal)."""
        topic, g = self.inp.tuning.gmail_watch_topic, self.g
        if not topic or (g.watch_renew_at is not None and workflow.now() < g.watch_renew_at):
            return
        try:
            # not through wf._activity: a refused watch (e.g. a topic Gmail may not publish to: 403) is a
            # watch error, retried in an hour, not a reason to park the account; a revoked grant shows
            # in the next pass anyway
            w: GmailWatchResult = await workflow.execute_activity_method(
                GmailActivities.gmail_watch,
                GmailWatchInput(account_id=self.inp.account_id, topic=topic, units_per_second=self._solo_share()),
                start_to_close_timeout=SHORT_TIMEOUT, retry_policy=PASS_RETRY,
            )
        except ActivityError as err:
            assert self.wf._progress is not None
            self.wf._progress.last_error = f"watch: {failure_message(err)}"
            g.watch_renew_at = workflow.now() + _WATCH_RETRY
            return
        g.watch_expires = w.expiration
        renew = timedelta(seconds=self.inp.tuning.gmail_watch_renew_seconds)
        g.watch_renew_at = min(workflow.now() + renew, w.expiration - _WATCH_RETRY)
