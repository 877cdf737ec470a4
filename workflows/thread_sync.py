"""ThreadSyncWorkflow: mirrors one batch of Gmail threads (ids listed by the account workflow).

One child per batch of threads (never one per message): the account workflow bounds how many run at
once and gives each a share of the account's quota. A failure no retry can fix (a revoked grant) fails
the child with its type, so the parent parks the account; anything else is retried until it passes.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.gmail_sync import GmailActivities
    from workflows.models import GmailFetchInput, GmailFetchResult, ThreadSyncInput
    from workflows.policies import ACTIVITY_RETRY, PAUSE_AFTER_EXHAUSTED, failure_message, failure_type

# Failures that end the batch: the parent decides (auth → wait for credentials).
_FATAL = ("AuthExpired", "AccessDenied", "AuthError", "AccountNotFound", "SecretKeyError")


@workflow.defn
class ThreadSyncWorkflow:
    def __init__(self) -> None:
        self._last_error: str | None = None

    @workflow.query
    def last_error(self) -> str | None:
        return self._last_error

    @workflow.run
    async def run(self, inp: ThreadSyncInput) -> GmailFetchResult:
        while True:
            try:
                result: GmailFetchResult = await workflow.execute_activity_method(
                    GmailActivities.gmail_fetch_messages,
                    GmailFetchInput(
                        account_id=inp.account_id, message_ids=inp.batch.message_ids,
                        units_per_second=inp.units_per_second,
                    ),
                    start_to_close_timeout=timedelta(seconds=inp.timeout_seconds),
                    heartbeat_timeout=timedelta(seconds=inp.heartbeat_seconds),
                    retry_policy=ACTIVITY_RETRY,
                )
            except ActivityError as err:
                kind = failure_type(err)
                if kind in _FATAL:
                    raise ApplicationError(failure_message(err), type=kind, non_retryable=True) from err
                self._last_error = failure_message(err)
                await workflow.sleep(PAUSE_AFTER_EXHAUSTED)
                continue
            result.threads = len(inp.batch.thread_ids)
            return result
