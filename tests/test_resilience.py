"""The database goes away mid-sync, and Ctrl-C on the CLI: nothing is lost, the sync completes.

A private PostgreSQL (pgserver) is stopped and restarted under a running worker process; the worker
retries its pages (classified `DatabaseUnavailable`) and the mirror ends exact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from devkit.corpus import generate_corpus
from devkit.dovecot import DovecotServer
from devkit.processes import stop_process
from store.accounts import create_account
from store.crypto import CredentialBox
from store.db import create_pool
from store.migrate import migrate
from workflows.models import AccountPhase

from conftest import REPO, TEST_TUNING, TestAccount, run_cli, run_sync, verify

pytestmark = pytest.mark.usefixtures("worker")


def _pg_ctl(data: Path, *args: str) -> None:
    import pgserver

    pgserver.pg_ctl(list(args), pgdata=data, user="pgserver" if os.geteuid() == 0 else None)


async def test_database_goes_away_mid_sync(
    dovecot: DovecotServer, box: CredentialBox, client: Client, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="mailsync-test-pg-away-"))
    os.chmod(root, 0o755)
    data = root / "data"
    server = pgserver.get_server(data, cleanup_mode="delete")
    url = server.get_uri()
    pool = await create_pool(url, size=2)
    worker: subprocess.Popen[bytes] | None = None
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        username = "u" + uuid.uuid4().hex[:10]
        dovecot.add_user(username, "pw")
        dovecot.seed(username, generate_corpus(600, seed=51, max_attachment_bytes=60_000))
        account = TestAccount("acc_" + uuid.uuid4().hex[:12], username, "pw", dovecot.host, dovecot.port)
        async with pool.acquire() as conn:
            await create_account(
                conn, account_id=account.id, provider="imap", address=f"{username}@example.test",
                settings={"host": dovecot.host, "port": dovecot.port, "username": username, "security": "none"},
                credentials=box.seal(b"pw", account.id),
            )
        await pool.close()

        queue = "mailsync-pg-away-" + uuid.uuid4().hex[:8]
        log = tmp_path / "worker.log"
        worker = subprocess.Popen(
            [sys.executable, str(REPO / "worker.py")], cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env=cli_env | {"DATABASE_URL": url, "MAILSYNC_TASK_QUEUE": queue},
        )
        tuning = TEST_TUNING.model_copy(update={"page_size": 40, "chunk_size": 10})
        sync = asyncio.create_task(run_sync(client, account.id, task_queue=queue, tuning=tuning, timeout=240))
        await asyncio.sleep(1.5)
        assert not sync.done(), "the sync finished before the database could be stopped: grow the corpus"
        await asyncio.to_thread(_pg_ctl, data, "-w", "-m", "fast", "stop")
        await asyncio.sleep(4.0)  # pages fail meanwhile, and are retried with backoff
        socket_dir = url.split("host=", 1)[1].split("&", 1)[0]  # as pgserver started it: socket only
        await asyncio.to_thread(
            _pg_ctl, data, "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(data / "restart.log"), "start")
        result = await sync
        assert result.phase == AccountPhase.completed
        assert result.progress.done == result.progress.total == 600

        pool = await create_pool(url, size=2)
        report = await verify(pool, account)
        assert report.identical, [vars(f) for f in report.folders]
        dup = await pool.fetchval(
            "SELECT count(*) FROM (SELECT sha256 FROM messages GROUP BY account_id, sha256 HAVING count(*) > 1) d")
        assert dup == 0
        assert "database unavailable" in log.read_text().lower() or "DatabaseUnavailable" in log.read_text()
    finally:
        stop_process(worker)
        await pool.close()
        server.cleanup()


async def test_ctrl_c_on_follow_leaves_the_sync_running(
    make_account, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str],  # type: ignore[no-untyped-def]
) -> None:
    account = await make_account(list(generate_corpus(400, seed=52, max_attachment_bytes=60_000)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "sync", "start", account.id, "--follow", cwd=REPO, env=cli_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode in (0, 130), err.decode()
    assert "Traceback" not in err.decode()
    # Ctrl-C while `--wait` blocks on the update: "interrupted", 130, not an error
    waiting = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "sync", "start", account.id, "--wait", cwd=REPO, env=cli_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(2.0)
    if waiting.returncode is None:
        waiting.send_signal(signal.SIGINT)
    _, werr = await asyncio.wait_for(waiting.communicate(), 30)
    if waiting.returncode != 0:  # 0: the initial sync finished before the signal
        assert waiting.returncode == 130 and "interrupted" in werr.decode(), werr.decode()
    # the sync is the workflow's, not the CLI's: it finishes and the mirror is exact
    done = await run_cli(cli_env, "sync", "start", account.id, "--wait")
    assert done.returncode == 0, done.stderr
    report = await verify(pool, account)
    assert report.identical


@pytest.mark.parametrize("first, second", [("place", "remove"), ("remove", "place"), ("place", "place")])
async def test_placing_a_message_while_its_other_location_is_removed_keeps_it_live(
    make_account, pool: asyncpg.Pool, first: str, second: str,  # type: ignore[no-untyped-def]
) -> None:
    """Two transactions at once on message M: placing it in a folder (a rebuild, a backfill) and
    removing its location in F (an expunge), or placing it in two folders after it was deleted.
    Whichever commits first, M ends live with its new locations, and nothing deadlocks (READ
    COMMITTED alone would let the remover miss the placer's new location)."""
    from mail.model import FetchedMessage
    from store.changes import remove_locations
    from store.folders import FolderRow, upsert_folders
    from store.pages import write_page

    account = await make_account()
    raw = b"From: a@example.test\r\nSubject: moved\r\nMessage-ID: <moved@example.test>\r\n\r\nbody\r\n"
    async with pool.acquire() as conn:
        ids = await upsert_folders(conn, account.id, [FolderRow(n, "/", None, []) for n in ("F", "G", "H")])
        await write_page(conn, account.id, ids["F"], 1, [FetchedMessage(uid=1, raw=raw)])
        if first == second == "place":  # both re-place a message deleted on the server meanwhile
            await remove_locations(conn, ids["F"], 1, [1])
    async with pool.acquire() as one, pool.acquire() as two:
        def step(kind: str, conn: asyncpg.Connection, folder: str):  # type: ignore[no-untyped-def]
            if kind == "remove":
                return remove_locations(conn, ids["F"], 1, [1])
            return write_page(conn, account.id, ids[folder], 1, [FetchedMessage(uid=7, raw=raw)])

        tx_one, tx_two = one.transaction(), two.transaction()
        await tx_one.start()
        await tx_two.start()
        await step(first, one, "G")
        blocked = asyncio.create_task(step(second, two, "H"))  # waits for the first one's row lock
        await asyncio.sleep(0.3)
        await tx_one.commit()
        await asyncio.wait_for(blocked, 10)
        await tx_two.commit()
    row = await pool.fetchrow(
        """SELECT m.deleted_at, array_agg(f.name ORDER BY f.name) AS folders FROM messages m
           JOIN message_locations l ON l.message_pk = m.id JOIN folders f ON f.id = l.folder_id
           WHERE m.account_id = $1 GROUP BY m.id""", account.id)
    placed = [folder for folder, kind in (("G", first), ("H", second)) if kind == "place"]
    assert row is not None and list(row["folders"]) == placed and row["deleted_at"] is None
