"""Initial IMAP sync end to end on real Dovecot, Temporal dev server and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client, WorkflowFailureError

from devkit.chaos_proxy import ChaosProxy
from devkit.corpus import SeedMessage, generate_corpus, reply_chain
from workflows.account_sync import AccountSyncWorkflow, account_workflow_id
from workflows.models import AccountPhase

from conftest import (
    REPO, TEST_TUNING, AccountFactory, recreate_folder, run_cli, run_sync, server_messages, sha256,
    sync_while_killing_workers, until, verify,
)

pytestmark = pytest.mark.usefixtures("worker")


def corpus(n: int, seed: int, **kw: object) -> list[SeedMessage]:
    kw.setdefault("max_attachment_bytes", 400_000)
    return list(generate_corpus(n, seed=seed, **kw))  # type: ignore[arg-type]


async def db_folder_hashes(pool: asyncpg.Pool, account_id: str) -> dict[str, dict[int, tuple[bytes, int]]]:
    rows = await pool.fetch(
        """SELECT f.name, l.uid, m.sha256, m.size, length(b.raw) AS stored_len
           FROM message_locations l JOIN folders f ON f.id = l.folder_id
           JOIN messages m ON m.id = l.message_pk
           JOIN message_bodies b ON b.account_id = m.account_id AND b.sha256 = m.sha256
           WHERE l.account_id = $1""",
        account_id,
    )
    out: dict[str, dict[int, tuple[bytes, int]]] = {}
    for r in rows:
        assert r["size"] == r["stored_len"]
        out.setdefault(r["name"], {})[r["uid"]] = (bytes(r["sha256"]), r["stored_len"])
    return out


async def snapshot(pool: asyncpg.Pool, account_id: str) -> dict[str, list[tuple]]:
    """Every row mailsync wrote for the account, for before/after comparisons."""
    queries = {
        "messages": "SELECT id, sha256, thread_id, parse_error FROM messages WHERE account_id = $1 ORDER BY id",
        "bodies": "SELECT sha256, md5(raw) FROM message_bodies WHERE account_id = $1 ORDER BY sha256",
        "locations": "SELECT folder_id, uidvalidity, uid, message_pk, flags, updated_at FROM message_locations "
                     "WHERE account_id = $1 ORDER BY 1, 2, 3",
        "threads": "SELECT id, message_count, subject FROM threads WHERE account_id = $1 ORDER BY id",
        "thread_refs": "SELECT ref, thread_id FROM thread_refs WHERE account_id = $1 ORDER BY ref",
        "contacts": "SELECT address, display_name, message_count, first_seen, last_seen FROM contacts "
                    "WHERE account_id = $1 ORDER BY address",
    }
    return {k: [tuple(r) for r in await pool.fetch(q, account_id)] for k, q in queries.items()}


async def assert_exact_mirror(pool: asyncpg.Pool, account) -> None:  # type: ignore[no-untyped-def]
    report = await verify(pool, account)
    assert report.identical, [vars(f) for f in report.folders]
    served = server_messages(account)
    stored = await db_folder_hashes(pool, account.id)
    for folder, msgs in served.items():
        assert {uid: (sha256(raw), len(raw)) for uid, raw in msgs} == stored.get(folder, {}), folder
    # nothing duplicated: one message row per distinct body, one location per served message
    distinct = {sha256(raw) for msgs in served.values() for _, raw in msgs}
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", account.id) == len(distinct)
    assert await pool.fetchval("SELECT count(*) FROM message_locations WHERE account_id = $1", account.id) == sum(
        len(m) for m in served.values()
    )
    # every message threaded and counted (threading runs after the bulk writes, in batches)
    assert await pool.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND thread_id IS NULL", account.id) == 0
    assert await pool.fetchval("SELECT coalesce(sum(message_count), 0) FROM threads WHERE account_id = $1",
                               account.id) == len(distinct)


async def test_full_sync_verify_and_export_byte_identical(
    make_account: AccountFactory, pool: asyncpg.Pool, cli_env: dict[str, str], client: Client, tmp_path: Path,
) -> None:
    account = await make_account(corpus(420, seed=11))
    started = await run_cli(cli_env, "sync", "start", account.id, "--wait")
    assert started.returncode == 0, started.stderr
    assert account_workflow_id(account.id) in started.stdout

    await assert_exact_mirror(pool, account)
    checked = await run_cli(cli_env, "verify", account.id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "identical" in checked.stdout

    served = server_messages(account)
    assert len(served) >= 4
    for folder, msgs in served.items():
        target = tmp_path / folder.replace("/", "_")
        exported = await run_cli(cli_env, "export", account.id, "--folder", folder, "--maildir", str(target))
        assert exported.returncode == 0, exported.stderr
        files = sorted(p.read_bytes() for p in (target / "cur").iterdir())
        assert files == sorted(raw for _, raw in msgs), folder

    # malformed messages are stored raw and flagged, never dropped
    flagged = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND parse_error IS NOT NULL", account.id)
    assert flagged > 0
    progress = await client.get_workflow_handle(account_workflow_id(account.id)).query(AccountSyncWorkflow.progress)
    assert progress.phase in (AccountPhase.idle, AccountPhase.syncing)  # the account stays live
    assert progress.done == progress.total == sum(len(m) for m in served.values())
    assert progress.flagged >= flagged and progress.failed == 0  # a body stored in two folders is counted in each

    # long folders continue-as-new (pages_per_run is tiny in tests): more than one run per big folder
    inbox_id = await pool.fetchval("SELECT id FROM folders WHERE account_id = $1 AND name = 'INBOX'", account.id)
    runs = [w async for w in client.list_workflows(f"WorkflowId = '{account_workflow_id(account.id)}/folder/{inbox_id}'")]
    inbox_pages = -(-len(served["INBOX"]) // TEST_TUNING.page_size)
    assert len(runs) == -(-inbox_pages // TEST_TUNING.pages_per_run)
    assert len(runs) > 1

    status = await run_cli(cli_env, "sync", "status", account.id, "--json")
    assert status.returncode == 0, status.stderr
    assert '"phase": "idle"' in status.stdout or '"phase": "syncing"' in status.stdout


async def test_same_sync_twice_changes_nothing(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    account = await make_account(corpus(150, seed=5))
    await run_sync(client, account.id)
    before = await snapshot(pool, account.id)
    assert before["messages"] and before["threads"] and before["contacts"]
    await run_sync(client, account.id)
    assert await snapshot(pool, account.id) == before


async def test_reply_chain_delivered_out_of_order_is_one_thread(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    chain = reply_chain(8, seed=3)
    order = [7, 5, 3, 1, 6, 0, 4, 2]  # children before parents, and the links arrive last
    messages = [
        SeedMessage(folder="INBOX" if i % 3 else "Archive", raw=chain[i], internaldate=_date(n))
        for n, i in enumerate(order)
    ]
    account = await make_account(messages)
    tuning = TEST_TUNING.model_copy(update={"page_size": 2, "chunk_size": 1})
    await run_sync(client, account.id, tuning=tuning)
    rows = await pool.fetch("SELECT thread_id FROM messages WHERE account_id = $1", account.id)
    assert len(rows) == 8
    assert len({r["thread_id"] for r in rows}) == 1
    count = await pool.fetchval("SELECT message_count FROM threads WHERE id = $1", rows[0]["thread_id"])
    assert count == 8
    assert await pool.fetchval("SELECT count(*) FROM threads WHERE account_id = $1", account.id) == 1


async def test_idle_connection_is_lent_to_the_big_folder_within_the_limit(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    """Once the small folders are done, the big one fetches pages on both of the account's connections,
    and no more than `connection_limit` pages are ever fetched at once."""
    messages = corpus(500, seed=21, folders=("INBOX",)) + corpus(12, seed=22, folders=("Small",))
    account = await make_account(messages)
    tuning = TEST_TUNING.model_copy(update={"page_size": 25, "chunk_size": 25, "pages_per_run": 200})
    await run_sync(client, account.id, tuning=tuning)
    await assert_exact_mirror(pool, account)

    spans: list[tuple[float, float, str]] = []
    lent = 0
    async for wf in client.list_workflows(f"WorkflowId STARTS_WITH '{account_workflow_id(account.id)}/folder/'"):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        started: dict[int, float] = {}
        for e in history.events:
            at = e.event_time.ToDatetime().timestamp()
            if e.HasField("activity_task_started_event_attributes"):
                started[e.activity_task_started_event_attributes.scheduled_event_id] = at
            elif e.HasField("activity_task_completed_event_attributes"):
                spans.append((started[e.activity_task_completed_event_attributes.scheduled_event_id], at, wf.id))
            elif e.HasField("workflow_execution_signaled_event_attributes"):
                lent += e.workflow_execution_signaled_event_attributes.signal_name == "lend_connections"
    inbox_id = await pool.fetchval("SELECT id FROM folders WHERE account_id = $1 AND name = 'INBOX'", account.id)
    inbox = [(a, b) for a, b, wid in spans if wid.endswith(f"/folder/{inbox_id}")]
    assert lent >= 1
    assert any(a2 < b1 and a1 < b2 for i, (a1, b1) in enumerate(inbox) for a2, b2 in inbox[i + 1:]), \
        "the big folder never had two pages in flight"
    edges = sorted([(a, 1) for a, _, _ in spans] + [(b, -1) for _, b, _ in spans])
    in_flight = peak = 0
    for _, step in edges:  # a close sorts before an open at the same instant
        in_flight += step
        peak = max(peak, in_flight)
    assert peak <= tuning.connection_limit


def _date(n: int):  # type: ignore[no-untyped-def]
    from datetime import datetime, timedelta, timezone

    return datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(hours=n)


async def test_wrong_password_is_auth_failed_without_retry_storm(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str], dovecot,  # type: ignore[no-untyped-def]
) -> None:
    # adding an account with a wrong password stores nothing and says why in one line
    probe = await make_account()
    accounts_before = await pool.fetchval("SELECT count(*) FROM accounts")
    added = await run_cli(
        cli_env, "account", "add", "imap", "--host", probe.host, "--port", str(probe.port), "--username",
        probe.username, "--security", "none", "--password-stdin", input="wrong-password\n",
    )
    assert added.returncode == 1
    assert "login failed" in added.stderr and len(added.stderr.strip().splitlines()) == 1, added.stderr
    assert await pool.fetchval("SELECT count(*) FROM accounts") == accounts_before

    # the password changes on the server after the account was added
    with ChaosProxy(dovecot.host, dovecot.port) as proxy:
        account = await make_account(corpus(30, seed=2), port=proxy.port)
        dovecot.set_password(account.username, "changed-elsewhere")
        with pytest.raises(WorkflowFailureError) as failed:
            await run_sync(client, account.id)
        assert "authentication failed" in str(failed.value.cause)
        assert proxy.connections == 1  # one login attempt, no retry storm
        handle = client.get_workflow_handle(account_workflow_id(account.id))
        assert (await handle.query(AccountSyncWorkflow.progress)).phase == AccountPhase.auth_failed
        row = await pool.fetchrow("SELECT status, status_reason FROM accounts WHERE id = $1", account.id)
        assert row["status"] == "auth_failed" and "AUTHENTICATIONFAILED" in row["status_reason"]

        waited = await run_cli(cli_env, "sync", "start", account.id, "--wait")
        assert waited.returncode == 1
        assert "authentication failed" in waited.stderr
        assert proxy.connections == 2


async def test_connection_cut_mid_fetch_is_retried(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, dovecot,  # type: ignore[no-untyped-def]
) -> None:
    with ChaosProxy(dovecot.host, dovecot.port) as proxy:
        account = await make_account(corpus(300, seed=8), port=proxy.port)
        account.port = dovecot.port  # verification reads the server directly
        proxy.cut_after_bytes(150_000, cuts=3)
        await run_sync(client, account.id)
        assert proxy.cuts_done == 3
    await assert_exact_mirror(pool, account)


async def test_worker_killed_repeatedly_mid_sync(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    account = await make_account(corpus(900, seed=21))
    tuning = TEST_TUNING.model_copy(update={"page_size": 40, "chunk_size": 10, "heartbeat_seconds": 3})
    result, kills = await sync_while_killing_workers(
        client, account.id, cli_env, tmp_path, tuning, kills=4, pause=(1.0, 2.5), seed=1234)
    assert kills >= 2, "the sync finished before the worker could be killed twice: grow the corpus"
    assert result.phase == AccountPhase.completed
    assert result.progress.done == result.progress.total
    await assert_exact_mirror(pool, account)
    dup = await pool.fetchval(
        "SELECT count(*) FROM (SELECT sha256 FROM messages WHERE account_id = $1 GROUP BY sha256 HAVING count(*) > 1) d",
        account.id)
    assert dup == 0


async def test_rate_leaves_out_the_time_spent_waiting_for_credentials(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str], dovecot,  # type: ignore[no-untyped-def]
) -> None:
    import time

    from workflows.models import AccountSyncInput

    account = await make_account(corpus(40, seed=23))
    dovecot.set_password(account.username, "rotated-pw")  # before the first login: parked in the initial sync
    started = time.monotonic()
    handle = await client.start_workflow(
        AccountSyncWorkflow.run, AccountSyncInput(account_id=account.id, tuning=TEST_TUNING),
        id=account_workflow_id(account.id), task_queue="mailsync-test",
    )

    async def phase_is(phase: AccountPhase) -> bool:
        return (await handle.query(AccountSyncWorkflow.progress)).phase == phase

    assert await until(lambda: phase_is(AccountPhase.auth_failed))
    await asyncio.sleep(4)
    updated = await run_cli(cli_env, "account", "update", account.id, "--password-stdin", input="rotated-pw\n")
    assert updated.returncode == 0, updated.stderr
    assert await until(lambda: phase_is(AccountPhase.idle), timeout=60)
    wall = time.monotonic() - started
    p = await handle.query(AccountSyncWorkflow.progress)
    assert p.done == p.total == 40
    assert p.messages_per_second > 2 * p.done / wall, (p.messages_per_second, wall)  # the 4 s parked do not count
    await handle.terminate()


async def test_uidvalidity_change_with_two_pages_in_flight_leaves_no_stale_rows(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client,
) -> None:
    """The big folder is recreated (a new UIDVALIDITY) in the middle of its sync, with a connection lent
    to it: it starts over and ends exact, with no location of the old UIDVALIDITY left (a page still in
    flight at the restart is cancelled and awaited first, so it cannot write one after the new plan)."""
    from workflows.models import AccountSyncInput

    messages = (corpus(2000, seed=24, folders=("Big",), max_attachment_bytes=20_000)
                + corpus(10, seed=25, folders=("Small",)))
    account = await make_account(messages)
    tuning = TEST_TUNING.model_copy(update={"page_size": 25, "chunk_size": 25, "pages_per_run": 500})
    handle = await client.start_workflow(
        AccountSyncWorkflow.run, AccountSyncInput(account_id=account.id, tuning=tuning, live=False),
        id=account_workflow_id(account.id), task_queue="mailsync-test",
    )
    stored = lambda: pool.fetchval(  # noqa: E731
        """SELECT count(*) FROM message_locations l JOIN folders f ON f.id = l.folder_id
           WHERE f.account_id = $1 AND f.name = 'Big'""", account.id)

    async def big_underway() -> bool:
        return await stored() >= 100

    assert await until(big_underway, timeout=60, every=0.02)
    recreate_folder(account, "Big")
    assert await stored() < 2000  # recreated mid-sync
    await asyncio.wait_for(handle.result(), 120)
    await assert_exact_mirror(pool, account)  # verify counts a location of another UIDVALIDITY as extra


async def test_a_message_the_server_will_not_serve_is_counted_not_retried_for_ever(
    make_account: AccountFactory, pool: asyncpg.Pool, client: Client, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dovecot lists UID 5 but every FETCH answer lacks it (injected into the in-process worker's response
    parser: a real server's bug cannot be ordered from Dovecot). The page retries it, then records it:
    the sync completes with the message counted as not stored and named, and verify finds it missing."""
    import providers.imap.client as imap_client

    account = await make_account(corpus(30, seed=47, folders=("INBOX",)))
    real_parse = imap_client.parse_fetch
    monkeypatch.setattr(imap_client, "parse_fetch", lambda lines: [m for m in real_parse(lines) if m.uid != 5])
    result = await run_sync(client, account.id)
    inbox = next(f for f in result.progress.folders if f.name == "INBOX")
    assert inbox.phase.value == "done" and inbox.failed == 1 and result.progress.failed == 1
    assert inbox.error is not None and inbox.error.endswith("UID 5")  # kept, whichever page settled last
    assert inbox.done == 29 and inbox.total == 30
    monkeypatch.undo()  # the server serves it again: verify reads it and finds it missing here
    report = await verify(pool, account)
    assert report.totals().missing == 1 and report.totals().extra == 0
    status = await run_cli(cli_env, "sync", "status", account.id)
    assert "not stored" in status.stdout, status.stdout
