"""AccountSyncWorkflow: one per account (id `account-sync/<account id>`), the single writer for it.

Discovers folders, fans out one FolderSyncWorkflow per folder with at most `connection_limit` in
flight, aggregates their progress for the `progress` query, and turns auth failures into the
account's `auth_failed` status.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from activities.accounts import AccountActivities
    from activities.imap_sync import ImapActivities
    from workflows.folder_sync import PROGRESS_SIGNAL, FolderSyncWorkflow
    from workflows.models import (
        AccountPhase, AccountProgress, AccountSyncInput, AccountSyncResult, DiscoverInput, DiscoverResult,
        FolderPhase, FolderProgress, FolderRef, FolderSyncInput, FolderSyncResult, SetStatusInput,
    )
    from workflows.policies import (
        ACTIVITY_RETRY, PAUSE_AFTER_EXHAUSTED, SHORT_TIMEOUT, failure_message, failure_type,
    )

_AUTH_TYPES = ("AuthError", "AccountNotFound", "SecretKeyError")


def account_workflow_id(account_id: str) -> str:
    return f"account-sync/{account_id}"


@workflow.defn
class AccountSyncWorkflow:
    def __init__(self) -> None:
        self._progress: AccountProgress | None = None
        self._folders: dict[str, FolderProgress] = {}
        self._auth_error: str | None = None

    @workflow.query
    def progress(self) -> AccountProgress:
        if self._progress is None:
            return AccountProgress(account_id="", phase=AccountPhase.starting)
        p = self._progress.model_copy()
        p.folders = list(self._folders.values())
        p.total = sum(f.total for f in p.folders)
        p.done = sum(f.done for f in p.folders)
        p.failed = sum(f.failed for f in p.folders)
        p.bytes = sum(f.bytes for f in p.folders)
        stamps = [f.updated_at for f in p.folders if f.updated_at]
        p.updated_at = max(stamps) if stamps else p.started_at
        if p.started_at and p.updated_at and p.done:
            elapsed = (p.updated_at - p.started_at).total_seconds()
            if elapsed > 0:
                p.messages_per_second = round(p.done / elapsed, 1)
                p.eta_seconds = round(max(0, p.total - p.done) / p.messages_per_second, 1)
        errors = [f"{f.name}: {f.error}" for f in p.folders if f.error]
        p.last_error = self._auth_error or (errors[-1] if errors else p.last_error)
        return p

    @workflow.signal(name=PROGRESS_SIGNAL)
    def folder_progress(self, update: FolderProgress) -> None:
        self._folders[update.name] = update

    @workflow.run
    async def run(self, inp: AccountSyncInput) -> AccountSyncResult:
        self._progress = AccountProgress(
            account_id=inp.account_id, phase=AccountPhase.discovering, started_at=workflow.now()
        )
        discovered = await self._discover(inp)
        if discovered is None:
            return await self._fail_auth(inp)
        self._progress.address = discovered.address
        for f in discovered.folders:
            self._folders.setdefault(f.name, FolderProgress(name=f.name, role=f.role))
        self._progress.phase = AccountPhase.initial

        slots = asyncio.Semaphore(max(1, inp.tuning.connection_limit))
        results = await asyncio.gather(*(self._sync_folder(inp, f, slots) for f in discovered.folders))
        if self._auth_error:
            return await self._fail_auth(inp)

        failed = [r for r in results if r is not None and r.progress.phase == FolderPhase.failed]
        self._progress.phase = AccountPhase.completed
        await self._set_status(inp.account_id, "active", f"{len(failed)} folder(s) failed" if failed else None)
        return AccountSyncResult(account_id=inp.account_id, phase=self._progress.phase, progress=self.progress())

    async def _discover(self, inp: AccountSyncInput) -> DiscoverResult | None:
        while True:
            try:
                return await workflow.execute_activity_method(
                    ImapActivities.discover_folders, DiscoverInput(account_id=inp.account_id),
                    start_to_close_timeout=SHORT_TIMEOUT, retry_policy=ACTIVITY_RETRY,
                )
            except ActivityError as err:
                assert self._progress is not None
                if failure_type(err) in _AUTH_TYPES:
                    self._auth_error = failure_message(err)
                    return None
                self._progress.last_error = failure_message(err)
                await workflow.sleep(PAUSE_AFTER_EXHAUSTED)

    async def _sync_folder(
        self, inp: AccountSyncInput, folder: FolderRef, slots: asyncio.Semaphore
    ) -> FolderSyncResult | None:
        async with slots:
            if self._auth_error:  # no point logging in again with a password the server just refused
                return None
            try:
                result = await workflow.execute_child_workflow(
                    FolderSyncWorkflow.run,
                    FolderSyncInput(
                        account_id=inp.account_id, folder=folder, parent_workflow_id=workflow.info().workflow_id,
                        tuning=inp.tuning,
                    ),
                    id=f"{workflow.info().workflow_id}/folder/{folder.folder_id}",
                )
            except ChildWorkflowError as err:
                message = failure_message(err)
                if failure_type(err) in _AUTH_TYPES:
                    self._auth_error = message
                    return None
                progress = self._folders.get(folder.name) or FolderProgress(name=folder.name)
                progress.phase, progress.error = FolderPhase.failed, message
                self._folders[folder.name] = progress
                return FolderSyncResult(folder=folder, progress=progress)
            self._folders[folder.name] = result.progress
            return result

    async def _fail_auth(self, inp: AccountSyncInput) -> AccountSyncResult:
        assert self._progress is not None
        self._progress.phase = AccountPhase.auth_failed
        reason = self._auth_error or "authentication failed"
        await self._set_status(inp.account_id, "auth_failed", reason)
        raise ApplicationError(
            f"account {inp.account_id}: authentication failed, waiting for new credentials: {reason}",
            type="AuthFailed", non_retryable=True,
        )

    async def _set_status(self, account_id: str, status: str, reason: str | None) -> None:
        await workflow.execute_activity_method(
            AccountActivities.set_account_status,
            SetStatusInput(account_id=account_id, status=status, reason=reason),
            start_to_close_timeout=SHORT_TIMEOUT, retry_policy=ACTIVITY_RETRY,
        )
