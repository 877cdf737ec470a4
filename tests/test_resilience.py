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


@pytest.mark.parametrize("placer_first", [True, False], ids=["placed-then-removed", "removed-then-placed"])
async def test_placing_a_message_while_its_other_location_is_removed_keeps_it_live(
    make_account, pool: asyncpg.Pool, placer_first: bool,  # type: ignore[no-untyped-def]
) -> None:
    """Two transactions at once: one places message M in folder G (a rebuild, a backfill), the other
    removes M's location in folder F (an expunge). Whichever commits first, M ends with a location
    and not deleted (READ COMMITTED alone would let the remover miss the placer's new location)."""
    from mail.model import FetchedMessage
    from store.changes import remove_locations
    from store.folders import FolderRow, upsert_folders
    from store.pages import write_page

    account = await make_account()
    raw = b"From: a@example.test\r\nSubject: moved\r\nMessage-ID: <moved@example.test>\r\n\r\nbody\r\n"
    async with pool.acquire() as conn:
        ids = await upsert_folders(conn, account.id, [FolderRow("F", "/", None, []), FolderRow("G", "/", None, [])])
        await write_page(conn, account.id, ids["F"], 1, [FetchedMessage(uid=1, raw=raw)])
    async with pool.acquire() as placer, pool.acquire() as remover:
        place_tx, remove_tx = placer.transaction(), remover.transaction()
        await place_tx.start()
        await remove_tx.start()
        place = lambda: write_page(placer, account.id, ids["G"], 1, [FetchedMessage(uid=7, raw=raw)])  # noqa: E731
        remove = lambda: remove_locations(remover, ids["F"], 1, [1])  # noqa: E731
        first, second = (place, remove) if placer_first else (remove, place)
        first_tx = place_tx if placer_first else remove_tx
        second_tx = remove_tx if placer_first else place_tx
        await first()
        blocked = asyncio.create_task(second())  # waits for the first transaction's row lock
        await asyncio.sleep(0.3)
        await first_tx.commit()
        await asyncio.wait_for(blocked, 10)
        await second_tx.commit()
    row = await pool.fetchrow(
        """SELECT m.deleted_at, array_agg(f.name) AS folders FROM messages m
           JOIN message_locations l ON l.message_pk = m.id JOIN folders f ON f.id = l.folder_id
           WHERE m.account_id = $1 GROUP BY m.id""", account.id)
    assert row is not None and list(row["folders"]) == ["G"] and row["deleted_at"] is None
