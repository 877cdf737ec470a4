"""Gmail accounts end to end: the account workflow against the local Gmail API (devkit.gmail_fake),
driven through google-api-python-client, into the session's PostgreSQL, on the session's Temporal.

The mirror is checked against the fake's own state (ids, exact raw bytes, labels, thread ids), and
quota against the fake's per-user sliding-window counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from config import Settings
from devkit.corpus import generate_corpus
from devkit.gmail_fake import GmailFake
from devkit.gmail_fake.seed import seed_messages
from gateway.server import BackgroundServer
from providers.gmail import AccessDenied, GmailCredentials, GmailSession
from store.accounts import create_account
from store.crypto import CredentialBox
from conftest import TEST_TUNING, run_cli, run_sync, start_live as live_workflow, sync_while_killing_workers, until
from runtime.temporal import update_following_runs
from test_gateway import TOKEN, gateway_settings, signed
from workflows.account_sync import AccountSyncWorkflow, account_workflow_id
from workflows import gmail_flow
from workflows.models import (
    AccountPhase, AccountProgress, AccountSyncInput, MailboxChanged, PassResult, SyncTuning,
)

pytestmark = pytest.mark.usefixtures("worker")

FAST_QUOTA = 5000  # units/s for tests that check the mirror, not the quota (Google's is 250)
FAST = TEST_TUNING.model_copy(update={
    "gmail_quota": FAST_QUOTA, "gmail_children": 3, "gmail_thread_batch": 40, "poll_seconds": 3600,
})
_users = itertools.count(1)


@pytest.fixture(scope="module")
def fake() -> Iterator[GmailFake]:
    with GmailFake.start(quota_limit=FAST_QUOTA) as server:
        yield server


@dataclass
class GmailAccount:
    id: str
    user: str


async def add_gmail_account(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, messages: int = 0, *, seed: int = 0,
    folders: tuple[str, ...] = ("INBOX", "Sent", "Archive", "Lists/Python", "Spam", "Trash"),
) -> GmailAccount:
    user = f"user{next(_users)}-{uuid.uuid4().hex[:6]}@example.com"
    fake.add_user(user)
    if messages:
        fake.seed(user, messages, seed=seed, folders=folders)
    creds = GmailCredentials.oauth("mailsync-test-client", "test-secret", fake.refresh_token(user), token_uri=fake.token_uri)
    account_id = "gm_" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        await create_account(
            conn, account_id=account_id, provider="gmail", address=user, settings={"api_endpoint": fake.endpoint},
            credentials=box.seal(creds.model_dump_json().encode(), account_id),
        )
    return GmailAccount(account_id, user)


async def assert_mirror(pool: asyncpg.Pool, fake: GmailFake, account: GmailAccount) -> None:
    """Every live Gmail message stored byte for byte, with exactly its labels and its Gmail thread."""
    server = {mid: fake.message(account.user, mid) for mid in fake.message_ids(account.user)}
    rows = await pool.fetch(
        """SELECT g.gmail_id, g.gmail_thread_id, b.raw, t.provider_thread_id,
                  array(SELECT l.label_id FROM gmail_message_labels l
                        WHERE l.account_id = g.account_id AND l.gmail_id = g.gmail_id) AS labels
           FROM gmail_messages g JOIN messages m ON m.id = g.message_pk
           JOIN message_bodies b ON b.account_id = m.account_id AND b.sha256 = m.sha256
           LEFT JOIN threads t ON t.id = m.thread_id
           WHERE g.account_id = $1 AND g.deleted_at IS NULL""",
        account.id,
    )
    stored = {r["gmail_id"]: r for r in rows}
    assert set(stored) == set(server), (len(set(server) - set(stored)), len(set(stored) - set(server)))
    for mid, msg in server.items():
        row = stored[mid]
        assert bytes(row["raw"]) == msg.raw, mid
        assert set(row["labels"]) == set(msg.labels), (mid, row["labels"], list(msg.labels))
        assert row["gmail_thread_id"] == msg.thread_id
    # thread membership: every message in the thread row of its Gmail thread; the same bytes under two
    # Gmail ids are one message, in the thread of one of them
    shared = {sha for sha, n in Counter(hashlib.sha256(m.raw).digest() for m in server.values()).items() if n > 1}
    for mid, row in stored.items():
        assert row["provider_thread_id"] is not None, mid
        if hashlib.sha256(server[mid].raw).digest() not in shared:
            assert row["provider_thread_id"] == row["gmail_thread_id"], mid


async def start_live(client: Client, account_id: str, tuning: SyncTuning = FAST) -> WorkflowHandle:
    return await live_workflow(client, account_id, tuning, settle=True, timeout=180)


async def sync_now(handle: WorkflowHandle) -> PassResult:
    return await asyncio.wait_for(handle.execute_update(AccountSyncWorkflow.sync_now), 120)


async def test_full_sync_mirrors_messages_labels_and_threads(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client, cli_env: dict[str, str],
) -> None:
    account = await add_gmail_account(fake, pool, box, 1500, seed=51)
    fake.reset_stats()
    result = await run_sync(client, account.id, tuning=FAST, timeout=300)
    assert result.phase == AccountPhase.completed
    await assert_mirror(pool, fake, account)
    stats = fake.stats(account.user)
    assert stats.calls.get("messages.get", 0) == 1500  # each message fetched once, raw, in batches
    assert stats.batch_requests >= 1500 // 100
    assert stats.max_units_in_window <= FAST_QUOTA
    labels = await pool.fetch("SELECT label_id, name, type FROM gmail_labels WHERE account_id = $1", account.id)
    names = {r["name"] for r in labels}
    assert {"INBOX", "SENT", "SPAM", "TRASH", "Lists/Python"} <= names
    threads = await pool.fetchval(
        "SELECT count(*) FROM threads WHERE account_id = $1 AND provider_thread_id IS NOT NULL", account.id)
    assert 1 < threads < 1500
    assert threads == len(fake.thread_ids(account.user))
    contacts = await pool.fetchval("SELECT count(*) FROM contacts WHERE account_id = $1", account.id)
    assert contacts > 10
    progress: AccountProgress = result.progress
    assert progress.done == 1500 and progress.total == 1500
    # the same sync again changes nothing and downloads nothing
    fake.reset_stats()
    before = await pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", account.id)
    again = await run_sync(client, account.id, tuning=FAST, timeout=300)
    assert again.phase == AccountPhase.completed
    assert fake.stats(account.user).calls.get("messages.get", 0) == 0
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", account.id) == before
    await assert_mirror(pool, fake, account)
    # and the user's own check agrees: ids, thread ids, sha256 of every raw message, every label
    env = cli_env | {"MAILSYNC_GMAIL_QUOTA": str(FAST_QUOTA)}
    verified = await run_cli(env, "verify", account.id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    fake.modify_labels(account.user, fake.message_ids(account.user)[0], add=["STARRED"])
    drifted = await run_cli(env, "verify", account.id)
    assert drifted.returncode != 0 and "label" in drifted.stdout.lower(), drifted.stdout


async def test_history_changes_are_applied_and_expired_history_resyncs_without_downloads(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client
) -> None:
    account = await add_gmail_account(fake, pool, box, 300, seed=52)
    handle = await start_live(client, account.id)
    await assert_mirror(pool, fake, account)
    user = account.user
    ids = fake.message_ids(user)
    # add (one into an existing thread, one new), delete, relabel, trash, a new label
    new_ids = seed_messages(fake, user, generate_corpus(5, seed=99, folders=("INBOX", "Work")))
    fake.delete_message(user, ids[10])
    fake.modify_labels(user, ids[20], add=["STARRED"], remove=["UNREAD"])
    fake.trash(user, ids[30])
    label = fake.create_label(user, "Receipts", color=("#000000", "#ffffff"))
    fake.modify_labels(user, ids[40], add=[label])
    fake.modify_labels(user, new_ids[0], add=[label])  # added then relabelled in the same window
    gone_soon = seed_messages(fake, user, generate_corpus(1, seed=98))[0]
    fake.delete_message(user, gone_soon)  # added and deleted before we look: never fetched
    fake.reset_stats()
    result = await sync_now(handle)
    assert result.error is None
    assert result.new == 5 and result.expunged == 1
    assert result.updated >= 3
    assert fake.stats(user).calls.get("messages.get", 0) == 5
    await assert_mirror(pool, fake, account)
    assert await pool.fetchval(
        "SELECT name FROM gmail_labels WHERE account_id = $1 AND label_id = $2", account.id, label) == "Receipts"
    deleted = await pool.fetchval(
        "SELECT deleted_at IS NOT NULL FROM gmail_messages WHERE account_id = $1 AND gmail_id = $2",
        account.id, ids[10])
    assert deleted
    # nothing new: a pass costs history.list and labels, no message
    fake.reset_stats()
    quiet = await sync_now(handle)
    assert quiet.new == 0 and quiet.expunged == 0 and quiet.updated == 0
    assert fake.stats(user).calls.get("messages.get", 0) == 0

    # Gmail forgets our historyId: 404 -> full resync that downloads only what is new
    more = seed_messages(fake, user, generate_corpus(3, seed=97))
    fake.delete_message(user, ids[50])
    fake.modify_labels(user, ids[60], add=["IMPORTANT", label])
    fake.expire_history(user)
    fake.reset_stats()
    resync = await sync_now(handle)
    assert resync.kind == "resync"
    assert resync.new == 3
    assert resync.expunged == 1
    assert fake.stats(user).calls.get("messages.get", 0) == len(more)
    await assert_mirror(pool, fake, account)
    # the progress row counts the mirror, not what the resync downloaded
    row = (await handle.query(AccountSyncWorkflow.progress)).folders[0]
    stored_bytes = await pool.fetchval(
        """SELECT sum(m.size) FROM gmail_messages g JOIN messages m ON m.id = g.message_pk
           WHERE g.account_id = $1 AND g.deleted_at IS NULL""", account.id)
    assert row.total == row.done == len(fake.message_ids(user)), row
    assert row.bytes >= 0.9 * stored_bytes, (row.bytes, stored_bytes)
    # and history works again from the resync's starting point
    fake.modify_labels(user, ids[70], add=["STARRED"])
    after = await sync_now(handle)
    assert after.kind == "incremental" and after.updated == 1
    await assert_mirror(pool, fake, account)
    row = (await handle.query(AccountSyncWorkflow.progress)).folders[0]
    assert row.total == row.done == len(fake.message_ids(user)) and row.bytes == stored_bytes, row
    await handle.terminate()


async def test_quota_is_never_exceeded_and_a_429_burst_is_absorbed(
    pool: asyncpg.Pool, box: CredentialBox, client: Client
) -> None:
    with GmailFake.start(quota_limit=250) as strict:
        account = await add_gmail_account(strict, pool, box, 400, seed=53)
        strict.reset_stats()
        strict.force_rate_limit(6, user=account.user, retry_after=1)
        tuning = TEST_TUNING.model_copy(update={"gmail_quota": 250, "gmail_children": 2, "gmail_thread_batch": 50})
        started = time.monotonic()
        result = await run_sync(client, account.id, tuning=tuning, timeout=300)
        elapsed = time.monotonic() - started
        assert result.phase == AccountPhase.completed
        await assert_mirror(pool, strict, account)
        stats = strict.stats(account.user)
        assert stats.max_units_in_window <= 250, stats
        assert stats.forced_errors == 6
        # at 250 units/s, 400 raw gets (2,000 units) cannot take less than ~8 s
        assert elapsed > 2000 / 250, elapsed


async def test_revoked_grant_parks_the_account_until_credentials_are_updated(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client
) -> None:
    account = await add_gmail_account(fake, pool, box, 40, seed=54)
    handle = await start_live(client, account.id)
    fake.revoke(account.user)
    fake.reset_stats()
    refreshes = fake.token_refreshes
    with pytest.raises(Exception):
        await sync_now(handle)

    async def parked() -> bool:
        p = await handle.query(AccountSyncWorkflow.progress)
        status = await pool.fetchval("SELECT status FROM accounts WHERE id = $1", account.id)
        return p.phase == AccountPhase.auth_expired and status == "auth_expired"

    assert await until(parked)
    await asyncio.sleep(2.0)
    assert fake.stats(account.user).http_requests <= 2  # no retry storm
    assert fake.token_refreshes == refreshes
    # new consent: a fresh refresh token stored, the workflow told
    token = fake.set_refresh_token(account.user)
    creds = GmailCredentials.oauth("mailsync-test-client", "test-secret", token, token_uri=fake.token_uri)
    await pool.execute(
        "UPDATE accounts SET credentials = $2 WHERE id = $1", account.id,
        box.seal(creds.model_dump_json().encode(), account.id),
    )
    await handle.signal(AccountSyncWorkflow.credentials_updated)

    async def idle() -> bool:
        return (await handle.query(AccountSyncWorkflow.progress)).phase == AccountPhase.idle

    assert await until(idle)
    seed_messages(fake, account.user, generate_corpus(2, seed=96))
    assert (await sync_now(handle)).new == 2
    await assert_mirror(pool, fake, account)
    await handle.terminate()


async def test_worker_killed_mid_fan_out_resumes_without_duplicates(
    pool: asyncpg.Pool, box: CredentialBox, client: Client, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    with GmailFake.start(quota_limit=1500) as slow:
        account = await add_gmail_account(slow, pool, box, 1200, seed=55)
        tuning = TEST_TUNING.model_copy(update={
            "gmail_quota": 1500, "gmail_children": 3, "gmail_thread_batch": 30, "heartbeat_seconds": 3,
        })
        result, kills = await sync_while_killing_workers(
            client, account.id, cli_env, tmp_path, tuning, kills=3, pause=(1.5, 3.0), seed=4321,
            extra_env={"MAILSYNC_WORKER_PROCESSES": "1"})
        assert kills >= 2, "the sync finished before the worker could be killed twice: grow the mailbox"
        assert result.phase == AccountPhase.completed
        await assert_mirror(pool, slow, account)
        assert await pool.fetchval("SELECT count(*) FROM gmail_messages WHERE account_id = $1", account.id) == 1200
        dup = await pool.fetchval(
            """SELECT count(*) FROM (SELECT sha256 FROM messages WHERE account_id = $1
                                     GROUP BY sha256 HAVING count(*) > 1) d""", account.id)
        assert dup == 0
        # resumed, not restarted: re-downloads are bounded by the batches in flight at each kill
        fetched = slow.stats(account.user).calls.get("messages.get", 0)
        assert fetched < 1200 + kills * 3 * 100, fetched


async def test_watch_push_through_the_gateway_syncs_new_mail(
    pool: asyncpg.Pool, box: CredentialBox, client: Client, settings: Settings,
) -> None:
    """users.watch by the workflow, the fake's Pub/Sub push to the real gateway, a signal, a pass."""
    with GmailFake.start(quota_limit=FAST_QUOTA) as pushing, \
            BackgroundServer(gateway_settings(settings, MAILSYNC_TASK_QUEUE="mailsync-test")) as gw:
        pushing.set_push_url(f"{gw.url}/webhooks/gmail?token={TOKEN}")
        account = await add_gmail_account(pushing, pool, box, 30, seed=56)
        tuning = FAST.model_copy(update={
            "gmail_watch_topic": "projects/mailsync-test/topics/gmail", "gmail_watch_renew_seconds": 2.0,
        })
        handle = await start_live(client, account.id, tuning)
        assert pushing.stats(account.user).calls.get("watch", 0) == 1

        async def renewed() -> bool:  # the renewal timer (a day in production) fires by itself
            return pushing.stats(account.user).calls.get("watch", 0) >= 3

        assert await until(renewed, timeout=15)
        new = seed_messages(pushing, account.user, generate_corpus(2, seed=95))

        async def arrived() -> bool:
            n = await pool.fetchval(
                "SELECT count(*) FROM gmail_messages WHERE account_id = $1 AND gmail_id = ANY($2::text[])",
                account.id, new)
            return n == 2

        started = time.monotonic()
        assert await until(arrived, timeout=20), pushing.notifications
        assert time.monotonic() - started < 10
        assert pushing.notifications and pushing.notifications[-1]["emailAddress"] == account.user
        await assert_mirror(pool, pushing, account)
        await handle.terminate()


