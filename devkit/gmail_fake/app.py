"""The FastAPI application: Gmail v1 REST routes, the batch endpoint and the OAuth token endpoint.

Routes parse their query parameters themselves rather than through
FastAPI's validation, so that a bad parameter gets Google's 400 body (not
FastAPI's 422) and authentication is checked before anything else, as
Google does. Each route: authenticate, resolve `userId`, charge quota,
then read or change the store under its lock.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from devkit.gmail_fake.auth import SCOPE, OAuthError, TokenIssuer
from devkit.gmail_fake.batch import InnerResponse, parse_batch, render_batch
from devkit.gmail_fake.errors import GmailApiError, delegation_denied, error_body, invalid_argument, not_found
from devkit.gmail_fake.listing import list_history, list_messages, list_threads, page_size
from devkit.gmail_fake.mime import attachment_bytes, b64url
from devkit.gmail_fake.models import (
    LabelRequest,
    ListLabelsResponse,
    MessageModel,
    ModifyMessageRequest,
    ProfileModel,
    TokenResponse,
    WatchRequest,
    WatchResponse,
    dump,
)
from devkit.gmail_fake.push import PushNotifier
from devkit.gmail_fake.quota import QuotaLedger
from devkit.gmail_fake.state import MailStore, Mailbox, StoredMessage, Watch
from devkit.gmail_fake.views import label_view, message_format, message_view, parse_attachment_id, thread_view

__all__ = ["FakeContext", "create_app"]

_LOG = logging.getLogger(__name__)
_INNER_MARK = "x-gmail-fake-batch-part"
_API = "/gmail/v1/users/{userId}"
_MESSAGE_ID = re.compile(r"^[0-9a-fA-F]{1,16}$")
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_WATCH_SECONDS = 7 * 24 * 3600


@dataclass
class FakeContext:
    """Everything the routes share."""

    store: MailStore
    quota: QuotaLedger
    tokens: TokenIssuer
    push: PushNotifier


class GoogleJSON(JSONResponse):
    media_type = "application/json; charset=UTF-8"


def _json(payload: BaseModel | dict[str, Any], status: int = 200) -> GoogleJSON:
    return GoogleJSON(dump(payload) if isinstance(payload, BaseModel) else payload, status_code=status)


def _error_response(error: GmailApiError) -> GoogleJSON:
    return GoogleJSON(error.body(), status_code=error.code, headers=error.headers)


# Query parameters -----------------------------------------------------------


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise invalid_argument(f"Invalid value at '{name}' (TYPE_UINT32), \"{value}\"", location=name) from None


def _bool_param(request: Request, name: str) -> bool:
    value = (request.query_params.get(name) or "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise invalid_argument(f"Invalid value at '{name}' (TYPE_BOOL), \"{value}\"", location=name)
    return value in ("true", "1")


def _list_param(request: Request, name: str) -> list[str]:
    return [value for value in request.query_params.getlist(name) if value]


def _message_id(value: str) -> str:
    if not _MESSAGE_ID.match(value):
        raise invalid_argument("Invalid id value", location="id")
    return value.lower()


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc.errors()[0]['msg']}") from None


# The application ------------------------------------------------------------


def create_app(ctx: FakeContext) -> FastAPI:
    app = FastAPI(title="Gmail API v1 (local fake)", openapi_url=None, docs_url=None, redoc_url=None)
    store, quota, tokens = ctx.store, ctx.quota, ctx.tokens

    def _listing(request: Request, mailbox: Any, lister: Callable[..., Any]) -> Response:
        """messages.list and threads.list take the same paging and filters."""
        size = page_size(_int_param(request, "maxResults"))
        with store.lock:
            return _json(
                lister(
                    mailbox,
                    q=request.query_params.get("q"),
                    label_ids=_list_param(request, "labelIds"),
                    include_spam_trash=_bool_param(request, "includeSpamTrash"),
                    max_results=size,
                    page_token=request.query_params.get("pageToken"),
                )
            )

    @app.exception_handler(GmailApiError)
    async def _gmail_error(_: Request, exc: GmailApiError) -> Response:
        return _error_response(exc)

    @app.exception_handler(OAuthError)
    async def _oauth_error(_: Request, exc: OAuthError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        reason = "notFound" if exc.status_code == 404 else "badRequest"
        message = "Not Found" if exc.status_code == 404 else str(exc.detail)
        return GoogleJSON(error_body(exc.status_code, message, reason=reason), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> Response:
        _LOG.exception("gmail fake: unhandled error")
        return GoogleJSON(error_body(500, "Backend Error", reason="backendError"), status_code=500)

    @app.middleware("http")
    async def _count_requests(request: Request, call_next: Any) -> Response:
        path = request.url.path
        # Count what a client spends round trips on: API calls and batches (not token refreshes).
        if _INNER_MARK not in request.headers and path.startswith(("/gmail/", "/batch")):
            quota.count_http_request(batch=path.startswith("/batch"))
        return await call_next(request)

    def begin(request: Request, user_id: str, method: str) -> Mailbox:
        user = tokens.authenticate(request.headers.get("authorization"))
        if user_id != "me" and user_id.lower() != user.lower():
            raise delegation_denied(user_id)
        quota.charge(user, method)
        return store.mailbox(user)

    # users ------------------------------------------------------------------

    @app.get(f"{_API}/profile")
    async def get_profile(request: Request, userId: str) -> Response:
        mailbox = begin(request, userId, "getProfile")
        with store.lock:
            return _json(
                ProfileModel(
                    email_address=mailbox.address,
                    messages_total=len(mailbox.messages),
                    threads_total=len(mailbox.threads),
                    history_id=str(mailbox.history_id),
                )
            )

    @app.post(f"{_API}/watch")
    async def watch(request: Request, userId: str) -> Response:
        mailbox = begin(request, userId, "watch")
        body: WatchRequest = await _body(request, WatchRequest)
        if not _TOPIC.match(body.topic_name):
            raise invalid_argument(
                f"Invalid topicName does not match projects/SOME-PROJECT/topics/*: {body.topic_name!r}",
                location="topicName",
            )
        expiration = int(time.time() * 1000) + _WATCH_SECONDS * 1000
        behavior = body.label_filter_behavior or body.label_filter_action or "include"
        history_id = store.set_watch(
            mailbox.address, Watch(body.topic_name, tuple(body.label_ids), behavior, expiration)
        )
        return _json(WatchResponse(history_id=str(history_id), expiration=str(expiration)))

    @app.post(f"{_API}/stop")
    async def stop(request: Request, userId: str) -> Response:
        mailbox = begin(request, userId, "stop")
        store.set_watch(mailbox.address, None)
        return Response(status_code=204)

    # labels -----------------------------------------------------------------

    @app.get(f"{_API}/labels")
    async def labels_list(request: Request, userId: str) -> Response:
        mailbox = begin(request, userId, "labels.list")
        with store.lock:
            labels = [label_view(mailbox, label, with_counts=False) for label in mailbox.labels.values()]
        return _json(ListLabelsResponse(labels=labels or None))

    @app.get(f"{_API}/labels/{{labelId}}")
    async def labels_get(request: Request, userId: str, labelId: str) -> Response:
        mailbox = begin(request, userId, "labels.get")
        with store.lock:
            label = mailbox.labels.get(labelId)
            if label is None:
                raise not_found()
            return _json(label_view(mailbox, label, with_counts=True))

    @app.post(f"{_API}/labels")
    async def labels_create(request: Request, userId: str) -> Response:
        mailbox = begin(request, userId, "labels.create")
        body: LabelRequest = await _body(request, LabelRequest)
        with store.lock:
            label = store.create_label(
                mailbox.address,
                body.name,
                color=body.color,
                message_list_visibility=body.message_list_visibility or "show",
                label_list_visibility=body.label_list_visibility or "labelShow",
            )
            return _json(label_view(mailbox, label, with_counts=False))

    @app.delete(f"{_API}/labels/{{labelId}}")
    async def labels_delete(request: Request, userId: str, labelId: str) -> Response:
        mailbox = begin(request, userId, "labels.delete")
        store.delete_label(mailbox.address, labelId)
        return Response(status_code=204)

    # messages ---------------------------------------------------------------

    @app.get(f"{_API}/messages")
    async def messages_list(request: Request, userId: str) -> Response:
        return _listing(request, begin(request, userId, "messages.list"), list_messages)

    @app.get(f"{_API}/messages/{{id}}")
    async def messages_get(request: Request, userId: str, id: str) -> Response:
        mailbox = begin(request, userId, "messages.get")
        message_id = _message_id(id)
        fmt = message_format(request.query_params.get("format"))
        headers = _list_param(request, "metadataHeaders") or None
        with store.lock:
            message = store.get_message(mailbox.address, message_id)
            store.check_refusal(mailbox.address, message_id)
            view = message_view(message, fmt, headers)
            raw_size = len(message.raw)
        if fmt == "raw":
            quota.count_raw_bytes(mailbox.address, raw_size)
        return _json(view)

    def _label_change_view(message: StoredMessage) -> MessageModel:
        return MessageModel(id=message.id, thread_id=message.thread_id, label_ids=list(message.labels) or None)

    @app.post(f"{_API}/messages/{{id}}/modify")
    async def messages_modify(request: Request, userId: str, id: str) -> Response:
        mailbox = begin(request, userId, "messages.modify")
        body: ModifyMessageRequest = await _body(request, ModifyMessageRequest)
        with store.lock:
            message = store.modify(mailbox.address, _message_id(id), add=body.add_label_ids, remove=body.remove_label_ids)
            return _json(_label_change_view(message))

    @app.post(f"{_API}/messages/{{id}}/trash")
    async def messages_trash(request: Request, userId: str, id: str) -> Response:
        mailbox = begin(request, userId, "messages.trash")
        with store.lock:
            return _json(_label_change_view(store.trash(mailbox.address, _message_id(id))))

    @app.post(f"{_API}/messages/{{id}}/untrash")
    async def messages_untrash(request: Request, userId: str, id: str) -> Response:
        mailbox = begin(request, userId, "messages.untrash")
        with store.lock:
            return _json(_label_change_view(store.untrash(mailbox.address, _message_id(id))))

    @app.delete(f"{_API}/messages/{{id}}")
    async def messages_delete(request: Request, userId: str, id: str) -> Response:
        mailbox = begin(request, userId, "messages.delete")
        store.delete(mailbox.address, _message_id(id))
        return Response(status_code=204)

    @app.get(f"{_API}/messages/{{messageId}}/attachments/{{id}}")
    async def attachments_get(request: Request, userId: str, messageId: str, id: str) -> Response:
        mailbox = begin(request, userId, "messages.attachments.get")
        parsed = parse_attachment_id(id)
        with store.lock:
            message = store.get_message(mailbox.address, _message_id(messageId))
            if parsed is None:
                raise invalid_argument("Invalid attachment token", location="id")
            if parsed[0] != message.id:
                raise not_found()
            data = attachment_bytes(message.raw, parsed[1])
        if data is None:
            raise not_found()
        return _json({"size": len(data), "data": b64url(data)})

    # threads ----------------------------------------------------------------

    @app.get(f"{_API}/threads")
    async def threads_list(request: Request, userId: str) -> Response:
        return _listing(request, begin(request, userId, "threads.list"), list_threads)

    @app.get(f"{_API}/threads/{{id}}")
    async def threads_get(request: Request, userId: str, id: str) -> Response:
        mailbox = begin(request, userId, "threads.get")
        thread_id = _message_id(id)
        fmt = message_format(request.query_params.get("format"), allow_raw=False)
        headers = _list_param(request, "metadataHeaders") or None
        with store.lock:
            if thread_id not in mailbox.threads:
                raise not_found()
            return _json(thread_view(mailbox, thread_id, fmt, headers))

    # history ----------------------------------------------------------------

    @app.get(f"{_API}/history")
    async def history_list(request: Request, userId: str) -> Response:
        mailbox = begin(request, userId, "history.list")
        size = page_size(_int_param(request, "maxResults"))
        with store.lock:
            return _json(
                list_history(
                    mailbox,
                    start_history_id=request.query_params.get("startHistoryId"),
                    history_types=_list_param(request, "historyTypes"),
                    label_id=request.query_params.get("labelId") or None,
                    max_results=size,
                    page_token=request.query_params.get("pageToken"),
                )
            )

    # batch ------------------------------------------------------------------

    async def batch(request: Request) -> Response:
        if _INNER_MARK in request.headers:
            raise invalid_argument("Batch requests cannot be nested")
        parts = parse_batch(request.headers.get("content-type", ""), await request.body())
        # Outer headers apply to every part unless the part sets its own (Content-* excepted).
        outer = {
            name.lower(): value
            for name, value in request.headers.items()
            if not name.lower().startswith("content-")
            and name.lower() not in ("host", "transfer-encoding", "connection", "accept-encoding")
        }
        responses: list[InnerResponse] = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gmail-fake.internal") as client:
            for part in parts:
                headers = dict(outer)
                for name, value in part.headers:
                    if name.lower() not in ("host", "content-length"):
                        headers[name.lower()] = value
                headers[_INNER_MARK] = "1"
                split = urlsplit(part.target)
                target = split.path + (f"?{split.query}" if split.query else "")
                inner = await client.request(part.method, target, headers=headers, content=part.body or None)
                responses.append(
                    InnerResponse(part.content_id, inner.status_code, list(inner.headers.items()), inner.content)
                )
        content_type, payload = render_batch(responses)
        return Response(payload, media_type=content_type)

    app.add_api_route("/batch/gmail/v1", batch, methods=["POST"])
    app.add_api_route("/batch", batch, methods=["POST"])

    # OAuth ------------------------------------------------------------------

    @app.post("/token")
    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        access = tokens.grant(form)
        body = TokenResponse(
            access_token=access.token,
            expires_in=max(0, int(access.expires_at - time.time())),
            scope=form.get("scope") or SCOPE,  # grant what was asked: google-auth warns on a mismatch
        )
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-cache, no-store, max-age=0"})

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(json.dumps({"ok": True}), media_type="application/json")

    return app
