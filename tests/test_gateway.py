"""The webhook gateway for real: uvicorn on a loopback port, the session's Temporal and PostgreSQL.

No mailsync worker polls the gateway's task queues, so a workflow the gateway starts just waits
with its first task pending; every assertion about signals is read back from Temporal itself
(describe + history), not from the gateway's answers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from config import Settings
from gateway.auth import sign
from gateway.models import MailboxChanged
from gateway.server import BackgroundServer
from gateway.settings import GatewaySettings
from runtime.dev import temporal_binary
from store.accounts import create_account
from workflows.account_sync import account_workflow_id
from workflows.models import AccountPhase, AccountProgress, AccountSyncInput

TOKEN = "pubsub-shared-token"
SECRET = "webhook-hmac-secret"
SIG = "X-Mailsync-Signature"


def gateway_settings(base: Settings, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "DATABASE_URL": base.database_url, "TEMPORAL_ADDRESS": base.temporal_address,
        "MAILSYNC_STATE_DIR": base.state_dir,
        # A task queue nobody polls: started workflows wait, and signals stay in their history.
        "MAILSYNC_TASK_QUEUE": "gateway-test-" + uuid.uuid4().hex[:8],
        "MAILSYNC_PUBSUB_TOKEN": TOKEN, "MAILSYNC_WEBHOOK_SECRET": SECRET,
        "MAILSYNC_GATEWAY_TEMPORAL_TIMEOUT": 2, "MAILSYNC_GATEWAY_QUERY_TIMEOUT": 1,
        "MAILSYNC_GATEWAY_DB_TIMEOUT": 2, "MAILSYNC_GATEWAY_RETRY_AFTER": 7,
    }
    values.update(overrides)
    return GatewaySettings(**values)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture(scope="module")
def gateway(settings: Settings, pool: asyncpg.Pool) -> Iterator[BackgroundServer]:
    # `pool` is requested for its side effect: the schema is migrated before the gateway serves.
    with BackgroundServer(gateway_settings(settings)) as server:
        yield server


@pytest.fixture
async def http(gateway: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as c:
        yield c


async def add_account(pool: asyncpg.Pool, provider: str = "gmail", address: str | None = None) -> tuple[str, str]:
    account_id = "acc_" + uuid.uuid4().hex[:12]
    address = address or f"User.{uuid.uuid4().hex[:8]}@Example.test"
    async with pool.acquire() as conn:
        await create_account(conn, account_id=account_id, provider=provider, address=address,
                             settings={}, credentials=b"sealed")
    return account_id, address


def pubsub_push(address: str, history_id: int | str, *, data: str | None = None) -> dict[str, Any]:
    note = json.dumps({"emailAddress": address, "historyId": history_id}).encode()
    return {
        "message": {
            "data": data if data is not None else base64.b64encode(note).decode(),
            "messageId": uuid.uuid4().hex, "message_id": "x", "publishTime": "2026-01-01T00:00:00.123Z",
            "attributes": {},
        },
        "subscription": "projects/mailsync-test/subscriptions/gmail-push",
    }


def event(kind: str, account_id: str | None, *, key: str = "grant_id", **obj: Any) -> bytes:
    if account_id is not None:
        obj[key] = account_id
    body = {"specversion": "1.0", "type": kind, "source": "/google/emails/realtime", "id": uuid.uuid4().hex,
            "time": 1739223251, "webhook_delivery_attempt": 1,
            "data": {"application_id": "app", "object": {"id": "m1", "object": "message", **obj}}}
    return json.dumps(body).encode()


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {SIG: sign(secret, body), "Content-Type": "application/json"}


async def history(client: Client, account_id: str) -> tuple[int, list[tuple[str, Any]]]:
    """(number of WorkflowExecutionStarted events, [(signal name, decoded payload)]) of the account's workflow."""
    started, signals = 0, []
    async for e in client.get_workflow_handle(account_workflow_id(account_id)).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started += 1
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs = e.workflow_execution_signaled_event_attributes
            signals.append((attrs.signal_name, [json.loads(p.data) for p in attrs.input.payloads]))
    return started, signals


