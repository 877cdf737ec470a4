"""The mailsync worker: runs the sync workflows and their activities on one task queue.

Scale out by starting more of these against the same Temporal and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from temporalio.worker import Worker

from activities.accounts import AccountActivities
from activities.deps import Deps
from activities.imap_incremental import ImapIncrementalActivities
from activities.imap_sync import ImapActivities
from config import Settings, get_settings
from runtime.temporal import connect
from store.crypto import CredentialBox, load_or_create_key
from store.db import create_pool, resolve_database_url
from store.migrate import migrate
from workflows import search
from workflows.account_sync import AccountSyncWorkflow
from workflows.folder_sync import FolderSyncWorkflow

log = logging.getLogger("mailsync.worker")


def watch_queue(task_queue: str) -> str:
    """IDLE watchers hold an activity slot for minutes each: they get their own queue and slots."""
    return f"{task_queue}.watch"


def build_workers(client, deps: Deps) -> list[Worker]:  # type: ignore[no-untyped-def]
    """The sync worker (workflows, page activities) and the watcher worker (one IDLE per live account)."""
    imap, live, accounts = ImapActivities(deps), ImapIncrementalActivities(deps), AccountActivities(deps)
    sync = Worker(
        client,
        task_queue=deps.settings.task_queue,
        workflows=[AccountSyncWorkflow, FolderSyncWorkflow],
        activities=[
            imap.discover_folders, imap.plan_folder_pages, imap.sync_page, accounts.set_account_status,
            live.probe_account, live.sync_folder_changes, live.record_pass,
        ],
        max_concurrent_activities=deps.settings.max_concurrent_activities,
    )
    watch = Worker(
        client,
        task_queue=watch_queue(deps.settings.task_queue),
        activities=[live.watch_mailbox],
        max_concurrent_activities=deps.settings.max_watchers,
    )
    return [sync, watch]


async def check_search_attributes(client, namespace: str) -> None:  # type: ignore[no-untyped-def]
    """Refuse to start when the account workflows could not set their search attributes: every
    workflow task would fail, and the syncs would hang without a word."""
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    response = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    missing = [k.name for k in search.ALL if k.name not in response.custom_attributes]
    if missing:
        raise RuntimeError(
            f"search attributes {', '.join(missing)} are not registered in namespace {namespace!r}: run "
            "`temporal operator search-attribute create --name NAME --type Keyword` for each "
            "(`mailsync dev up` does it for the dev server), or set MAILSYNC_SEARCH_ATTRIBUTES=false"
        )


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    pool = await create_pool(resolve_database_url(settings), size=settings.db_pool_size)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        if applied:
            log.info("applied migrations: %s", ", ".join(f"{m.version:03d}_{m.name}" for m in applied))
        deps = Deps(pool, CredentialBox(load_or_create_key(settings.secret_key, settings.state_dir)), settings)
        client = await connect(settings)
        if settings.search_attributes:
            await check_search_attributes(client, settings.temporal_namespace)
        workers = build_workers(client, deps)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("worker polling task queue %r", settings.task_queue)
        async with workers[0], workers[1]:
            await stop.wait()
            log.info("shutting down: finishing in-flight activities")
    finally:
        await pool.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = 0
    try:
        asyncio.run(run_worker(get_settings()))
    except Exception as exc:  # one clear line for operators, not a traceback
        print(f"mailsync worker: {exc}", file=sys.stderr)
        code = 1
    # temporalio can abort at interpreter exit (sdk-python #300): flush and leave without finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
