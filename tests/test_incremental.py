"""Keeping a live account current: incremental passes, IDLE, control signals, continue-as-new.

Real Dovecot (changed by a second client, stdlib imaplib), real Temporal dev server and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy

from devkit.chaos_proxy import ChaosProxy
from devkit.corpus import SeedMessage, generate_corpus
from devkit.dovecot import DovecotServer, start_dovecot
from store.crypto import CredentialBox
from workflows.account_sync import AccountSyncWorkflow, account_workflow_id
from workflows.models import AccountPhase, AccountProgress, AccountSyncInput, MailboxChanged, PassResult, SyncTuning

from conftest import (
    TEST_TUNING, AccountFactory, TestAccount, recreate_folder, run_cli, server_messages, until, verify,
)
from conftest import start_live as live_workflow

pytestmark = pytest.mark.usefixtures("worker")

LIVE = TEST_TUNING.model_copy(update={"poll_seconds": 3600.0, "watch": False})


def corpus(n: int, seed: int, **kw: object) -> list[SeedMessage]:
    return list(generate_corpus(n, seed=seed, max_attachment_bytes=60_000, **kw))  # type: ignore[arg-type]


def new_message(n: int) -> bytes:
    return (
        f"From: Fresh Sender <fresh{n}@example.org>\r\nTo: someone@example.test\r\n"
        f"Subject: fresh message {n}\r\nMessage-ID: <fresh-{n}-{time.time_ns()}@example.org>\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nhello number {n}\r\n"
    ).encode()


async def start_live(client: Client, account_id: str, tuning: SyncTuning = LIVE) -> WorkflowHandle:
    # settled: the first pass (right after the initial sync) is over, so the test's own changes land
    # in the pass its sync_now asks for, not in that one
    return await live_workflow(client, account_id, tuning, settle=True)


async def sync_now(handle: WorkflowHandle) -> PassResult:
    return await asyncio.wait_for(handle.execute_update(AccountSyncWorkflow.sync_now), 120)


async def progress(handle: WorkflowHandle) -> AccountProgress:
    return await handle.query(AccountSyncWorkflow.progress)


async def assert_identical(pool: asyncpg.Pool, account: TestAccount) -> None:
    report = await verify(pool, account)
    bad = [f for f in report.folders if f.missing or f.extra or f.mismatched or f.flag_differences]
    assert report.identical, bad


async def assert_sizes_shown(pool: asyncpg.Pool, handle: WorkflowHandle, account: TestAccount) -> None:
    """What progress shows per folder (MB, flagged) is what the mirror holds: the database's sums."""
    held = await pool.fetch(
        """SELECT f.name, sum(m.size) AS bytes, count(*) FILTER (WHERE m.parse_error IS NOT NULL) AS flagged
           FROM message_locations l JOIN messages m ON m.id = l.message_pk JOIN folders f ON f.id = l.folder_id
           WHERE l.account_id = $1 GROUP BY f.name""", account.id)
    shown = {f.name: (f.bytes, f.flagged) for f in (await progress(handle)).folders}
    assert shown == {r["name"]: (r["bytes"], r["flagged"]) for r in held}


def uids(conn: imaplib.IMAP4, folder: str) -> list[bytes]:
    conn.select(f'"{folder}"')
    return conn.uid("SEARCH", None, "ALL")[1][0].split()