async def workflow_exists(client: Client, account_id: str) -> bool:
    try:
        await client.get_workflow_handle(account_workflow_id(account_id)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def status_of(pool: asyncpg.Pool, account_id: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT status, status_reason FROM accounts WHERE id = $1", account_id)


# --- Gmail push ----------------------------------------------------------------------------------


async def test_gmail_push_starts_the_workflow_then_signals_the_running_one(
    http: httpx.AsyncClient, gateway: BackgroundServer, client: Client, pool: asyncpg.Pool,
) -> None:
    account_id, address = await add_account(pool)
    assert not await workflow_exists(client, account_id)

    # Gmail addresses are case-insensitive; Google's guide shows historyId as a string.
    r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address.lower(), "1234"))
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "signaled" and r.json()["accounts"] == [account_id]

    handle = client.get_workflow_handle(account_workflow_id(account_id))
    first = await handle.describe()
    assert first.status == WorkflowExecutionStatus.RUNNING
    assert first.workflow_type == "AccountSyncWorkflow"
    assert first.raw_description.workflow_execution_info.task_queue == gateway.settings.task_queue
    started, signals = await history(client, account_id)
    assert started == 1
    assert signals == [("mailbox_changed", [{"source": "gmail-push", "folder": None, "history_id": 1234}])]
    # The payload is exactly what the workflow's model parses.
    assert MailboxChanged.model_validate(signals[0][1][0]).history_id == 1234

    # Second push, bearer token this time: same run, one more signal, still one start.
    r = await http.post("/webhooks/gmail", headers={"Authorization": f"Bearer {TOKEN}"},
                        json=pubsub_push(address, 1240))
    assert r.status_code == 202, r.text
    assert (await handle.describe()).run_id == first.run_id
    started, signals = await history(client, account_id)
    assert started == 1
    assert [s[1][0]["history_id"] for s in signals] == [1234, 1240]

    # The input the workflow was started with carries the account id only (no secrets in history).
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            payload = e.workflow_execution_started_event_attributes.input.payloads[0]
            assert AccountSyncInput.model_validate_json(payload.data).account_id == account_id
            break


async def test_pubsub_token_is_required_and_checked(
    http: httpx.AsyncClient, client: Client, pool: asyncpg.Pool,
) -> None:
    account_id, address = await add_account(pool)
    body = pubsub_push(address, 77)
    r = await http.post("/webhooks/gmail", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert (await http.post("/webhooks/gmail", params={"token": "wrong"}, json=body)).status_code == 403
    r = await http.post("/webhooks/gmail", headers={"Authorization": "Bearer wrong"}, json=body)
    assert r.status_code == 403
    assert (await http.post("/webhooks/gmail", params={"token": TOKEN + "x"}, json=body)).status_code == 403
    assert not await workflow_exists(client, account_id), "a rejected push must not signal anything"
    assert (await http.post("/webhooks/gmail", params={"token": TOKEN}, json=body)).status_code == 202
    assert await workflow_exists(client, account_id)


async def test_pubsub_token_source_can_be_restricted(settings: Settings, pool: asyncpg.Pool) -> None:
    _, address = await add_account(pool)
    with BackgroundServer(gateway_settings(settings, MAILSYNC_PUBSUB_TOKEN_SOURCE="query")) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            body = pubsub_push(address, 5)
            r = await http.post("/webhooks/gmail", headers={"Authorization": f"Bearer {TOKEN}"}, json=body)
            assert r.status_code == 401, "a bearer token is not accepted when only the query parameter is"
            assert (await http.post("/webhooks/gmail", params={"token": TOKEN}, json=body)).status_code == 202


async def test_unknown_address_is_acknowledged_and_logged(
    http: httpx.AsyncClient, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailsync.gateway")
    # An IMAP account with the address does not count: Gmail pushes are for Gmail accounts.
    _, imap_address = await add_account(pool, provider="imap")
    for address in ("nobody-" + uuid.uuid4().hex[:6] + "@example.test", imap_address):
        r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address, 9))
        assert r.status_code == 202, r.text
        assert r.json() == {"status": "ignored", "accounts": [], "detail": "no gmail account with this address"}
        assert any(address in rec.getMessage() and "unknown address" in rec.getMessage() for rec in caplog.records)