async def test_since_window_first_then_older_mail_in_the_background(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client, cli_env: dict[str, str],
) -> None:
    account = await add_gmail_account(fake, pool, box, 200, seed=57)
    since = date(2019, 6, 8)
    cut = datetime(2019, 6, 8, tzinfo=timezone.utc).timestamp() * 1000
    recent = {m for m in fake.message_ids(account.user) if fake.message(account.user, m).internal_date_ms >= cut}
    assert 20 < len(recent) < 180
    # small pages of older mail, so the backfill takes several steps between passes
    tuning = FAST.model_copy(update={"gmail_thread_batch": 10, "gmail_children": 1, "gmail_quota": 400})
    await client.start_workflow(
        AccountSyncWorkflow.run, AccountSyncInput(account_id=account.id, tuning=tuning, since=since),
        id=account_workflow_id(account.id), task_queue="mailsync-test",
    )
    handle = client.get_workflow_handle(account_workflow_id(account.id))
    usable = await asyncio.wait_for(update_following_runs(handle, AccountSyncWorkflow.wait_initial), 120)
    assert usable.phase == AccountPhase.backfill
    stored = {r["gmail_id"] for r in await pool.fetch(
        "SELECT gmail_id FROM gmail_messages WHERE account_id = $1", account.id)}
    assert recent <= stored  # usable: the whole window is there when wait_initial returns
    # a pause stops the backfill between two children, not after a whole page
    await handle.signal(AccountSyncWorkflow.pause)

    async def paused() -> bool:
        return (await handle.query(AccountSyncWorkflow.progress)).phase == AccountPhase.paused

    assert await until(paused, timeout=15)
    count = lambda: pool.fetchval("SELECT count(*) FROM gmail_messages WHERE account_id = $1", account.id)  # noqa: E731
    held = await count()
    await asyncio.sleep(1.5)
    assert await count() == held < 200
    await handle.signal(AccountSyncWorkflow.resume)

    async def complete() -> bool:
        p = await handle.query(AccountSyncWorkflow.progress)
        return p.phase == AccountPhase.idle

    assert await until(complete, timeout=120)
    await assert_mirror(pool, fake, account)
    # a change during/after the backfill is picked up by the next pass
    fake.modify_labels(account.user, sorted(recent)[0], add=["STARRED"])
    assert (await sync_now(handle)).updated == 1
    await assert_mirror(pool, fake, account)
    await handle.terminate()
    # verify --window compares the window only; a message the mirror lost is found inside it, not outside
    older = sorted(set(fake.message_ids(account.user)) - recent)[0]
    await pool.execute("UPDATE gmail_messages SET deleted_at = now() WHERE account_id = $1 AND gmail_id = $2",
                       account.id, older)
    env = cli_env | {"MAILSYNC_GMAIL_QUOTA": str(FAST_QUOTA)}
    windowed = await run_cli(env, "verify", account.id, "--window", since.isoformat(), "--json")
    assert windowed.returncode == 0, windowed.stdout + windowed.stderr
    assert json.loads(windowed.stdout)["server"] == len(recent)
    whole = await run_cli(env, "verify", account.id, "--json")
    assert whole.returncode == 2 and json.loads(whole.stdout)["missing"] == 1, whole.stdout
    await pool.execute("UPDATE gmail_messages SET deleted_at = now() WHERE account_id = $1 AND gmail_id = $2",
                       account.id, sorted(recent)[1])
    holed = await run_cli(env, "verify", account.id, "--window", since.isoformat(), "--json")
    assert holed.returncode == 2 and json.loads(holed.stdout)["missing"] == 1, holed.stdout


