"""The webhook gateway (FastAPI): turns provider notifications into workflow signals, nothing more.

    POST /webhooks/gmail           Gmail push via Cloud Pub/Sub  -> signal-with-start mailbox_changed
    GET  /webhooks/events          Nylas-style endpoint verification (echoes ?challenge=)
    POST /webhooks/events          message.* / thread.replied    -> signal-with-start mailbox_changed
                                   grant.expired                 -> status auth_expired + credentials_expired
    GET  /accounts/{id}/progress   the account workflow's `progress` query
    GET  /healthz, /readyz         process up / Temporal and PostgreSQL reachable

Status codes are chosen for what the sender does next. Any 2xx acknowledges (Pub/Sub and Nylas
stop retrying), so notifications we cannot use (unknown account, event type we ignore) get 202
and a log line. 401/403 mean "you are not who you claim". 422 means the body can never work.
503 + Retry-After means "try again later": a dependency is down, and the retry loses nothing
because signals are idempotent for the workflow.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError

from gateway.accounts import AccountDirectory, AccountRef
from gateway.auth import check_pubsub_token, check_signature
from gateway.errors import ServiceUnavailable, UpstreamError
from gateway.models import (
    GRANT_EXPIRED, MAILBOX_EVENTS, Ack, CredentialsExpired, MailboxChanged, PubSubPush, Readiness, WebhookEvent,
)
from gateway.settings import GatewaySettings
from gateway.temporal import TemporalGate

log = logging.getLogger("mailsync.gateway")
GMAIL_PUSH_SOURCE = "gmail-push"


def _unprocessable(exc: ValidationError) -> JSONResponse:
    # Same shape as FastAPI's own 422 ({"detail": [errors]}); via .json() so error contexts that
    # hold exception objects serialize as text instead of failing the response.
    return JSONResponse(
        {"detail": json.loads(exc.json(include_url=False))}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


def _parse(model: type[BaseModel], body: bytes) -> BaseModel | JSONResponse:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        return _unprocessable(exc)


def create_app(
    settings: GatewaySettings | None = None, *,
    temporal: TemporalGate | None = None, accounts: AccountDirectory | None = None,
) -> FastAPI:
    """Build the app. Dependencies are injectable for tests; by default they come from `settings`."""
    settings = settings or GatewaySettings()
    gate = temporal or TemporalGate(settings)
    directory = accounts or AccountDirectory(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.pubsub_token is None:
            log.warning("MAILSYNC_PUBSUB_TOKEN is not set: /webhooks/gmail answers 503 to every push")
        if settings.webhook_secret is None:
            log.warning("MAILSYNC_WEBHOOK_SECRET is not set: /webhooks/events answers 503 to every event")
        # Connect eagerly so the first webhook does not pay for it, but start regardless: requests
        # reconnect on demand and answer 503 while a dependency is down.
        for name, connect in (("Temporal", gate.client), ("PostgreSQL", directory.pool)):
            try:
                await connect()
            except ServiceUnavailable as exc:
                log.warning("%s not reachable at startup (%s); will retry per request", name, exc.reason)
        yield
        await directory.close()

    app = FastAPI(
        title="mailsync gateway", summary="Provider notifications in, workflow signals out.", lifespan=lifespan,
    )
    app.state.settings, app.state.temporal, app.state.accounts = settings, gate, directory

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        log.warning("%s %s -> 503: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": str(exc), "service": exc.service}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(settings.retry_after)},
        )

    @app.exception_handler(UpstreamError)
    async def upstream(request: Request, exc: UpstreamError) -> JSONResponse:
        log.error("%s %s -> 502: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_502_BAD_GATEWAY)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            headers.setdefault("Retry-After", str(settings.retry_after))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    async def notify_changed(account: AccountRef, change: MailboxChanged) -> bool:
        delivered = await gate.mailbox_changed(account.id, change, start=account.may_start)
        if not delivered:
            log.info("account %s is %s and has no running workflow: %s not delivered",
                     account.id, account.status, change.source)
        return delivered

    @app.post("/webhooks/gmail", status_code=status.HTTP_202_ACCEPTED, response_model=Ack)
    async def gmail_push(request: Request) -> Ack | JSONResponse:
        """A Gmail mailbox changed: wake (or start) the account's workflow with the new historyId."""
        check_pubsub_token(request, settings.pubsub_token, settings.pubsub_token_source)
        push = _parse(PubSubPush, await request.body())
        if isinstance(push, JSONResponse):
            return push
        assert isinstance(push, PubSubPush)
        note = push.message.data
        matches = await directory.gmail_accounts(note.email_address)
        if not matches:
            log.warning("gmail push for unknown address %r (historyId %d, message %s): acknowledged, ignored",
                        note.email_address, note.history_id, push.message.message_id)
            return Ack(status="ignored", detail="no gmail account with this address")
        change = MailboxChanged(source=GMAIL_PUSH_SOURCE, history_id=note.history_id)
        delivered = await asyncio.gather(*(notify_changed(a, change) for a in matches))
        signaled = [a.id for a, ok in zip(matches, delivered) if ok]
        return Ack(status="signaled" if signaled else "ignored", accounts=signaled)

    @app.get("/webhooks/events", response_class=PlainTextResponse)
    async def events_challenge(challenge: str) -> str:
        """Endpoint verification as Nylas does it: answer the `challenge` query parameter verbatim."""
        return challenge

    @app.post("/webhooks/events", status_code=status.HTTP_202_ACCEPTED, response_model=Ack)
    async def events(request: Request) -> Ack | JSONResponse:
        """Provider-neutral events, HMAC-signed over the raw body."""
        body = await request.body()
        check_signature(body, request.headers.get(settings.signature_header), settings.webhook_secret,
                        settings.signature_header)
        event = _parse(WebhookEvent, body)
        if isinstance(event, JSONResponse):
            return event
        assert isinstance(event, WebhookEvent)
        kind = event.kind
        if kind not in MAILBOX_EVENTS and kind != GRANT_EXPIRED:
            log.info("event %s (%s) is not one the gateway acts on: acknowledged, ignored", event.type, event.id)
            return Ack(status="ignored", detail=f"event type {event.type!r} is not handled")
        account_id = event.data.object.account_key
        assert account_id is not None  # WebhookEvent guarantees it for handled types
        account = await directory.account(account_id)
        if account is None:
            log.warning("event %s (%s) for unknown account %r: acknowledged, ignored", event.type, event.id, account_id)
            return Ack(status="ignored", detail="unknown account")
        if kind == GRANT_EXPIRED:
            reason = f"grant expired (webhook event {event.id or 'without id'})"
            # The row first: the status must show even when no workflow or worker is running.
            await directory.mark_auth_expired(account.id, reason)
            delivered = await gate.credentials_expired(account.id, CredentialsExpired(reason=reason))
            log.info("account %s marked auth_expired by %s (workflow %s)", account.id, event.type,
                     "signaled" if delivered else "not running")
            return Ack(status="signaled" if delivered else "recorded", accounts=[account.id])
        change = MailboxChanged(source=f"webhook:{kind}", folder=event.data.object.changed_folder)
        delivered_one = await notify_changed(account, change)
        return Ack(status="signaled" if delivered_one else "ignored", accounts=[account.id] if delivered_one else [])

    @app.get("/accounts/{account_id}/progress")
    async def progress(account_id: str) -> JSONResponse:
        """The account workflow's `progress` query, as JSON."""
        result = await gate.progress(account_id)
        if result is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sync workflow for account {account_id!r}")
        return JSONResponse(result.model_dump(mode="json"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves requests. Deliberately checks nothing else."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness)
    async def readyz() -> Readiness | JSONResponse:
        """Readiness: both Temporal and PostgreSQL answer (checked concurrently)."""
        checks = await asyncio.gather(gate.ping(), directory.ping(), return_exceptions=True)
        states = []
        for outcome in checks:
            if isinstance(outcome, ServiceUnavailable):
                states.append(f"unavailable: {outcome.reason}")
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                states.append("ok")
        ready = Readiness(temporal=states[0], postgresql=states[1])
        if ready.temporal != "ok" or ready.postgresql != "ok":
            return JSONResponse(
                ready.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": str(settings.retry_after)},
            )
        return ready

    return app