async def test_malformed_pubsub_push_is_422_with_the_error(http: httpx.AsyncClient) -> None:
    post = lambda body, **kw: http.post("/webhooks/gmail", params={"token": TOKEN}, **kw, json=body)  # noqa: E731
    r = await post(pubsub_push("a@b.test", 1, data="%%% not base64 %%%"))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["message", "data"]
    assert "base64" in r.json()["detail"][0]["msg"]

    r = await post(pubsub_push("a@b.test", "not-a-number"))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["message", "data", "historyId"]

    no_message = await http.post("/webhooks/gmail", params={"token": TOKEN}, json={"subscription": "s"})
    assert no_message.status_code == 422 and no_message.json()["detail"][0]["loc"] == ["message"]

    not_json = await http.post("/webhooks/gmail", params={"token": TOKEN}, content=b"{nope",
                               headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"

    # Authentication comes first: an unauthenticated caller cannot probe the schema.
    assert (await http.post("/webhooks/gmail", json={"junk": 1})).status_code == 401


async def test_push_does_not_start_a_workflow_for_an_auth_expired_account(
    http: httpx.AsyncClient, client: Client, pool: asyncpg.Pool, gateway: BackgroundServer,
) -> None:
    account_id, address = await add_account(pool)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET status = 'auth_expired' WHERE id = $1", account_id)
    r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address, 3))
    assert r.status_code == 202 and r.json()["status"] == "ignored"
    assert not await workflow_exists(client, account_id), "starting it would only fail authentication again"

    # A running workflow (waiting for new credentials, say) still hears about changes.
    await client.start_workflow(
        "AccountSyncWorkflow", AccountSyncInput(account_id=account_id), id=account_workflow_id(account_id),
        task_queue=gateway.settings.task_queue,
    )
    r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address, 4))
    assert r.status_code == 202 and r.json()["status"] == "signaled"
    assert (await history(client, account_id))[1] == [
        ("mailbox_changed", [{"source": "gmail-push", "folder": None, "history_id": 4}])
    ]


# --- provider-neutral events ---------------------------------------------------------------------


async def test_event_signals_a_workflow_that_is_already_running(
    http: httpx.AsyncClient, client: Client, pool: asyncpg.Pool, gateway: BackgroundServer,
) -> None:
    account_id, _ = await add_account(pool, provider="imap")
    existing = await client.start_workflow(
        "AccountSyncWorkflow", AccountSyncInput(account_id=account_id), id=account_workflow_id(account_id),
        task_queue=gateway.settings.task_queue,
    )
    for kind, extra in (("message.created", {"folders": ["INBOX"]}),
                        ("message.updated.truncated", {"folders": ["INBOX", "Work"]}),
                        ("thread.replied", {"folder": "Sent"})):
        body = event(kind, account_id, key="account_id", **extra)
        r = await http.post("/webhooks/events", content=body, headers=signed(body))
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "signaled"
    assert (await client.get_workflow_handle(existing.id).describe()).run_id == existing.result_run_id
    started, signals = await history(client, account_id)
    assert started == 1
    assert signals == [
        ("mailbox_changed", [{"source": "webhook:message.created", "folder": "INBOX", "history_id": None}]),
        ("mailbox_changed", [{"source": "webhook:message.updated", "folder": None, "history_id": None}]),
        ("mailbox_changed", [{"source": "webhook:thread.replied", "folder": "Sent", "history_id": None}]),
    ]


async def test_event_signature_checks(http: httpx.AsyncClient, client: Client, pool: asyncpg.Pool) -> None:
    account_id, _ = await add_account(pool)
    body = event("message.created", account_id)
    json_ct = {"Content-Type": "application/json"}

    missing = await http.post("/webhooks/events", content=body, headers=json_ct)
    assert missing.status_code == 401 and SIG in missing.json()["detail"]
    wrong_secret = await http.post("/webhooks/events", content=body, headers=signed(body, "other-secret"))
    assert wrong_secret.status_code == 401 and wrong_secret.json()["detail"] == "signature mismatch"
    # A valid signature of a different body: the signature covers the exact raw bytes.
    tampered = body.replace(b'"m1"', b'"m2"')
    assert (await http.post("/webhooks/events", content=tampered, headers=signed(body))).status_code == 401
    garbage = await http.post("/webhooks/events", content=body, headers={SIG: "zz\u00e9".encode("latin-1")})
    assert garbage.status_code == 401
    assert not await workflow_exists(client, account_id), "a rejected event must not signal anything"

    # Upper-case hex and a `sha256=` prefix are the same signature.
    prefixed = {SIG: "sha256=" + sign(SECRET, body).upper(), **json_ct}
    assert (await http.post("/webhooks/events", content=body, headers=prefixed)).status_code == 202
    assert (await http.post("/webhooks/events", content=body, headers=signed(body))).status_code == 202
    started, signals = await history(client, account_id)
    assert started == 1 and [name for name, _ in signals] == ["mailbox_changed", "mailbox_changed"]


async def test_malformed_event_is_422_with_the_pydantic_error(http: httpx.AsyncClient) -> None:
    no_object = json.dumps({"type": "message.created", "data": {}}).encode()
    r = await http.post("/webhooks/events", content=no_object, headers=signed(no_object))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["data", "object"]
    assert r.json()["detail"][0]["type"] == "missing"

    no_account = event("message.created", None)
    r = await http.post("/webhooks/events", content=no_account, headers=signed(no_account))
    assert r.status_code == 422 and "grant_id" in r.json()["detail"][0]["msg"]

    bad_json = b'{"type": "message.created", '
    r = await http.post("/webhooks/events", content=bad_json, headers=signed(bad_json))
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"

    # Unsigned garbage is refused before it is parsed.
    assert (await http.post("/webhooks/events", content=bad_json)).status_code == 401


