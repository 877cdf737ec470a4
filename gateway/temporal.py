"""The gateway's only link to the workflows: signal-with-start, plain signals and the progress query.

Every call is bounded by a total time budget. The SDK retries UNAVAILABLE internally for ~10 s,
which would outlast the sender's own timeout; cutting it short and answering 503 lets Pub/Sub or
the webhook sender retry instead (the signal is idempotent for the workflow, a duplicate is harmless).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from gateway.errors import ServiceUnavailable, UpstreamError
from gateway.models import CREDENTIALS_EXPIRED, MAILBOX_CHANGED, PROGRESS_QUERY, CredentialsExpired, MailboxChanged
from gateway.settings import GatewaySettings
from runtime.temporal import TemporalNotConfigured, TemporalUnavailable, connect
from workflows.account_sync import AccountSyncWorkflow, account_workflow_id
from workflows.models import AccountProgress, AccountSyncInput

log = logging.getLogger("mailsync.gateway")
T = TypeVar("T")
SERVICE = "temporal"


class TemporalGate:
    """A lazily (re)connected Temporal client: the gateway starts and keeps answering while Temporal is down."""

    def __init__(
        self, settings: GatewaySettings, connector: Callable[[GatewaySettings], Awaitable[Client]] = connect,
    ) -> None:
        self.settings = settings
        self._connector = connector
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        # One connection attempt at a time: a burst of webhooks while Temporal is down must not
        # turn into a burst of connects.
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        self._connector(self.settings), self.settings.temporal_timeout
                    )
                except (TemporalUnavailable, TemporalNotConfigured, RuntimeError, OSError) as exc:
                    raise ServiceUnavailable(SERVICE, str(exc)) from exc
                except asyncio.TimeoutError as exc:
                    raise ServiceUnavailable(SERVICE, "connect timed out") from exc
        return self._client

    async def _bounded(self, call: Awaitable[T], budget: float) -> T:
        try:
            return await asyncio.wait_for(call, budget)
        except asyncio.TimeoutError as exc:
            raise ServiceUnavailable(SERVICE, f"no answer within {budget:g} s") from exc

    async def mailbox_changed(self, account_id: str, change: MailboxChanged, *, start: bool) -> bool:
        """Signal `mailbox_changed`; with `start`, signal-with-start so a stopped account syncs again.

        Returns whether the signal was delivered (False: not started and no workflow running).
        """
        client = await self.client()
        workflow_id = account_workflow_id(account_id)
        if not start:
            return await self._signal_if_running(client, workflow_id, MAILBOX_CHANGED, change)
        try:
            # USE_EXISTING makes this atomic on the server: the running workflow gets the signal,
            # or a new run starts with the signal as its first event; never a second workflow.
            await self._bounded(
                client.start_workflow(
                    AccountSyncWorkflow.run,
                    AccountSyncInput(account_id=account_id, tuning=self.settings.tuning()),
                    id=workflow_id, task_queue=self.settings.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    start_signal=MAILBOX_CHANGED, start_signal_args=[change],
                    rpc_timeout=timedelta(seconds=self.settings.temporal_timeout),
                ),
                self.settings.temporal_timeout,
            )
        except RPCError as exc:
            # Even NOT_FOUND here means a missing namespace, i.e. misconfiguration: retryable by the sender.
            raise ServiceUnavailable(SERVICE, f"signal-with-start failed: {exc.message}") from exc
        return True

    async def credentials_expired(self, account_id: str, payload: CredentialsExpired) -> bool:
        """Tell a running workflow its grant expired. Nothing is started: a stopped account has nothing to stop."""
        client = await self.client()
        return await self._signal_if_running(client, account_workflow_id(account_id), CREDENTIALS_EXPIRED, payload)

    async def _signal_if_running(self, client: Client, workflow_id: str, name: str, arg: object) -> bool:
        handle = client.get_workflow_handle(workflow_id)
        try:
            await self._bounded(
                handle.signal(name, arg, rpc_timeout=timedelta(seconds=self.settings.temporal_timeout)),
                self.settings.temporal_timeout,
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise ServiceUnavailable(SERVICE, f"signal failed: {exc.message}") from exc
        return True

    async def progress(self, account_id: str) -> AccountProgress | None:
        """The workflow's `progress` query; None when no workflow exists for the account."""
        client = await self.client()
        handle = client.get_workflow_handle(account_workflow_id(account_id))
        budget = self.settings.query_timeout
        try:
            return await self._bounded(
                handle.query(PROGRESS_QUERY, result_type=AccountProgress, rpc_timeout=timedelta(seconds=budget)),
                budget + 0.5,  # let the server's own deadline answer first: its message is clearer
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            # Typically a deadline: no worker polled the task queue to answer the query.
            raise ServiceUnavailable(SERVICE, f"progress query not answered: {exc.message}") from exc
        except WorkflowQueryFailedError as exc:
            raise UpstreamError(f"progress query failed in the workflow: {exc}") from exc

    async def ping(self) -> None:
        """Raise ServiceUnavailable unless Temporal's frontend answers a health check."""
        client = await self.client()
        try:
            healthy = await self._bounded(
                client.service_client.check_health(timeout=timedelta(seconds=self.settings.temporal_timeout)),
                self.settings.temporal_timeout,
            )
        except RPCError as exc:
            raise ServiceUnavailable(SERVICE, exc.message) from exc
        if not healthy:
            raise ServiceUnavailable(SERVICE, "health check reports the workflow service as not serving")
