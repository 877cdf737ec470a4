"""An async Gmail API session on google-api-python-client: listing, batched raw fetch, history, labels, watch.

google-api-python-client is synchronous (httplib2), so every request runs in a
worker thread (`asyncio.to_thread`). The service object is built once per
session from the client's bundled discovery document (no network) and its
resource objects are kept: rebuilding `service.users().messages()` per call
is measurably slow. httplib2 connections are not thread-safe, so each worker
thread gets its own authorized `httplib2.Http`, all sharing one google-auth
credentials object (a token refresh in one thread serves the others).

Batches: `BatchHttpRequest` is built with our own `batch_uri` (the service's
`new_batch_http_request()` always targets Google). Each batch holds at most
100 parts and, with a quota bucket, no more parts than its `burst` pays for.
Parts answered 404 are reported as missing; 429/403-rate parts are sent
again after the largest Retry-After among them, 5xx parts after a doubling
backoff; after `max_retry_rounds` consecutive rounds in which no part got
through, `RateLimited` / `GmailServerError` is raised for the activity layer
to retry (as it is for a Retry-After above `max_retry_after`); a 401 part
(after the client's own refresh-and-resend) raises `AuthExpired`. A raw
message answered with another 4xx (Gmail's `failedPrecondition`, sometimes
passing, sometimes for good) is sent again like a 5xx part; if it is still
refused after `max_refused_rounds` rounds it is reported as refused, so one
message cannot hold back every other one.

Single requests answered 429/403-rate are retried the same way; network
errors and 5xx of single requests are raised at once (classified retryable):
the activity's retry policy owns backoff for those.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import google.auth.credentials
import google_auth_httplib2
import httplib2
from googleapiclient.discovery import Resource, build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest, HttpRequest

from providers.errors import ProviderError
from providers.gmail.credentials import GmailCredentials
from providers.gmail.errors import (
    GmailServerError,
    HistoryExpired,
    NotFound,
    RateLimited,
    RequestRejected,
    classify,
)
from providers.gmail.models import (
    GmailLabel,
    GmailMessage,
    GmailProfile,
    HistoryPage,
    RawFetchResult,
    WatchResult,
    from_epoch_ms,
)
from providers.gmail.quota import METHOD_COSTS, QuotaBucket

__all__ = ["GOOGLE_API_ENDPOINT", "MAX_BATCH_PARTS", "GmailSession"]

GOOGLE_API_ENDPOINT = "https://gmail.googleapis.com"
MAX_BATCH_PARTS = 100  # Gmail refuses larger batches (and advises against more than 50 for throughput)
MAX_PAGE_SIZE = 500

RequestFactory = Callable[[], HttpRequest]


@dataclass(slots=True)
class _BatchOutcome:
    """One batch's answers (by request key), its 404 keys and what it took (batches sent, parts resent)."""

    keys: list[str]
    answers: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    batches: int = 0
    retried_parts: int = 0


def _b64url_decode(data: str) -> bytes:
    # Gmail pads its base64url, but tolerate unpadded input rather than lose a message over '='.
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _raw_result(outcome: _BatchOutcome) -> RawFetchResult:
    """Messages, 404s and refusals in request order."""
    gone = set(outcome.missing)
    return RawFetchResult(
        messages=[_message_from_api(outcome.answers[k]) for k in outcome.keys if k in outcome.answers],
        missing=[k for k in outcome.keys if k in gone],
        refused={k: outcome.refused[k] for k in outcome.keys if k in outcome.refused},
        retried_parts=outcome.retried_parts,
        batches=outcome.batches,
    )


def _message_from_api(data: dict[str, Any]) -> GmailMessage:
    return GmailMessage(
        id=data["id"],
        thread_id=data.get("threadId", data["id"]),
        label_ids=tuple(data.get("labelIds") or ()),
        history_id=int(data.get("historyId") or 0),
        internal_date=from_epoch_ms(data.get("internalDate") or 0),
        raw=_b64url_decode(data.get("raw") or ""),
    )