async def test_unknown_account_and_unhandled_types_are_acknowledged(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailsync.gateway")
    ghost = "acc_" + uuid.uuid4().hex[:12]
    body = event("message.created", ghost)
    r = await http.post("/webhooks/events", content=body, headers=signed(body))
    assert r.status_code == 202 and r.json()["status"] == "ignored" and r.json()["detail"] == "unknown account"
    assert any(ghost in rec.getMessage() for rec in caplog.records)

    other = event("calendar.created", None)
    r = await http.post("/webhooks/events", content=other, headers=signed(other))
    assert r.status_code == 202 and r.json()["status"] == "ignored"


async def test_nylas_style_endpoint_challenge(http: httpx.AsyncClient) -> None:
    r = await http.get("/webhooks/events", params={"challenge": "abc123XYZ"})
    assert r.status_code == 200 and r.text == "abc123XYZ"


async def test_grant_expired_marks_the_account_and_signals_the_workflow(
    http: httpx.AsyncClient, client: Client, pool: asyncpg.Pool, gateway: BackgroundServer,
) -> None:
    # No workflow running: the status still changes (visible without any worker), nothing is started.
    idle_id, _ = await add_account(pool)
    body = event("grant.expired", idle_id, code=25009, provider="google", email="x@example.test")
    r = await http.post("/webhooks/events", content=body, headers=signed(body))
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "recorded", "accounts": [idle_id], "detail": None}
    row = await status_of(pool, idle_id)
    assert row["status"] == "auth_expired" and "grant expired" in row["status_reason"]
    assert not await workflow_exists(client, idle_id)

    # A running workflow gets credentials_expired with the reason.
    running_id, _ = await add_account(pool)
    await client.start_workflow(
        "AccountSyncWorkflow", AccountSyncInput(account_id=running_id), id=account_workflow_id(running_id),
        task_queue=gateway.settings.task_queue,
    )
    body = event("grant.expired", running_id, code=25009, provider="google")
    r = await http.post("/webhooks/events", content=body, headers=signed(body))
    assert r.status_code == 202 and r.json()["status"] == "signaled"
    assert (await status_of(pool, running_id))["status"] == "auth_expired"
    _, signals = await history(client, running_id)
    assert len(signals) == 1 and signals[0][0] == "credentials_expired"
    assert "grant expired" in signals[0][1][0]["reason"]

    # Redelivery (at-least-once senders) is harmless.
    r = await http.post("/webhooks/events", content=body, headers=signed(body))
    assert r.status_code == 202 and (await status_of(pool, running_id))["status"] == "auth_expired"


# --- dependencies down ---------------------------------------------------------------------------


async def test_temporal_unreachable_is_503_with_retry_after(settings: Settings, pool: asyncpg.Pool) -> None:
    account_id, address = await add_account(pool)
    with closed_port() as port, BackgroundServer(gateway_settings(settings, TEMPORAL_ADDRESS=f"127.0.0.1:{port}")) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            t0 = time.monotonic()
            r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address, 1))
            assert r.status_code == 503 and r.headers["retry-after"] == "7"
            assert r.json()["service"] == "temporal"
            assert time.monotonic() - t0 < 3

            body = event("message.created", account_id)
            r = await http.post("/webhooks/events", content=body, headers=signed(body))
            assert r.status_code == 503 and r.headers["retry-after"] == "7"

            # grant.expired: the row is updated first, and the sender is told to retry the signal.
            body = event("grant.expired", account_id)
            r = await http.post("/webhooks/events", content=body, headers=signed(body))
            assert r.status_code == 503
            assert (await status_of(pool, account_id))["status"] == "auth_expired"

            r = await http.get("/readyz")
            assert r.status_code == 503 and r.headers["retry-after"] == "7"
            assert r.json()["postgresql"] == "ok" and r.json()["temporal"].startswith("unavailable")

            assert (await http.get(f"/accounts/{account_id}/progress")).status_code == 503


