"""The mailsync worker: runs the sync workflows and their activities on one task queue.

Scale out by starting more of these against the same Temporal and PostgreSQL. On one machine,
`main()` starts MAILSYNC_WORKER_PROCESSES of them (default: one per CPU core, at most 4): the
process started runs a worker and supervises the others, which die with it (even on SIGKILL).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import time
from pathlib import Path

from temporalio.worker import (
    CustomSlotSupplier, FixedSizeSlotSupplier, PollerBehaviorSimpleMaximum, SlotMarkUsedContext, SlotPermit,
    SlotReleaseContext, SlotReserveContext, Worker, WorkerTuner,
)

from activities.accounts import AccountActivities
from activities.gmail_sync import GmailActivities
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
from workflows.thread_sync import ThreadSyncWorkflow

log = logging.getLogger("mailsync.worker")

# Set in the environment of the worker processes main() starts: the supervising parent's pid.
_CHILD_ENV = "MAILSYNC_WORKER_PARENT"
_PR_SET_PDEATHSIG = 1
_MAX_AUTO_PROCESSES = 4
# A busy worker process waits this long for an idle sibling to take the next activity (about a page).
_SPREAD_HOLD_S = 0.5


def watch_queue(task_queue: str) -> str:
    """IDLE watchers hold an activity slot for minutes each: they get their own queue and slots."""
    return f"{task_queue}.watch"


class SpreadingActivitySlots(CustomSlotSupplier):
    """Activity slots of one of several worker processes: a busy process lets idle siblings go first.

    Temporal gives a task to whichever poll is open, and by default sends an activity straight to
    the process whose workflow task scheduled it (eager dispatch). Both page activities of a
    two-folder sync then often run in one process while the other idles. With these slots a
    process that runs an activity opens its next poll only once one of its activities finishes or
    `hold` seconds have passed (so that more activities than processes still start), and takes no
    eager activity while busy. Use with a single activity poller.
    """

    def __init__(self, slots: int, hold: float) -> None:
        self._slots = slots
        self._hold = hold
        self._reserved = 0
        self._running = 0
        self._finished = 0

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        while self._reserved >= self._slots:
            await asyncio.sleep(0.02)
        self._reserved += 1
        try:
            finished, deadline = self._finished, time.monotonic() + self._hold
            while self._running and self._finished == finished and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        except BaseException:
            self._reserved -= 1
            raise
        return SlotPermit()

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        if self._running or self._reserved >= self._slots:
            return None
        self._reserved += 1
        return SlotPermit()

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        self._running += 1

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        self._reserved -= 1
        if ctx.slot_info is not None:  # the slot ran an activity (not a poll that came back empty)
            self._running -= 1
            self._finished += 1


def build_workers(client, deps: Deps, *, spread: bool = False) -> list[Worker]:  # type: ignore[no-untyped-def]
    """The sync worker (workflows, page activities) and the watcher worker (one IDLE per live account).

    `spread`: this is one of several worker processes on the same queues (see SpreadingActivitySlots).
    """
    imap, live, accounts = ImapActivities(deps), ImapIncrementalActivities(deps), AccountActivities(deps)
    gmail = GmailActivities(deps)
    slots: dict[str, object] = {"max_concurrent_activities": deps.settings.max_concurrent_activities}
    if spread:
        fixed = FixedSizeSlotSupplier(100)  # the SDK's default for the other slot kinds
        slots = {
            "tuner": WorkerTuner.create_composite(
                workflow_supplier=fixed, local_activity_supplier=fixed, nexus_supplier=fixed,
                activity_supplier=SpreadingActivitySlots(deps.settings.max_concurrent_activities, _SPREAD_HOLD_S),
            ),
            "activity_task_poller_behavior": PollerBehaviorSimpleMaximum(maximum=1),
        }
    sync = Worker(
        client,
        task_queue=deps.settings.task_queue,
        workflows=[AccountSyncWorkflow, FolderSyncWorkflow, ThreadSyncWorkflow],
        activities=[
            imap.discover_folders, imap.plan_folder_pages, imap.sync_page, accounts.set_account_status,
            live.probe_account, live.sync_folder_changes, live.record_pass,
            gmail.describe_account, gmail.gmail_start, gmail.gmail_list_page, gmail.gmail_fetch_messages,
            gmail.gmail_apply_history, gmail.gmail_reconcile, gmail.gmail_watch,
        ],
        **slots,  # type: ignore[arg-type]
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


async def run_worker(settings: Settings, stop: asyncio.Event | None = None, *, spread: bool = False) -> None:
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
        workers = build_workers(client, deps, spread=spread)
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


def worker_process_count(settings: Settings) -> int:
    """MAILSYNC_WORKER_PROCESSES, or with 0 one per usable CPU core (at most 4)."""
    if settings.worker_processes:
        return settings.worker_processes
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_AUTO_PROCESSES))


async def run_processes(settings: Settings, processes: int, stop: asyncio.Event | None = None) -> None:
    """Run a worker here and `processes - 1` more worker processes beside it, until `stop` or a signal.

    What the processes would otherwise race to create is settled first: the embedded database is
    started (its URL is handed down) and the credentials key file exists. A worker process that
    exits on its own is started again after a pause; on the way out every one gets SIGTERM and
    finishes its in-flight activities.
    """
    database_url = resolve_database_url(settings)
    load_or_create_key(settings.secret_key, settings.state_dir)
    settings = settings.model_copy(update={"database_url": database_url})
    env = os.environ | {"DATABASE_URL": database_url, _CHILD_ENV: str(os.getpid())}
    stop = stop or asyncio.Event()
    running: set[asyncio.subprocess.Process] = set()

    async def keep_running(slot: int) -> None:
        pause = 1.0
        while not stop.is_set():
            proc = await asyncio.create_subprocess_exec(sys.executable, str(Path(__file__).resolve()), env=env)
            running.add(proc)
            log.info("worker process %d started (%d of %d)", proc.pid, slot + 2, processes)
            started = time.monotonic()
            await proc.wait()
            running.discard(proc)
            if stop.is_set():
                return
            if time.monotonic() - started > 60:
                pause = 1.0
            log.warning("worker process %d exited with %s; starting another in %.0f s", proc.pid, proc.returncode, pause)
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except asyncio.TimeoutError:
                pause = min(pause * 2, 30.0)

    keepers = [asyncio.create_task(keep_running(i)) for i in range(processes - 1)]
    try:
        await run_worker(settings, stop, spread=True)
    finally:
        stop.set()
        for proc in list(running):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        if keepers:
            _, pending = await asyncio.wait(keepers, timeout=settings.activity_timeout)
            for proc in list(running):  # still finishing after the longest activity may take: end it
                if proc.returncode is None:
                    proc.kill()
            await asyncio.gather(*pending, return_exceptions=True)


def _die_with_parent(parent: int) -> None:
    """A worker process started by run_processes() ends when its parent ends, however it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM still reaches us
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def main() -> None:
    parent = os.environ.get(_CHILD_ENV)
    if parent:
        _die_with_parent(int(parent))
    code = 0
    try:
        settings = get_settings()
        processes = 1 if parent else worker_process_count(settings)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        if parent or processes > 1:
            fmt = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
        logging.basicConfig(level=logging.INFO, format=fmt)
        if processes > 1:
            asyncio.run(run_processes(settings, processes))
        else:
            asyncio.run(run_worker(settings, spread=bool(parent)))
    except Exception as exc:  # one clear line for operators, not a traceback
        print(f"mailsync worker: {exc}", file=sys.stderr)
        code = 1
    # temporalio can abort at interpreter exit (sdk-python #300): flush and leave without finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
