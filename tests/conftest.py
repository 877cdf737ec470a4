"""Session-scoped real services for the suite: one Temporal dev server, one PostgreSQL, one Dovecot.

Each test gets a fresh IMAP user and a fresh mailsync account, so tests share the slow services
without sharing data. A worker runs in-process on the session's task queue; tests that kill
workers start their own worker processes on a task queue of their own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import imaplib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import Deps
from config import Settings
from devkit.corpus import SeedMessage
from devkit.dovecot import DovecotServer, start_dovecot
from devkit.processes import stop_process
from ops.verify import VerifyReport, verify_account
from providers.imap.client import ImapSession
from providers.imap.settings import ImapSettings
from runtime.dev import temporal_binary
from runtime.temporal import update_following_runs
from store.accounts import create_account
from store.crypto import CredentialBox
from store.db import create_pool
from store.migrate import migrate
from worker import build_workers
from workflows import search
from workflows.account_sync import AccountSyncWorkflow, account_workflow_id
from workflows.models import AccountPhase, AccountSyncInput, AccountSyncResult, SyncTuning

REPO = Path(__file__).resolve().parent.parent
SECRET_KEY = base64.b64encode(b"k" * 32).decode()
# Small pages and chunks so a few hundred messages exercise paging, chunking and continue-as-new.
TEST_TUNING = SyncTuning(
    page_size=50, chunk_size=20, connection_limit=2, pages_per_run=4, page_timeout_seconds=120,
    heartbeat_seconds=5, search_attributes=True,
)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    import pgserver

    # pgserver runs PostgreSQL as an unprivileged user when we are root: its directory must be reachable.
    root = tempfile.mkdtemp(prefix="mailsync-test-pg-")
    os.chmod(root, 0o755)
    server = pgserver.get_server(Path(root) / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), data_converter=pydantic_data_converter,
        search_attributes=search.ALL,
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mailsync-test-state-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(pg_url: str, temporal_address: str, state_dir: Path) -> Settings:
    return Settings(
        DATABASE_URL=pg_url, TEMPORAL_ADDRESS=temporal_address, MAILSYNC_SECRET_KEY=SECRET_KEY,
        MAILSYNC_STATE_DIR=state_dir, MAILSYNC_TASK_QUEUE="mailsync-test",
        MAILSYNC_PAGE_SIZE=TEST_TUNING.page_size, MAILSYNC_FETCH_CHUNK=TEST_TUNING.chunk_size,
        MAILSYNC_PAGES_PER_RUN=TEST_TUNING.pages_per_run, MAILSYNC_HEARTBEAT_TIMEOUT=TEST_TUNING.heartbeat_seconds,
        MAILSYNC_ACTIVITY_TIMEOUT=TEST_TUNING.page_timeout_seconds, MAILSYNC_IMAP_TIMEOUT=10,
    )


@pytest.fixture(scope="session")
def cli_env(settings: Settings) -> dict[str, str]:
    """Environment for running the `mailsync` CLI (or a worker process) against the session's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSYNC_", "DATABASE_URL", "TEMPORAL_"))}
    env.update({
        "DATABASE_URL": settings.database_url or "", "TEMPORAL_ADDRESS": settings.temporal_address or "",
        "MAILSYNC_SECRET_KEY": SECRET_KEY, "MAILSYNC_STATE_DIR": str(settings.state_dir),
        "MAILSYNC_TASK_QUEUE": settings.task_queue, "MAILSYNC_PAGE_SIZE": str(settings.page_size),
        "MAILSYNC_FETCH_CHUNK": str(settings.fetch_chunk), "MAILSYNC_PAGES_PER_RUN": str(settings.pages_per_run),
        "MAILSYNC_HEARTBEAT_TIMEOUT": str(settings.heartbeat_timeout),
        "MAILSYNC_ACTIVITY_TIMEOUT": str(settings.activity_timeout), "MAILSYNC_IMAP_TIMEOUT": "10",
        "COLUMNS": "200",
    })
    return env


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url
    pool = await create_pool(settings.database_url, size=8)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def box() -> CredentialBox:
    return CredentialBox(base64.b64decode(SECRET_KEY))


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
async def worker(client: Client, pool: asyncpg.Pool, box: CredentialBox, settings: Settings) -> AsyncIterator[Worker]:
    workers = build_workers(client, Deps(pool, box, settings))
    tasks = [asyncio.create_task(w.run()) for w in workers]
    yield workers[0]
    await asyncio.gather(*(w.shutdown() for w in workers))
    await asyncio.gather(*tasks)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    server = start_dovecot(Path(tempfile.mkdtemp(prefix="mailsync-test-dovecot-")))
    yield server
    server.stop()