async def test_temporal_going_away_after_startup_is_503_within_the_budget(
    settings: Settings, pool: asyncpg.Pool,
) -> None:
    _, address = await add_account(pool)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), data_converter=pydantic_data_converter,
    )
    try:
        address_of_env = env.client.service_client.config.target_host
        gw = gateway_settings(settings, TEMPORAL_ADDRESS=address_of_env, MAILSYNC_GATEWAY_TEMPORAL_TIMEOUT=1.5)
        with BackgroundServer(gw) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
                r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address, 1))
                assert r.status_code == 202, r.text
                await env.shutdown()
                t0 = time.monotonic()
                r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address, 2))
                elapsed = time.monotonic() - t0
                assert r.status_code == 503 and r.headers["retry-after"] == "7"
                # The SDK alone would retry for ~10 s, past the sender's own timeout.
                assert elapsed < 3, elapsed
                assert (await http.get("/readyz")).status_code == 503
    finally:
        with contextlib.suppress(Exception):
            await env.shutdown()


async def test_postgres_unreachable_is_503_and_not_ready(settings: Settings, pool: asyncpg.Pool) -> None:
    _, address = await add_account(pool)
    with closed_port() as port:
        gw = gateway_settings(settings, DATABASE_URL=f"postgresql://nobody@127.0.0.1:{port}/none")
        with BackgroundServer(gw) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
                assert (await http.get("/healthz")).status_code == 200
                r = await http.get("/readyz")
                assert r.status_code == 503 and r.headers["retry-after"] == "7"
                assert r.json()["temporal"] == "ok" and r.json()["postgresql"].startswith("unavailable")
                r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address, 1))
                assert r.status_code == 503 and r.json()["service"] == "postgresql"


async def test_ready_when_both_are_reachable(http: httpx.AsyncClient) -> None:
    r = await http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"temporal": "ok", "postgresql": "ok"}


async def test_unconfigured_secrets_refuse_with_503(settings: Settings, pool: asyncpg.Pool) -> None:
    gw = gateway_settings(settings, MAILSYNC_PUBSUB_TOKEN=None, MAILSYNC_WEBHOOK_SECRET=None)
    with BackgroundServer(gw) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            r = await http.post("/webhooks/gmail", params={"token": ""}, json=pubsub_push("a@b.test", 1))
            assert r.status_code == 503 and "MAILSYNC_PUBSUB_TOKEN" in r.json()["detail"]
            body = event("message.created", "acc_x")
            r = await http.post("/webhooks/events", content=body, headers=signed(body))
            assert r.status_code == 503 and "MAILSYNC_WEBHOOK_SECRET" in r.json()["detail"]


# --- progress query ------------------------------------------------------------------------------


@workflow.defn(name="AccountSyncWorkflow")
class StubAccountWorkflow:
    """Stands in for the real workflow on a private task queue: counts signals, answers `progress`."""

    @workflow.init
    def __init__(self, inp: AccountSyncInput) -> None:
        self.account_id = inp.account_id
        self.changes: list[MailboxChanged] = []

    @workflow.run
    async def run(self, inp: AccountSyncInput) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name="mailbox_changed")
    def mailbox_changed(self, change: MailboxChanged) -> None:
        self.changes.append(change)

    @workflow.query(name="progress")
    def progress(self) -> AccountProgress:
        last = self.changes[-1].history_id if self.changes else None
        return AccountProgress(account_id=self.account_id, phase=AccountPhase.initial, total=100,
                               done=len(self.changes), last_error=f"history {last}")


async def test_progress_query(settings: Settings, pool: asyncpg.Pool, client: Client) -> None:
    gw = gateway_settings(settings)
    account_id, address = await add_account(pool)
    quiet_id, quiet_address = await add_account(pool)
    with BackgroundServer(gw) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            r = await http.get(f"/accounts/acc_{uuid.uuid4().hex[:12]}/progress")
            assert r.status_code == 404

            async with Worker(client, task_queue=gw.task_queue, workflows=[StubAccountWorkflow],
                              workflow_runner=UnsandboxedWorkflowRunner()):
                r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(address, 42))
                assert r.status_code == 202
                r = await http.get(f"/accounts/{account_id}/progress")
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["account_id"] == account_id and body["phase"] == "initial"
                assert body["done"] == 1 and body["total"] == 100 and body["last_error"] == "history 42"

            # A workflow exists but no worker polls its queue any more: a bounded 503, not a hang.
            r = await http.post("/webhooks/gmail", params={"token": TOKEN}, json=pubsub_push(quiet_address, 1))
            assert r.status_code == 202
            t0 = time.monotonic()
            r = await http.get(f"/accounts/{quiet_id}/progress")
            assert r.status_code == 503 and r.headers["retry-after"] == "7", r.text
            assert time.monotonic() - t0 < 3
    for wid in (account_id, quiet_id):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(account_workflow_id(wid)).terminate("test done")