def _list_params(
    page_token: str | None, q: str | None, page_size: int, include_spam_trash: bool,
    label_ids: Sequence[str] | None,
) -> dict[str, Any]:
    """The query of threads.list and messages.list, which take the same paging and filters."""
    params: dict[str, Any] = {
        "userId": "me",
        "maxResults": max(1, min(page_size, MAX_PAGE_SIZE)),
        "includeSpamTrash": include_spam_trash,
    }
    if page_token:
        params["pageToken"] = page_token
    if q:
        params["q"] = q
    if label_ids:
        params["labelIds"] = list(label_ids)
    return params


class GmailSession:
    """One Gmail user's API session. Use `async with GmailSession(creds, ...) as gmail:` (or `open`/`close`).

    `api_endpoint` defaults to Google's; `batch_uri` to `{api_endpoint}/batch/gmail/v1`. `timeout` is the
    socket timeout of each HTTP request. `bucket`, if given, is awaited before every request with its
    unit cost. `max_concurrency` bounds requests in flight from this session (raw fetch pipelines
    batches up to it).
    """

    def __init__(
        self,
        creds: GmailCredentials,
        *,
        api_endpoint: str | None = None,
        batch_uri: str | None = None,
        timeout: float = 60.0,
        bucket: QuotaBucket | None = None,
        max_concurrency: int = 4,
        max_retry_rounds: int = 5,
        max_refused_rounds: int = 2,
        max_retry_after: float = 30.0,
        server_error_backoff: float = 1.0,
        google_credentials: google.auth.credentials.Credentials | None = None,
    ) -> None:
        self.creds = creds
        self.api_endpoint = (api_endpoint or GOOGLE_API_ENDPOINT).rstrip("/")
        self.batch_uri = batch_uri or f"{self.api_endpoint}/batch/gmail/v1"
        self.timeout = timeout
        self.bucket = bucket
        self.max_retry_rounds = max_retry_rounds
        self.max_refused_rounds = max_refused_rounds
        self.max_retry_after = max_retry_after
        self.server_error_backoff = server_error_backoff
        self._max_concurrency = max_concurrency
        self._slots: asyncio.Semaphore | None = None
        # shared by the caller across sessions of the same grant: one access token, refreshed when due,
        # instead of a token-endpoint round trip per session
        self._google_creds = google_credentials or creds.to_google()
        self._local = threading.local()
        self._https: list[httplib2.Http] = []
        self._https_lock = threading.Lock()
        self._service: Resource | None = None
        self._open_lock: asyncio.Lock | None = None
        # Resources kept once built: `service.users().messages()` walks the discovery document each time.
        self._users: Any = None
        self._messages: Any = None
        self._threads: Any = None
        self._labels: Any = None
        self._history: Any = None

    # Lifecycle ---------------------------------------------------------------

    async def open(self) -> GmailSession:
        if self._service is not None:
            return self
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._service is None:
                await asyncio.to_thread(self._build)
        return self

    def _build(self) -> None:
        service = build(
            "gmail",
            "v1",
            http=self._thread_http(),
            static_discovery=True,
            cache_discovery=False,
            client_options={"api_endpoint": self.api_endpoint},
        )
        users = service.users()
        self._users = users
        self._messages = users.messages()
        self._threads = users.threads()
        self._labels = users.labels()
        self._history = users.history()
        self._service = service

    async def close(self) -> None:
        with self._https_lock:
            https, self._https = self._https, []
        for http in https:
            http.close()

    async def __aenter__(self) -> GmailSession:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _thread_http(self) -> google_auth_httplib2.AuthorizedHttp:
        http = getattr(self._local, "http", None)
        if http is None:
            raw = httplib2.Http(timeout=self.timeout)
            http = google_auth_httplib2.AuthorizedHttp(self._google_creds, http=raw)
            self._local.http = http
            with self._https_lock:
                self._https.append(raw)
        return http

    # Plumbing ----------------------------------------------------------------

    def _slot(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_concurrency)
        return self._slots

    def batch_size(self, method: str) -> int:
        """Parts per batch for `method`: at most 100, and no more than the bucket's burst pays for."""
        if self.bucket is None:
            return MAX_BATCH_PARTS
        return max(1, min(MAX_BATCH_PARTS, int(self.bucket.burst // METHOD_COSTS[method])))

    async def _rate_limited(self, error: RateLimited, rounds: int) -> bool:
        """Tell the bucket; wait out Retry-After and return True if another round is allowed."""
        if self.bucket is not None:
            await self.bucket.on_rate_limited(error.retry_after)
        if rounds >= self.max_retry_rounds or error.retry_after > self.max_retry_after:
            return False
        await asyncio.sleep(error.retry_after)
        return True

    async def _succeeded(self) -> None:
        if self.bucket is not None:
            await self.bucket.on_success()

    def _execute(self, make: RequestFactory) -> Any:
        return make().execute(http=self._thread_http(), num_retries=0)

    async def _call(self, method: str, make: RequestFactory) -> Any:
        """One request of `method`, paid to the bucket, retried on rate-limit answers; errors classified."""
        await self.open()
        rounds = 0
        while True:
            try:
                async with self._slot():
                    # Acquire inside the slot: the request must leave right after its units are granted.
                    if self.bucket is not None:
                        await self.bucket.acquire(METHOD_COSTS[method])
                    result = await asyncio.to_thread(self._execute, make)
            except Exception as exc:  # noqa: BLE001 - classified right here
                error = classify(exc, method)
                if isinstance(error, RateLimited) and await self._rate_limited(error, rounds):
                    rounds += 1
                    continue
                raise error from exc
            await self._succeeded()
            return result

    def _execute_batch(self, parts: dict[str, RequestFactory]) -> dict[str, Any]:
        answers: dict[str, Any] = {}

        def collect(request_id: str, response: Any, exception: HttpError | None) -> None:
            answers[request_id] = exception if exception is not None else response

        batch = BatchHttpRequest(callback=collect, batch_uri=self.batch_uri)
        for key, make in parts.items():
            batch.add(make(), request_id=key)
        batch.execute(http=self._thread_http())
        return answers

    async def _batch(
        self, method: str, parts: dict[str, RequestFactory], counters: _BatchOutcome | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        """Run one batch of `method` calls keyed by request id; returns (answers, keys answered 404).

        Parts answered with a rate limit or 5xx are sent again (in a smaller batch) after the wait;
        so are raw messages refused with another 4xx, which end up in `counters.refused` when the
        refusal outlasts the retries. Any other failure of a part fails the call, classified.
        """
        await self.open()
        pending = dict(parts)
        done: dict[str, Any] = {}
        missing: list[str] = []
        rounds = 0
        while pending:
            try:
                async with self._slot():
                    if self.bucket is not None:
                        await self.bucket.acquire(METHOD_COSTS[method] * len(pending))
                    answers = await asyncio.to_thread(self._execute_batch, pending)
            except Exception as exc:  # noqa: BLE001 - classified right here
                error = classify(exc, f"batch {method}")
                if isinstance(error, RateLimited) and await self._rate_limited(error, rounds):
                    rounds += 1
                    continue
                raise error from exc
            if counters is not None:
                counters.batches += 1
            retry: dict[str, RequestFactory] = {}
            rate_limit: RateLimited | None = None
            server_error: ProviderError | None = None
            rejected: dict[str, str] = {}
            for key, make in pending.items():
                if key not in answers:
                    server_error = GmailServerError(f"batch {method}: no answer for part {key}")
                    retry[key] = make
                    continue
                answer = answers[key]
                if not isinstance(answer, BaseException):
                    done[key] = answer
                    continue
                error = classify(answer, method)
                if isinstance(error, NotFound):
                    missing.append(key)
                elif isinstance(error, RateLimited):
                    if rate_limit is None or error.retry_after > rate_limit.retry_after:
                        rate_limit = error
                    retry[key] = make
                elif isinstance(error, GmailServerError):
                    server_error = error
                    retry[key] = make
                elif isinstance(error, RequestRejected) and method == "messages.get" and counters is not None:
                    rejected[key] = str(error)
                    retry[key] = make
                else:
                    raise error from answer
            if not retry:
                await self._succeeded()
                break
            if len(retry) < len(pending):
                # Some parts went through: the server is serving, just not all at once. Only rounds that
                # achieve nothing count toward giving up, or a large fetch without a bucket would fail.
                rounds = 0
            if counters is not None:
                counters.retried_parts += len(retry)
            if rate_limit is not None:
                if not await self._rate_limited(rate_limit, rounds):
                    raise rate_limit
            else:
                if server_error is not None and rounds >= self.max_retry_rounds:
                    raise server_error
                if server_error is None and rounds >= self.max_refused_rounds:
                    assert counters is not None  # only refused parts are left: given up on, reported
                    counters.refused.update(rejected)
                    break
                await asyncio.sleep(self.server_error_backoff * 2**rounds)
            rounds += 1
            pending = retry
        return done, missing

    async def _stream(
        self, method: str, keys: Sequence[str], make: Callable[[str], RequestFactory]
    ) -> AsyncIterator[_BatchOutcome]:
        """Split `keys` into batches sized for `method`; yield each batch's outcome as it completes.

        At most `max_concurrency` batches are in flight (workers pull the next chunk when done), so a
        long id list costs a few tasks, not one per batch. The first failure is raised after the other
        workers are cancelled: once one batch has failed (e.g. AuthExpired) the rest would fail too.
        Close the generator (`contextlib.aclosing`) when leaving it early, so its workers stop.
        """
        size = self.batch_size(method)
        chunks = [keys[i : i + size] for i in range(0, len(keys), size)]
        if not chunks:
            return
        await self.open()
        queue: asyncio.Queue[_BatchOutcome | BaseException] = asyncio.Queue()
        pending = iter(chunks)  # shared by the workers: each chunk is taken exactly once

        async def worker() -> None:
            try:
                for chunk in pending:
                    outcome = _BatchOutcome(list(chunk))
                    outcome.answers, outcome.missing = await self._batch(
                        method, {key: make(key) for key in chunk}, outcome
                    )
                    queue.put_nowait(outcome)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                queue.put_nowait(exc)

        workers = [asyncio.create_task(worker()) for _ in range(min(self._max_concurrency, len(chunks)))]
        try:
            for _ in chunks:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _batched(
        self, method: str, keys: Sequence[str], make: Callable[[str], RequestFactory]
    ) -> _BatchOutcome:
        """Every batch of `_stream`, merged into one outcome."""
        merged = _BatchOutcome(list(keys))
        async with contextlib.aclosing(self._stream(method, keys, make)) as outcomes:
            async for outcome in outcomes:
                merged.answers.update(outcome.answers)
                merged.missing.extend(outcome.missing)
                merged.refused.update(outcome.refused)
                merged.batches += outcome.batches
                merged.retried_parts += outcome.retried_parts
        return merged

    # API ---------------------------------------------------------------------

    async def profile(self) -> GmailProfile:
        data = await self._call("getProfile", lambda: self._users.getProfile(userId="me"))
        return GmailProfile(data["emailAddress"], int(data["historyId"]), int(data.get("messagesTotal") or 0))

    async def labels(self, *, with_counts: bool = True) -> list[GmailLabel]:
        """Every label; with counts (one batched labels.get per label, 1 unit each) unless told not to."""
        data = await self._call("labels.list", lambda: self._labels.list(userId="me"))
        listed = [GmailLabel.from_api(item) for item in data.get("labels") or ()]
        if not with_counts or not listed:
            return listed
        detailed = (await self._batched(
            "labels.get",
            [label.id for label in listed],
            lambda label_id: lambda: self._labels.get(userId="me", id=label_id),
        )).answers
        # A label deleted between list and get is dropped: it is gone from the mailbox too.
        return [GmailLabel.from_api(detailed[label.id]) for label in listed if label.id in detailed]

    async def list_thread_ids(
        self,
        page_token: str | None = None,
        *,
        q: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        include_spam_trash: bool = True,
        label_ids: Sequence[str] | None = None,
    ) -> tuple[list[str], str | None]:
        """One page of thread ids, most recent activity first, and the next page's token (None: last page)."""
        params = _list_params(page_token, q, page_size, include_spam_trash, label_ids)
        data = await self._call("threads.list", lambda: self._threads.list(**params))
        return [thread["id"] for thread in data.get("threads") or ()], data.get("nextPageToken") or None

    async def list_messages(
        self,
        page_token: str | None = None,
        *,
        q: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        include_spam_trash: bool = True,
        label_ids: Sequence[str] | None = None,
    ) -> tuple[list[tuple[str, str]], str | None]:
        """One page of (message id, thread id), newest first, and the next page's token.

        Thread membership at 5 units per 500 messages, where threads.get costs 10 units per thread.
        """
        params = _list_params(page_token, q, page_size, include_spam_trash, label_ids)
        data = await self._call("messages.list", lambda: self._messages.list(**params))
        pairs = [(item["id"], item.get("threadId", item["id"])) for item in data.get("messages") or ()]
        return pairs, data.get("nextPageToken") or None

    async def list_all_messages(
        self, *, label_ids: Sequence[str] | None = None, q: str | None = None
    ) -> dict[str, str]:
        """Every message id (-> thread id) `list_messages` returns, spam and trash included, all pages."""
        found: dict[str, str] = {}
        token: str | None = None
        while True:
            pairs, token = await self.list_messages(token, label_ids=label_ids, q=q)
            found.update(pairs)
            if not token:
                return found

    async def get_threads_minimal(self, thread_ids: Iterable[str]) -> dict[str, list[str]]:
        """Message ids of each thread, in thread order; threads that no longer exist are left out."""
        keys = list(dict.fromkeys(thread_ids))
        if not keys:
            return {}
        answers = (await self._batched(
            "threads.get",
            keys,
            lambda thread_id: lambda: self._threads.get(userId="me", id=thread_id, format="minimal"),
        )).answers
        return {
            thread_id: [message["id"] for message in answers[thread_id].get("messages") or ()]
            for thread_id in keys
            if thread_id in answers
        }

    @staticmethod
    def _raw_request(messages: Any, message_id: str) -> RequestFactory:
        return lambda: messages.get(userId="me", id=message_id, format="raw")

    async def get_raw_messages(self, message_ids: Iterable[str]) -> RawFetchResult:
        """Raw messages (exact bytes) in request order; ids the server answers 404 for go to `missing`,
        ids it keeps refusing (4xx) to `refused`."""
        keys = list(dict.fromkeys(message_ids))
        if not keys:
            return RawFetchResult()
        await self.open()
        outcome = await self._batched(
            "messages.get", keys, lambda message_id: self._raw_request(self._messages, message_id)
        )
        return _raw_result(outcome)

    async def iter_raw_messages(self, message_ids: Iterable[str]) -> AsyncIterator[RawFetchResult]:
        """`get_raw_messages` batch by batch, as each completes: persist and heartbeat while the rest fetch.

        Each yielded result holds one batch (messages in that batch's request order, its 404s, its
        retries); batches arrive in completion order. Wrap in `contextlib.aclosing` if you may stop early.
        """
        keys = list(dict.fromkeys(message_ids))
        if not keys:
            return
        await self.open()
        stream = self._stream("messages.get", keys, lambda message_id: self._raw_request(self._messages, message_id))
        async with contextlib.aclosing(stream) as outcomes:
            async for outcome in outcomes:
                yield _raw_result(outcome)

    async def history(
        self,
        start_history_id: int | str,
        page_token: str | None = None,
        *,
        page_size: int = MAX_PAGE_SIZE,
        history_types: Sequence[str] | None = None,
        label_id: str | None = None,
    ) -> HistoryPage:
        """One page of changes after `start_history_id`; `HistoryExpired` when Gmail no longer has it."""
        params: dict[str, Any] = {
            "userId": "me",
            "startHistoryId": str(start_history_id),
            "maxResults": max(1, min(page_size, MAX_PAGE_SIZE)),
        }
        if page_token:
            params["pageToken"] = page_token
        if history_types:
            params["historyTypes"] = list(history_types)
        if label_id:
            params["labelId"] = label_id
        try:
            data = await self._call("history.list", lambda: self._history.list(**params))
        except NotFound as exc:
            raise HistoryExpired(f"history.list: startHistoryId {start_history_id} is too old: {exc}") from exc
        return HistoryPage.from_api(data)

    async def watch(
        self, topic: str, label_ids: Sequence[str] | None = None, *, label_filter_behavior: str = "include"
    ) -> WatchResult:
        """Start (or renew) push notifications to a Pub/Sub topic; renew before `expiration` (7 days)."""
        body: dict[str, Any] = {"topicName": topic}
        if label_ids:
            body["labelIds"] = list(label_ids)
            body["labelFilterBehavior"] = label_filter_behavior
        data = await self._call("watch", lambda: self._users.watch(userId="me", body=body))
        return WatchResult(int(data["historyId"]), from_epoch_ms(data["expiration"]))

    async def stop(self) -> None:
        """Stop push notifications for this user."""
        await self._call("stop", lambda: self._users.stop(userId="me"))
