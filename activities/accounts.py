"""Account bookkeeping activities (status changes the workflows decide)."""

from __future__ import annotations

from temporalio import activity

from activities.deps import Deps
from activities.errors import classified_errors
from store.accounts import set_status
from workflows.models import SetStatusInput


class AccountActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn
    async def set_account_status(self, inp: SetStatusInput) -> None:
        async with classified_errors():
            async with self.deps.pool.acquire() as conn:
                await set_status(conn, inp.account_id, inp.status, inp.reason)