async def test_changes_on_the_server_are_mirrored_exactly(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str],
) -> None:
    account = await make_account(corpus(160, seed=31, folders=("INBOX", "Sent", "Archive", "Lists/Python", "Doomed")))
    handle = await start_live(client, account.id)
    quiet = await sync_now(handle)
    assert (quiet.new, quiet.updated, quiet.expunged) == (0, 0, 0)
    assert quiet.folders == [] and not quiet.folders_added and not quiet.folders_removed

    c = account.imap()
    try:
        inbox = uids(c, "INBOX")
        c.uid("STORE", inbox[0], "+FLAGS", r"(\Seen \Answered $Label1)")
        c.uid("STORE", inbox[1], "-FLAGS", r"(\Seen \Flagged)")
        c.uid("STORE", inbox[2], "+FLAGS", r"(\Deleted)")
        c.uid("STORE", inbox[3], "+FLAGS", r"(\Deleted)")
        c.expunge()
        assert c.uid("MOVE", inbox[4], '"Archive"')[0] == "OK"
        c.append("INBOX", r"(\Flagged)", None, new_message(1))
        c.append("Sent", r"(\Seen)", None, new_message(2))
        c.create('"Projects"')
        c.append("Projects", None, None, new_message(3))
        assert c.rename('"Lists/Python"', '"Lists/Renamed"')[0] == "OK"
        assert c.delete('"Doomed"')[0] == "OK"
    finally:
        c.logout()

    changed = await sync_now(handle)
    by_folder = {f.folder: f for f in changed.folders}
    assert by_folder["INBOX"].new == 1 and by_folder["INBOX"].expunged == 3  # two deleted, one moved away
    assert by_folder["INBOX"].updated == 2
    assert by_folder["Archive"].new == 1 and by_folder["Sent"].new == 1
    assert sorted(changed.folders_added) == ["Lists/Renamed", "Projects"]
    renamed = by_folder["Lists/Renamed"]
    assert renamed.rebuilt and renamed.new == 0 and renamed.reused > 0  # a rename downloads no body
    assert sorted(changed.folders_removed) == ["Doomed", "Lists/Python"]
    await assert_identical(pool, account)

    # messages that lost their last location are kept and marked, never dropped from history
    deleted = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND deleted_at IS NOT NULL", account.id)
    assert deleted >= 2
    moved_alive = await pool.fetchval(
        """SELECT count(*) FROM messages m WHERE m.account_id = $1 AND m.deleted_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM message_locations l WHERE l.message_pk = m.id)""", account.id)
    assert moved_alive == 0
    gone = await pool.fetchrow("SELECT deleted_at FROM folders WHERE account_id = $1 AND name = 'Doomed'", account.id)
    assert gone["deleted_at"] is not None

    again = await sync_now(handle)
    assert (again.new, again.updated, again.expunged) == (0, 0, 0)
    await assert_sizes_shown(pool, handle, account)  # new and expunged counted in, the rename recounted

    history = await run_cli(cli_env, "sync", "history", account.id, "--json")
    assert history.returncode == 0, history.stderr
    assert '"expunged": 3' in history.stdout and '"folder": "INBOX"' in history.stdout
    now = await run_cli(cli_env, "sync", "now", account.id)
    assert now.returncode == 0, now.stderr
    assert "0 new, 0 updated, 0 expunged" in now.stdout and "folder" not in now.stdout  # no empty table