@dataclass
class TestAccount:
    id: str
    username: str
    password: str
    host: str
    port: int
    seeded: list[SeedMessage] = field(default_factory=list)

    def imap(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(self.host, self.port)
        conn.login(self.username, self.password)
        return conn

    def append(self, folder: str, flags: str | None, message: bytes) -> None:
        """Deliver one message as another mail client would (imaplib APPEND, then log out)."""
        c = self.imap()
        try:
            c.append(folder, flags, None, message)
        finally:
            c.logout()


class AccountFactory:
    def __init__(self, dovecot: DovecotServer, pool: asyncpg.Pool, box: CredentialBox) -> None:
        self.dovecot, self.pool, self.box = dovecot, pool, box

    async def __call__(
        self, messages: Iterable[SeedMessage] = (), *, port: int | None = None, password: str = "secret-pw",
    ) -> TestAccount:
        username = "u" + uuid.uuid4().hex[:10]
        self.dovecot.add_user(username, password)
        seeded = list(messages)
        if seeded:
            self.dovecot.seed(username, seeded)
        account_id = "acc_" + uuid.uuid4().hex[:12]
        imap = ImapSettings(host=self.dovecot.host, port=port or self.dovecot.port, username=username, security="none")
        async with self.pool.acquire() as conn:
            await create_account(
                conn, account_id=account_id, provider="imap", address=f"{username}@example.test",
                settings=imap.model_dump(mode="json"), credentials=self.box.seal(password.encode(), account_id),
            )
        return TestAccount(account_id, username, password, self.dovecot.host, self.dovecot.port, seeded)


@pytest.fixture
def make_account(dovecot: DovecotServer, pool: asyncpg.Pool, box: CredentialBox) -> AccountFactory:
    return AccountFactory(dovecot, pool, box)


async def run_sync(
    client: Client, account_id: str, *, task_queue: str = "mailsync-test", tuning: SyncTuning = TEST_TUNING,
    timeout: float = 240,
) -> AccountSyncResult:
    return await asyncio.wait_for(
        client.execute_workflow(
            AccountSyncWorkflow.run, AccountSyncInput(account_id=account_id, tuning=tuning, live=False),
            id=account_workflow_id(account_id), task_queue=task_queue,
        ),
        timeout,
    )


async def verify(pool: asyncpg.Pool, account: TestAccount) -> VerifyReport:
    settings = ImapSettings(host=account.host, port=account.port, username=account.username, security="none")
    async with pool.acquire() as conn, ImapSession(settings, account.password) as session:
        return await verify_account(conn, session, account.id)


def recreate_folder(account: TestAccount, name: str) -> None:
    """The folder deleted and created again with the same messages: a new UIDVALIDITY."""
    c = account.imap()
    try:
        c.create(f'"{name}-recreated"')
        c.select(f'"{name}"')
        c.uid("COPY", "1:*", f'"{name}-recreated"')
        c.close()
        c.delete(f'"{name}"')
        c.rename(f'"{name}-recreated"', f'"{name}"')
    finally:
        c.logout()


def server_messages(account: TestAccount) -> dict[str, list[tuple[int, bytes]]]:
    """Every folder's (UID, exact bytes) as the server serves them, read with the stdlib client."""
    conn = account.imap()
    result: dict[str, list[tuple[int, bytes]]] = {}
    _, listing = conn.list()
    for line in listing:
        assert isinstance(line, bytes)
        name = line.rsplit(b' "/" ', 1)[-1].strip().strip(b'"').decode()
        typ, _ = conn.select(f'"{name}"', readonly=True)
        if typ != "OK":
            continue
        _, data = conn.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        msgs = []
        for item in data:
            if isinstance(item, tuple):
                uid = int(item[0].split(b"UID ")[1].split()[0])
                msgs.append((uid, item[1]))
        result[name] = msgs
    conn.logout()
    return result


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def run_cli(
    cli_env: dict[str, str], *args: str, input: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, without blocking the loop that drives the in-process worker."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, cwd=REPO, env=cli_env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input.encode() if input is not None else None), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


async def until(predicate, timeout: float = 30.0, every: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll an async predicate until it is truthy or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)


async def start_live(
    client: Client, account_id: str, tuning: SyncTuning, *, settle: bool = False, timeout: float = 120
) -> WorkflowHandle:
    """Start (or attach to) the account's live workflow and wait for its initial sync; with `settle`,
    also for the first pass (which replays what changed during the initial sync) to finish."""
    await client.start_workflow(
        AccountSyncWorkflow.run, AccountSyncInput(account_id=account_id, tuning=tuning),
        id=account_workflow_id(account_id), task_queue="mailsync-test",
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    # no run id: updates and queries follow the workflow across continue-as-new
    handle = client.get_workflow_handle(account_workflow_id(account_id))
    await asyncio.wait_for(update_following_runs(handle, AccountSyncWorkflow.wait_initial), timeout)
    if settle:
        async def settled() -> bool:
            p = await handle.query(AccountSyncWorkflow.progress)
            return p.passes >= 1 and p.phase in (AccountPhase.idle, AccountPhase.backfill)

        assert await until(settled)
    return handle


async def sync_while_killing_workers(
    client: Client, account_id: str, cli_env: dict[str, str], logs: Path, tuning: SyncTuning, *,
    kills: int, pause: tuple[float, float], seed: int, extra_env: dict[str, str] | None = None,
) -> tuple[AccountSyncResult, int]:
    """A one-shot sync on a worker process of its own task queue, SIGKILLed up to `kills` times at
    random moments and restarted each time; returns the result and how many kills happened."""
    queue = "mailsync-kill-" + uuid.uuid4().hex[:8]
    env = cli_env | {"MAILSYNC_TASK_QUEUE": queue} | (extra_env or {})
    started = 0

    def start_worker() -> subprocess.Popen[bytes]:
        nonlocal started
        log = logs / f"worker-{started}.log"
        started += 1
        return subprocess.Popen(
            [sys.executable, str(REPO / "worker.py")], cwd=REPO, env=env, stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    proc = start_worker()
    sync = asyncio.create_task(run_sync(client, account_id, task_queue=queue, tuning=tuning, timeout=300))
    rng = random.Random(seed)
    done = 0
    try:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(*pause))
            if sync.done():
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            done += 1
            proc = start_worker()
        result = await sync
    finally:
        stop_process(proc)
    return result, done