async def test_grant_expired_webhook_parks_a_running_gmail_account(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client, settings: Settings,
) -> None:
    account = await add_gmail_account(fake, pool, box, 20, seed=58)
    handle = await start_live(client, account.id)
    with BackgroundServer(gateway_settings(settings, MAILSYNC_TASK_QUEUE="mailsync-test")) as gw:
        body = json.dumps({
            "specversion": "1.0", "type": "grant.expired", "source": "/google", "id": uuid.uuid4().hex,
            "time": 1739223251, "data": {"object": {"grant_id": account.id, "code": 25009}},
        }).encode()
        async with httpx.AsyncClient(base_url=gw.url, timeout=15) as http:
            r = await http.post("/webhooks/events", content=body, headers=signed(body))
        assert r.status_code == 202, r.text
    fake.reset_stats()

    async def parked() -> bool:
        p = await handle.query(AccountSyncWorkflow.progress)
        return p.phase == AccountPhase.auth_expired

    assert await until(parked)
    assert await pool.fetchval("SELECT status FROM accounts WHERE id = $1", account.id) == "auth_expired"
    await asyncio.sleep(1.0)
    assert fake.stats(account.user).http_requests == 0  # parked: nothing is tried until new credentials
    await handle.signal(AccountSyncWorkflow.credentials_updated)

    async def idle() -> bool:
        return (await handle.query(AccountSyncWorkflow.progress)).phase == AccountPhase.idle

    assert await until(idle)
    await handle.terminate()