async def test_idle_brings_new_mail_within_five_seconds(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    account = await make_account(corpus(40, seed=32))
    handle = await start_live(client, account.id, LIVE.model_copy(update={"watch": True}))
    await until(lambda: _phase_is(handle, AccountPhase.idle))
    await asyncio.sleep(1.0)  # the watcher's IDLE is in place
    c = account.imap()
    try:
        appended = time.monotonic()
        c.append("INBOX", None, None, new_message(7))
    finally:
        c.logout()

    async def arrived() -> bool:
        n = await pool.fetchval(
            """SELECT count(*) FROM messages WHERE account_id = $1 AND subject = 'fresh message 7'""", account.id)
        return n == 1

    assert await until(arrived, timeout=10.0, every=0.05)
    elapsed = time.monotonic() - appended
    assert elapsed < 5.0, f"new mail took {elapsed:.2f} s to reach PostgreSQL"
    await assert_identical(pool, account)


async def _phase_is(handle: WorkflowHandle, phase: AccountPhase) -> bool:
    return (await progress(handle)).phase == phase


async def test_uidvalidity_change_rebuilds_the_folder(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    account = await make_account(corpus(60, seed=33, folders=("INBOX", "Sent")))
    handle = await start_live(client, account.id)
    before = await pool.fetchval("SELECT uidvalidity FROM folders WHERE account_id = $1 AND name = 'Sent'", account.id)
    recreate_folder(account, "Sent")
    # as left by an attempt that wrote a page and died before threading it: placed again by header
    # key, they are threaded then
    await pool.execute(
        """UPDATE messages SET thread_id = NULL WHERE id IN (
               SELECT l.message_pk FROM message_locations l JOIN folders f ON f.id = l.folder_id
               WHERE f.account_id = $1 AND f.name = 'Sent' ORDER BY l.uid LIMIT 3)""", account.id)
    result = await sync_now(handle)
    sent = next(f for f in result.folders if f.folder == "Sent")
    assert sent.rebuilt, result
    assert await pool.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND thread_id IS NULL", account.id) == 0
    served = server_messages(account)["Sent"]
    # every body was already stored: matched by header key, none downloaded again
    assert sent.reused == len(served) and sent.new == 0, sent
    assert sent.downloaded_bytes < 0.5 * sum(len(raw) for _, raw in served), sent
    # while the folder's progress row still says how much mail it holds, not what the rebuild downloaded
    row = next(f for f in (await progress(handle)).folders if f.name == "Sent")
    assert row.bytes == sum(len(raw) for _, raw in served) and row.downloaded == sent.downloaded_bytes, row
    after = await pool.fetchval("SELECT uidvalidity FROM folders WHERE account_id = $1 AND name = 'Sent'", account.id)
    assert after != before
    await assert_identical(pool, account)


async def test_continue_as_new_carries_state_and_keeps_history_small(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    account = await make_account(corpus(30, seed=34))
    handle = await start_live(client, account.id, LIVE.model_copy(update={"passes_per_run": 2}))
    first = (await progress(handle)).passes
    for i in range(7):
        account.append("INBOX", None, new_message(100 + i))
        result = await sync_now(handle)
        if not (result.new == 1 and result.seq == first + i + 1):  # say which pass took the message
            rows = await pool.fetch(
                """SELECT folder, kind, started_at, finished_at, new_messages FROM sync_history
                   WHERE account_id = $1 ORDER BY id""", account.id)
            raise AssertionError((i, first, result, [tuple(r) for r in rows]))
    p = await progress(handle)
    assert p.passes == first + 7 and p.total_new == 7
    assert p.runs >= 4  # 2 passes per run
    runs = [w async for w in client.list_workflows(f"WorkflowId = '{account_workflow_id(account.id)}'")]
    assert len(runs) == p.runs
    events = [e async for e in handle.fetch_history_events()]
    assert len(events) < 150, len(events)
    await assert_identical(pool, account)


async def test_pause_resume_and_start_twice_attaches(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str],
) -> None:
    account = await make_account(corpus(30, seed=35))
    handle = await start_live(client, account.id)
    first = (await handle.describe()).run_id
    again = await run_cli(cli_env, "sync", "start", account.id, "--wait")
    assert again.returncode == 0, again.stderr
    assert (await handle.describe()).run_id == first
    running = [w async for w in client.list_workflows(
        f"WorkflowId = '{account_workflow_id(account.id)}' AND ExecutionStatus = 'Running'")]
    assert len(running) == 1

    # the web UI finds accounts by search attributes (set when the phase settles)
    async def findable(phase: str) -> bool:
        found = [w async for w in client.list_workflows(
            f"MailsyncAccountId = '{account.id}' AND MailsyncPhase = '{phase}' AND MailsyncProvider = 'imap'")]
        return len(found) == 1

    assert await until(lambda: findable("idle"))

    paused = await run_cli(cli_env, "sync", "pause", account.id)
    assert paused.returncode == 0, paused.stderr
    assert await until(lambda: _phase_is(handle, AccountPhase.paused))
    assert await until(lambda: findable("paused"))

    async def listed_paused() -> bool:
        return await pool.fetchval("SELECT status FROM accounts WHERE id = $1", account.id) == "paused"

    assert await until(listed_paused)
    with pytest.raises(WorkflowUpdateFailedError):
        await sync_now(handle)
    account.append("INBOX", None, new_message(200))
    await asyncio.sleep(1.0)
    assert await pool.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND subject = 'fresh message 200'", account.id) == 0

    resumed = await run_cli(cli_env, "sync", "resume", account.id)
    assert resumed.returncode == 0, resumed.stderr

    async def arrived() -> bool:
        return await pool.fetchval(
            "SELECT count(*) FROM messages WHERE account_id = $1 AND subject = 'fresh message 200'", account.id) == 1

    assert await until(arrived)

    resync = await run_cli(cli_env, "sync", "resync", account.id)
    assert resync.returncode == 0, resync.stderr
    bodies = await pool.fetchval("SELECT count(*) FROM message_bodies WHERE account_id = $1", account.id)

    async def resynced() -> bool:
        p = await progress(handle)
        return p.last_pass is not None and p.last_pass.kind == "resync" and p.phase == AccountPhase.idle

    assert await until(resynced)
    assert await pool.fetchval("SELECT count(*) FROM message_bodies WHERE account_id = $1", account.id) == bodies
    await assert_identical(pool, account)


async def test_password_change_parks_account_until_credentials_updated(
    make_account: AccountFactory, dovecot: DovecotServer, pool: asyncpg.Pool, client: Client,
    cli_env: dict[str, str],
) -> None:
    with ChaosProxy(dovecot.host, dovecot.port) as proxy:
        account = await make_account(corpus(20, seed=36), port=proxy.port)
        handle = await start_live(client, account.id)
        dovecot.set_password(account.username, "rotated-pw")
        logins_before = proxy.connections
        with pytest.raises(WorkflowUpdateFailedError):
            await sync_now(handle)
        assert await until(lambda: _phase_is(handle, AccountPhase.auth_failed))
        refused = await pool.fetchval(  # the failed pass is in the audit log, with the reason
            "SELECT error FROM sync_history WHERE account_id = $1 AND folder IS NULL ORDER BY id DESC LIMIT 1",
            account.id)
        assert refused and refused.startswith("authentication failed") and "AUTHENTICATIONFAILED" in refused

        async def status_is(expected: str) -> bool:
            return await pool.fetchval("SELECT status FROM accounts WHERE id = $1", account.id) == expected

        assert await until(lambda: status_is("auth_failed"))
        await asyncio.sleep(2.0)
        assert proxy.connections - logins_before == 1  # one refused login, no retry storm

        updated = await run_cli(
            cli_env, "account", "update", account.id, "--password-stdin", input="rotated-pw\n")
        assert updated.returncode == 0, updated.stderr
        assert await until(lambda: _phase_is(handle, AccountPhase.idle))
        assert await until(lambda: status_is("active"))
        account.password = "rotated-pw"
        account.port = dovecot.port
        account.append("INBOX", None, new_message(300))
        assert (await sync_now(handle)).new == 1
        await assert_identical(pool, account)


@pytest.fixture(scope="module")
def plain_dovecot() -> Iterator[DovecotServer]:
    """A server without CONDSTORE/QRESYNC: the flag-diff fallback must give the same mirror."""
    server = start_dovecot(Path(tempfile.mkdtemp(prefix="mailsync-test-plain-")), condstore=False)
    yield server
    server.stop()


async def test_server_without_condstore_uses_the_diff_fallback(
    plain_dovecot: DovecotServer, pool: asyncpg.Pool, box: CredentialBox, client: Client,
) -> None:
    account = await AccountFactory(plain_dovecot, pool, box)(corpus(120, seed=37))
    handle = await start_live(client, account.id)
    c = account.imap()
    try:
        assert "CONDSTORE" not in c.capabilities
        inbox = uids(c, "INBOX")
        c.uid("STORE", inbox[0], "+FLAGS", r"(\Flagged)")
        c.uid("STORE", inbox[1], "-FLAGS", r"(\Seen)")
        c.uid("STORE", inbox[2], "+FLAGS", r"(\Deleted)")
        c.expunge()
        c.append("INBOX", None, None, new_message(400))
    finally:
        c.logout()
    result = await sync_now(handle)
    inbox_changes = next(f for f in result.folders if f.folder == "INBOX")
    assert (inbox_changes.new, inbox_changes.expunged) == (1, 1)
    assert inbox_changes.updated >= 1
    await assert_identical(pool, account)


async def test_account_remove_stops_the_sync_and_deletes_the_mirror(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str],
) -> None:
    account = await make_account(corpus(25, seed=38))
    handle = await start_live(client, account.id)
    refused = await run_cli(cli_env, "account", "remove", account.id)  # no terminal, no --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", account.id) > 0
    removed = await run_cli(cli_env, "account", "remove", account.id, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert (await handle.describe()).status.name == "TERMINATED"
    for table in ("accounts", "messages", "message_bodies", "message_locations", "folders", "sync_history"):
        column = "id" if table == "accounts" else "account_id"
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", account.id) == 0, table


def _search_count(account: TestAccount, criteria: str) -> int:
    c = account.imap()
    try:
        total = 0
        for line in c.list()[1]:
            name = line.decode().rsplit(' "/" ', 1)[-1].strip('"')
            c.select(f'"{name}"', readonly=True)
            total += len(c.uid("SEARCH", None, criteria)[1][0].split())
        return total
    finally:
        c.logout()


async def test_recent_window_first_then_backfill_in_the_background(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str],
) -> None:
    seeded = corpus(240, seed=39, folders=("INBOX", "Archive"))
    account = await make_account(seeded)
    dates = sorted(m.internaldate.date() for m in seeded)
    since, window = dates[2 * len(dates) // 3], dates[len(dates) // 4]
    imap_day = lambda d: f"{d.day}-{d.strftime('%b')}-{d.year}"  # noqa: E731

    started = await run_cli(
        cli_env, "sync", "start", account.id, "--wait", "--since", since.isoformat(), "--window", window.isoformat())
    assert started.returncode == 0, started.stderr
    handle = client.get_workflow_handle(account_workflow_id(account.id))
    p = await progress(handle)
    assert p.phase in (AccountPhase.backfill, AccountPhase.idle, AccountPhase.syncing)
    recent = _search_count(account, f"SINCE {imap_day(since)}")
    stored_at_usable = await pool.fetchval(
        "SELECT count(*) FROM message_locations WHERE account_id = $1", account.id)
    assert stored_at_usable >= recent  # the recent window is complete when the account is reported usable

    async def backfilled() -> bool:
        return (await progress(handle)).phase == AccountPhase.idle and (await progress(handle)).backfill_pending == 0

    assert await until(backfilled, timeout=60)
    await assert_sizes_shown(pool, handle, account)  # the backfilled older mail included
    assert sum(f.flagged for f in (await progress(handle)).folders) > 0
    children = [w async for w in client.list_workflows(
        f"WorkflowId STARTS_WITH '{account_workflow_id(account.id)}/backfill/'")]
    assert len(children) == 2  # one backfill per folder, run beside the live loop
    in_window = _search_count(account, f"SINCE {imap_day(window)}")
    stored = await pool.fetchval("SELECT count(*) FROM message_locations WHERE account_id = $1", account.id)
    assert stored == in_window < len(seeded)  # nothing older than the window
    report = await verify(pool, account)
    assert all(f.extra == 0 and f.mismatched == 0 and f.flag_differences == 0 for f in report.folders)
    assert report.totals().missing == len(seeded) - in_window
    # the user's check knows the window: identical within it, and a hole in it is found
    checked = await run_cli(cli_env, "verify", account.id, "--window", window.isoformat(), "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["totals"]["server"] == in_window
    plain = await run_cli(cli_env, "verify", account.id, "--window", window.isoformat())
    assert plain.returncode == 0 and f"on or after {window.isoformat()}" in plain.stdout, plain.stdout
    assert (await run_cli(cli_env, "verify", account.id)).returncode == 2
    await handle.terminate()
    lost = await pool.fetchval(
        """DELETE FROM message_locations WHERE ctid = (SELECT ctid FROM message_locations
           WHERE account_id = $1 ORDER BY internaldate DESC LIMIT 1) RETURNING uid""", account.id)
    assert lost is not None
    holed = await run_cli(cli_env, "verify", account.id, "--window", window.isoformat(), "--json")
    assert holed.returncode == 2 and json.loads(holed.stdout)["totals"]["missing"] == 1, holed.stdout
    bad = await run_cli(cli_env, "verify", account.id, "--window", "last tuesday")
    assert bad.returncode != 0 and "--window" in bad.stderr


async def test_dropped_idle_connection_is_reestablished(
    make_account: AccountFactory, dovecot: DovecotServer, pool: asyncpg.Pool, client: Client,
) -> None:
    with ChaosProxy(dovecot.host, dovecot.port) as proxy:
        account = await make_account(corpus(20, seed=40), port=proxy.port)
        handle = await start_live(client, account.id, LIVE.model_copy(update={"watch": True}))
        await until(lambda: _phase_is(handle, AccountPhase.idle))
        assert await until(lambda: _async(proxy.active >= 1))  # the watcher's IDLE connection
        await asyncio.sleep(0.5)
        before = proxy.connections
        dropped = proxy.drop_connections()
        assert dropped >= 1
        # re-established after the retry backoff (1 s doubling, jittered)
        assert await until(lambda: _async(proxy.connections > before and proxy.active >= 1), timeout=15)
        await asyncio.sleep(1.0)
        account.port = dovecot.port
        account.append("INBOX", None, new_message(500))

        async def arrived() -> bool:
            return await pool.fetchval(
                "SELECT count(*) FROM messages WHERE account_id = $1 AND subject = 'fresh message 500'",
                account.id) == 1

        assert await until(arrived, timeout=10)
        await assert_identical(pool, account)


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize("server", ["condstore", "plain"])
async def test_mark_all_read_on_a_large_folder(
    server: str, dovecot: DovecotServer, plain_dovecot: DovecotServer, pool: asyncpg.Pool, box: CredentialBox,
    client: Client,
) -> None:
    """Thousands of FLAGS lines in one answer (aioimaplib used to recurse per line and fail)."""
    target = dovecot if server == "condstore" else plain_dovecot
    seeded = [
        dataclasses.replace(m, flags=tuple(f for f in m.flags if f != "\\Seen"))
        for m in generate_corpus(2600, seed=41, folders=("INBOX",), malformed_ratio=0.0, attachment_ratio=0.0)
    ]
    account = await AccountFactory(target, pool, box)(seeded)
    handle = await start_live(client, account.id, LIVE.model_copy(update={"page_size": 500, "chunk_size": 250}))
    c = account.imap()
    try:
        c.select("INBOX")
        assert c.uid("STORE", "1:*", "+FLAGS.SILENT", r"(\Seen)")[0] == "OK"
    finally:
        c.logout()
    result = await sync_now(handle)
    inbox = next(f for f in result.folders if f.folder == "INBOX")
    assert inbox.error is None and inbox.updated == len(seeded)
    await assert_identical(pool, account)


async def test_idle_watches_more_folders_up_to_the_connection_limit(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    account = await make_account(corpus(40, seed=42, folders=("INBOX", "Sent", "Archive")))
    tuning = LIVE.model_copy(update={"watch": True, "connection_limit": 3})  # INBOX and Sent watched
    handle = await start_live(client, account.id, tuning)
    await until(lambda: _phase_is(handle, AccountPhase.idle))
    await asyncio.sleep(1.0)
    c = account.imap()
    try:
        appended = time.monotonic()
        c.append("Sent", r"(\Seen)", None, new_message(600))
    finally:
        c.logout()

    async def arrived() -> bool:
        return await pool.fetchval(
            "SELECT count(*) FROM messages WHERE account_id = $1 AND subject = 'fresh message 600'", account.id) == 1

    assert await until(arrived, timeout=10.0, every=0.05)
    assert time.monotonic() - appended < 5.0
    await assert_identical(pool, account)


async def test_unreachable_server_fails_the_pass_instead_of_hanging(
    make_account: AccountFactory, dovecot: DovecotServer, pool: asyncpg.Pool, client: Client,
    cli_env: dict[str, str],
) -> None:
    proxy = ChaosProxy(dovecot.host, dovecot.port).start()
    account = await make_account(corpus(20, seed=43), port=proxy.port)
    handle = await start_live(client, account.id, LIVE.model_copy(update={"watch": False}))
    proxy.stop()  # the server is gone: every connection is refused
    failed = await run_cli(cli_env, "sync", "now", account.id, timeout=200)
    assert failed.returncode == 1 and "failed" in failed.stderr and "connection refused" in failed.stderr.lower()
    history = await pool.fetchval(
        "SELECT error FROM sync_history WHERE account_id = $1 AND folder IS NULL ORDER BY id DESC LIMIT 1",
        account.id)
    assert history and "refused" in history.lower()
    paused = await run_cli(cli_env, "sync", "pause", account.id)
    assert paused.returncode == 0
    assert await until(lambda: _phase_is(handle, AccountPhase.paused))


async def test_new_credentials_signalled_before_the_wait_begins_are_not_lost(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    """Credentials refused, then new ones signalled while the initial sync is still winding down (other
    folders finishing): when the sync gets to waiting for credentials, the new ones are already there."""
    from workflows.models import CredentialsExpired

    account = await make_account(corpus(60, seed=44, folders=("INBOX", "Archive", "Sent")))
    await client.start_workflow(
        AccountSyncWorkflow.run, AccountSyncInput(account_id=account.id, tuning=LIVE),
        id=account_workflow_id(account.id), task_queue="mailsync-test",
    )
    handle = client.get_workflow_handle(account_workflow_id(account.id))
    # both before the initial sync can end: it stops starting folders, then waits for credentials
    await handle.signal(AccountSyncWorkflow.credentials_expired, CredentialsExpired(reason="refused, as a test"))
    await handle.signal(AccountSyncWorkflow.credentials_updated)

    async def usable() -> bool:
        p = await progress(handle)
        return p.phase == AccountPhase.idle and p.passes >= 1

    assert await until(usable, timeout=60), (await progress(handle)).model_dump_json()
    assert await pool.fetchval("SELECT status FROM accounts WHERE id = $1", account.id) == "active"
    await assert_identical(pool, account)
    await handle.terminate()


async def test_backfill_stopped_by_a_password_change_resumes_with_the_new_password(
    make_account: AccountFactory, dovecot: DovecotServer, pool: asyncpg.Pool, client: Client,
    cli_env: dict[str, str],
) -> None:
    """A backfill child whose login is refused reports its folder unfinished: the account queues it
    again and runs it once new credentials work, instead of counting it as running for ever."""
    seeded = corpus(400, seed=45, folders=("INBOX",))
    account = await make_account(seeded)
    dates = sorted(m.internaldate.date() for m in seeded)
    since = dates[-20]  # a small recent window; most of the folder is backfill, in small pages
    tuning = LIVE.model_copy(update={"page_size": 20, "chunk_size": 10, "connection_limit": 2})
    await client.start_workflow(
        AccountSyncWorkflow.run,
        AccountSyncInput(account_id=account.id, tuning=tuning, since=since),
        id=account_workflow_id(account.id), task_queue="mailsync-test",
    )
    handle = client.get_workflow_handle(account_workflow_id(account.id))

    async def backfilling() -> bool:
        p = await progress(handle)
        return p.phase == AccountPhase.backfill and any(f.done > 0 for f in p.backfill)

    assert await until(backfilling, timeout=60), (await progress(handle)).model_dump_json()
    dovecot.set_password(account.username, "rotated-during-backfill")
    await handle.signal(AccountSyncWorkflow.mailbox_changed, MailboxChanged(folder="INBOX"))
    assert await until(lambda: _phase_is(handle, AccountPhase.auth_failed), timeout=60), (await progress(handle)).model_dump_json()
    updated = await run_cli(
        cli_env, "account", "update", account.id, "--password-stdin", input="rotated-during-backfill\n")
    assert updated.returncode == 0, updated.stderr

    async def backfilled() -> bool:
        p = await progress(handle)
        return p.phase == AccountPhase.idle and p.backfill_pending == 0

    assert await until(backfilled, timeout=90), (await progress(handle)).model_dump_json()
    account.password = "rotated-during-backfill"
    await assert_identical(pool, account)
    await handle.terminate()


async def test_a_sync_waiting_on_an_unreachable_server_says_what_it_retries(
    make_account: AccountFactory, dovecot: DovecotServer, client: Client, cli_env: dict[str, str],
) -> None:
    """`sync start --wait` and `sync status` show the failure being retried at once, not after the retries
    are spent (minutes) or never."""
    import sys

    from conftest import REPO

    proxy = ChaosProxy(dovecot.host, dovecot.port).start()
    account = await make_account(corpus(5, seed=46), port=proxy.port)
    proxy.stop()  # nothing listens there any more
    waiting = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "sync", "start", account.id, "--wait", cwd=REPO, env=cli_env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert waiting.stderr is not None
        line = await asyncio.wait_for(waiting.stderr.readline(), 60)
        while b"retrying" not in line:
            line = await asyncio.wait_for(waiting.stderr.readline(), 60)
        assert b"discover_folders (attempt" in line and b"connection refused" in line.lower(), line
    finally:
        waiting.kill()
        await waiting.wait()
    status = await run_cli(cli_env, "sync", "status", account.id)
    assert status.returncode == 0 and "retrying: discover_folders (attempt" in status.stdout, status.stdout
    await client.get_workflow_handle(account_workflow_id(account.id)).terminate()


async def test_new_mail_the_server_will_not_serve_does_not_stall_the_folder(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new message every FETCH answer lacks (injected into the in-process worker's response parser) is
    retried by the pass's attempts, then counted as not stored and named; the next new mail is mirrored."""
    import providers.imap.client as imap_client

    account = await make_account(corpus(10, seed=48, folders=("INBOX",)))
    handle = await start_live(client, account.id)
    c = account.imap()
    try:
        c.append("INBOX", None, None, new_message(11))
        c.select("INBOX")
        bad = int(c.uid("SEARCH", None, "ALL")[1][0].split()[-1])
    finally:
        c.logout()
    real_parse = imap_client.parse_fetch
    monkeypatch.setattr(imap_client, "parse_fetch", lambda lines: [m for m in real_parse(lines) if m.uid != bad])
    skipped = await sync_now(handle)
    assert skipped.new == 0 and skipped.folders[0].error and skipped.folders[0].error.endswith(f"UID {bad}")
    inbox = next(f for f in (await progress(handle)).folders if f.name == "INBOX")
    assert (inbox.failed, inbox.done, inbox.total) == (1, 10, 11)
    monkeypatch.undo()
    account.append("INBOX", None, new_message(12))
    assert (await sync_now(handle)).new == 1
    await handle.terminate()


async def test_a_refusal_of_credentials_replaced_meanwhile_tries_the_new_ones(
    make_account: AccountFactory, dovecot: DovecotServer, pool: asyncpg.Pool, client: Client, box: CredentialBox,
) -> None:
    """The server's password changed; a slow server holds the first login (read with the old password)
    while the user stores the new one and signals it; the old login's refusal arrives after that and
    must not park the account (it would wait for credentials it already has)."""
    from store.accounts import update_credentials

    with ChaosProxy(dovecot.host, dovecot.port) as proxy:
        account = await make_account(corpus(20, seed=49), port=proxy.port)
        dovecot.set_password(account.username, "new-pw")
        proxy.delay_answers(3.0)  # under the 5 s login timeout
        await client.start_workflow(
            AccountSyncWorkflow.run, AccountSyncInput(account_id=account.id, tuning=LIVE),
            id=account_workflow_id(account.id), task_queue="mailsync-test",
        )
        handle = client.get_workflow_handle(account_workflow_id(account.id))
        assert await until(lambda: _connected(proxy), timeout=10)  # discovery has read the old password
        async with pool.acquire() as conn:  # what `account update` does, without its own slow login
            await update_credentials(conn, account.id, box.seal(b"new-pw", account.id))
        await handle.signal(AccountSyncWorkflow.credentials_updated)
        proxy.delay_answers(0)

        async def usable() -> bool:
            p = await progress(handle)
            return p.phase == AccountPhase.idle and p.passes >= 1

        assert await until(usable, timeout=60), (await progress(handle)).model_dump_json()
        assert await pool.fetchval("SELECT status FROM accounts WHERE id = $1", account.id) == "active"
        account.password, account.port = "new-pw", dovecot.port
        await assert_identical(pool, account)
        await handle.terminate()


async def _connected(proxy: ChaosProxy) -> bool:
    return proxy.connections >= 1