# ---- regressions found in review: continue-as-new, auth and lost children mid-listing ----------------


async def test_one_shot_then_live_applies_what_changed_in_between(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client
) -> None:
    account = await add_gmail_account(fake, pool, box, 60, seed=71)
    await run_sync(client, account.id, tuning=FAST, timeout=120)
    ids = fake.message_ids(account.user)
    fake.delete_message(account.user, ids[5])
    fake.modify_labels(account.user, ids[6], add=["STARRED"])
    handle = await start_live(client, account.id)  # a fresh run over an existing mirror reconciles it
    try:
        await assert_mirror(pool, fake, account)
    finally:
        await handle.terminate()


async def test_a_refused_watch_is_a_watch_error_not_a_stuck_workflow(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Gmail answers users.watch 403 when the Pub/Sub topic does not let gmail-api-push publish
    async def denied(self, topic, label_ids=None, *, label_filter_behavior="include"):  # type: ignore[no-untyped-def]
        raise AccessDenied("watch: HTTP 403 (Error sending test message to Cloud PubSub: User not authorized)")

    monkeypatch.setattr(GmailSession, "watch", denied)
    account = await add_gmail_account(fake, pool, box, 20, seed=74)
    tuning = FAST.model_copy(update={"gmail_watch_topic": "projects/p/topics/gmail"})
    handle = await start_live(client, account.id, tuning)
    p = await handle.query(AccountSyncWorkflow.progress)
    assert p.phase == AccountPhase.idle and "watch" in (p.last_error or ""), p
    failed = [e async for e in handle.fetch_history_events()
              if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    assert not failed
    seed_messages(fake, account.user, generate_corpus(1, seed=94))
    assert (await sync_now(handle)).new == 1  # still syncing
    await handle.terminate()


async def test_continue_as_new_mid_listing_keeps_wait_initial_and_lost_batches(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gmail_flow, "_LISTING_HISTORY_LIMIT", 60)  # continue-as-new every few pages
    monkeypatch.setattr(gmail_flow, "PAUSE_AFTER_EXHAUSTED", timedelta(seconds=1))
    account = await add_gmail_account(fake, pool, box, 1600, seed=76)
    tuning = FAST.model_copy(update={"gmail_thread_batch": 100, "gmail_children": 2, "gmail_quota": 800})
    await client.start_workflow(
        AccountSyncWorkflow.run, AccountSyncInput(account_id=account.id, tuning=tuning),
        id=account_workflow_id(account.id), task_queue="mailsync-test",
    )
    handle = client.get_workflow_handle(account_workflow_id(account.id))
    waiting = asyncio.create_task(update_following_runs(handle, AccountSyncWorkflow.wait_initial))
    killed = None
    for _ in range(400):  # terminate one running child: its batch is lost and must be listed again
        async for wf in client.list_workflows(
            f"WorkflowId STARTS_WITH 'account-sync/{account.id}/threads/' AND ExecutionStatus = 'Running'"
        ):
            killed = wf.id
            break
        if killed:
            break
        await asyncio.sleep(0.05)
    assert killed
    await client.get_workflow_handle(killed).terminate()
    usable = await asyncio.wait_for(waiting, 180)  # answered although the run continued-as-new meanwhile
    assert usable.runs > 1
    try:
        await assert_mirror(pool, fake, account)
    finally:
        await handle.terminate()


async def test_grant_revoked_mid_resync_loses_nothing(
    pool: asyncpg.Pool, box: CredentialBox, client: Client
) -> None:
    with GmailFake.start(quota_limit=400) as slow:
        account = await add_gmail_account(slow, pool, box, 50, seed=72)
        tuning = FAST.model_copy(update={"gmail_quota": 400, "gmail_children": 2, "gmail_thread_batch": 200})
        handle = await start_live(client, account.id, tuning)
        seed_messages(slow, account.user, generate_corpus(1200, seed=73))
        slow.expire_history(account.user)
        await handle.signal(AccountSyncWorkflow.mailbox_changed, MailboxChanged(source="test"))

        async def deep() -> bool:
            p = await handle.query(AccountSyncWorkflow.progress)
            return p.phase == AccountPhase.initial and p.done > 100

        assert await until(deep, timeout=120)
        slow.revoke(account.user)

        async def parked() -> bool:
            return (await handle.query(AccountSyncWorkflow.progress)).phase == AccountPhase.auth_expired

        assert await until(parked, timeout=60)
        token = slow.set_refresh_token(account.user)
        creds = GmailCredentials.oauth("mailsync-test-client", "test-secret", token, token_uri=slow.token_uri)
        await pool.execute("UPDATE accounts SET credentials = $2 WHERE id = $1", account.id,
                           box.seal(creds.model_dump_json().encode(), account.id))
        await handle.signal(AccountSyncWorkflow.credentials_updated)

        async def idle() -> bool:
            p = await handle.query(AccountSyncWorkflow.progress)
            return p.phase == AccountPhase.idle and all(f.phase.value == "done" for f in p.folders)

        assert await until(idle, timeout=240), await handle.query(AccountSyncWorkflow.progress)
        try:
            await assert_mirror(pool, slow, account)
        finally:
            await handle.terminate()


async def test_a_message_gmail_refuses_is_left_out_recorded_and_fetched_once_served(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client, cli_env: dict[str, str],
) -> None:
    """Gmail's 400 failedPrecondition: an intermittent one is retried inside the batch; one that lasts
    does not stall the sync (the rest is mirrored), is recorded and shown, and is fetched once served."""
    account = await add_gmail_account(fake, pool, box, 60, seed=61)
    ids = fake.message_ids(account.user)
    stubborn, flaky = ids[5], ids[17]
    fake.refuse_message(account.user, stubborn)          # for good, until served
    fake.refuse_message(account.user, flaky, times=2)    # passes on the next attempt but one
    handle = await start_live(client, account.id)
    stored = lambda: pool.fetchval(  # noqa: E731
        "SELECT array_agg(gmail_id) FROM gmail_messages WHERE account_id = $1 AND deleted_at IS NULL", account.id)
    held = set(await stored())
    assert flaky in held and stubborn not in held and len(held) == len(ids) - 1
    refused = await pool.fetch("SELECT gmail_id, reason, attempts FROM gmail_refused WHERE account_id = $1",
                               account.id)
    assert [(r["gmail_id"], r["attempts"]) for r in refused] == [(stubborn, 1)]
    assert "400" in refused[0]["reason"] and "failedPrecondition" in refused[0]["reason"]
    p: AccountProgress = await handle.query(AccountSyncWorkflow.progress)
    assert p.failed == 1 and p.last_error and p.last_error.startswith("Gmail refuses 1 message")
    env = cli_env | {"MAILSYNC_GMAIL_QUOTA": str(FAST_QUOTA)}
    checked = await run_cli(env, "verify", account.id, "--json")
    assert checked.returncode == 2 and json.loads(checked.stdout)["missing"] == 1, checked.stdout

    # not asked again before it is due (2 minutes after a first refusal, doubling), then asked by a pass
    fake.reset_stats()
    await sync_now(handle)
    assert fake.stats(account.user).calls.get("messages.get", 0) == 0
    await pool.execute("UPDATE gmail_refused SET last_refused = now() - interval '1 hour' WHERE account_id = $1",
                       account.id)
    await sync_now(handle)
    assert fake.stats(account.user).calls.get("messages.get", 0) == 3  # one attempt and two retries
    assert await pool.fetchval("SELECT attempts FROM gmail_refused WHERE account_id = $1", account.id) == 2

    fake.serve_message(account.user, stubborn)
    await pool.execute("UPDATE gmail_refused SET last_refused = now() - interval '1 day' WHERE account_id = $1",
                       account.id)
    await sync_now(handle)
    assert stubborn in set(await stored())
    assert await pool.fetchval("SELECT count(*) FROM gmail_refused WHERE account_id = $1", account.id) == 0
    p = await handle.query(AccountSyncWorkflow.progress)
    assert p.failed == 0 and not (p.last_error or "").startswith("Gmail refuses")
    await assert_mirror(pool, fake, account)
    await handle.terminate()
    # stored, then refused to verify: not compared, so not called identical
    fake.refuse_message(account.user, stubborn)
    unverified = await run_cli(env, "verify", account.id, "--json")
    report = json.loads(unverified.stdout)
    assert unverified.returncode == 2 and report["unverified"] == 1 and report["missing"] == 0, unverified.stdout
    fake.serve_message(account.user, stubborn)


async def test_reconcile_cut_short_resumes_from_its_last_page(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, client: Client, settings: Settings,
) -> None:
    """A resync's reconcile of a mailbox too big for one attempt: the listing is staged page by page and
    a retried attempt goes on from the page its heartbeat recorded, not from the top."""
    from temporalio.testing import ActivityEnvironment

    from activities.deps import Deps
    from activities.gmail_sync import GmailActivities
    from workflows.models import GmailReconcileInput

    account = await add_gmail_account(fake, pool, box, 80, seed=62)
    await run_sync(client, account.id, tuning=FAST, timeout=300)
    ids = fake.message_ids(account.user)
    for gone in ids[:3]:
        fake.delete_message(account.user, gone)
    fake.modify_labels(account.user, ids[10], add=["STARRED"])
    fake.modify_labels(account.user, ids[11], remove=["INBOX"])
    activities = GmailActivities(Deps(pool, box, settings))
    inp = GmailReconcileInput(account_id=account.id, units_per_second=FAST_QUOTA, page_size=10)

    class Crash(Exception):
        pass

    beats: list[dict] = []

    def crash_mid_listing(*details: object) -> None:
        cp = details[0] if details else None
        if cp is None:
            return
        beats.append(cp.model_dump())  # type: ignore[attr-defined]
        if beats[-1]["scope"] == 0 and beats[-1]["listed"] >= 40:
            raise Crash("worker lost")

    first = ActivityEnvironment()
    first.on_heartbeat = crash_mid_listing
    fake.reset_stats()
    with pytest.raises(Exception):
        await first.run(activities.gmail_reconcile, inp)
    listed_before_crash = fake.stats(account.user).calls["messages.list"]
    assert beats[-1]["token"] and await pool.fetchval(
        "SELECT count(*) FROM gmail_listing WHERE account_id = $1", account.id) >= 40

    second = ActivityEnvironment()
    second.info = dataclasses.replace(second.info, heartbeat_details=[beats[-1]])
    fake.reset_stats()
    result = await second.run(activities.gmail_reconcile, inp)
    resumed_calls = fake.stats(account.user).calls["messages.list"]
    assert result.resumed and result.deleted == 3 and result.label_rows_changed >= 2
    assert result.listed == len(ids) - 3  # the pages before the crash counted once
    assert await pool.fetchval("SELECT count(*) FROM gmail_listing WHERE account_id = $1", account.id) == 0
    await assert_mirror(pool, fake, account)

    fake.reset_stats()
    fresh = await ActivityEnvironment().run(activities.gmail_reconcile, inp)
    assert not fresh.resumed and fresh.deleted == 0 and fresh.label_rows_changed == 0
    full_listing = fake.stats(account.user).calls["messages.list"]
    assert resumed_calls <= full_listing - (listed_before_crash - 1)  # nothing before the crash listed again
