"""providers.gmail against the local Gmail API server (devkit.gmail_fake), through the real client stack.

The session runs google-api-python-client and google-auth unmodified: OAuth
refreshes go to the fake's token endpoint, batches to its batch endpoint,
and the fake enforces Gmail's per-user quota (250 units per sliding second),
so rate limiting, Retry-After and the token bucket are exercised for real.
Each test that spends quota or mutates a mailbox gets its own user: quota is
per user, so tests do not eat into each other's windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httplib2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.exceptions import RefreshError, TransportError
from google.oauth2 import service_account
from googleapiclient.errors import BatchError, HttpError

from devkit.corpus import generate_corpus, reply_chain
from devkit.gmail_fake import GmailFake
from devkit.gmail_fake.seed import seed_messages
from providers.errors import AuthError, NetworkError, ProviderError, ServerError
from providers.gmail import (
    AccessDenied,
    AuthExpired,
    GmailCredentials,
    GmailServerError,
    GmailSession,
    HistoryExpired,
    HistoryPage,
    LabelsAdded,
    LabelsRemoved,
    MessageAdded,
    MessageDeleted,
    NotFound,
    RateLimited,
    RequestRejected,
    TokenBucket,
    classify,
    load_credentials_file,
)
from providers.gmail.errors import retry_after_seconds

BIG = "big@example.com"
BIG_MESSAGES = 2500
_users = itertools.count(1)


@pytest.fixture(scope="module")
def fake() -> Iterator[GmailFake]:
    with GmailFake.start() as server:
        server.add_user(BIG, refresh_token="rt-big")
        folders = ("INBOX", "Sent", "Archive", "Lists/Python", "Spam", "Trash")
        server.seed(BIG, BIG_MESSAGES, seed=21, folders=folders)
        yield server


def creds_for(fake: GmailFake, user: str) -> GmailCredentials:
    refresh_token = fake.refresh_token(user)
    return GmailCredentials.oauth("mailsync-test-client", "test-secret", refresh_token, token_uri=fake.token_uri)


def session_for(fake: GmailFake, user: str, **kwargs: object) -> GmailSession:
    return GmailSession(creds_for(fake, user), api_endpoint=fake.endpoint, **kwargs)  # type: ignore[arg-type]


def new_user(fake: GmailFake) -> str:
    user = f"user{next(_users)}@example.com"
    fake.add_user(user)
    return user


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Credentials ------------------------------------------------------------------


def _service_account_key() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "sync@p.iam.gserviceaccount.com",
        "client_id": "123",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def test_credentials_files_in_their_usual_shapes(tmp_path: Path) -> None:
    def write(name: str, data: object) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return path

    adc = {"type": "authorized_user", "client_id": "cid", "client_secret": "secret-1", "refresh_token": "refresh-1"}
    user = load_credentials_file(write("adc.json", adc))
    assert (user.kind, user.client_id, user.client_secret, user.refresh_token) == tuple(adc.values())
    assert user.token_uri == "https://oauth2.googleapis.com/token"
    assert "secret-1" not in repr(user) and "refresh-1" not in repr(user)  # secrets stay out of logs
    google_user = user.to_google()
    assert google_user.refresh_token == "refresh-1" and google_user.token is None and google_user.scopes is None

    installed = load_credentials_file(
        write(
            "client.json",
            {"installed": {"client_id": "c2", "client_secret": "s2", "token_uri": "http://t"}, "refresh_token": "r2"},
        )
    )
    assert (installed.client_id, installed.refresh_token, installed.token_uri) == ("c2", "r2", "http://t")

    key = _service_account_key()
    delegated = load_credentials_file(write("sa.json", key), subject="dana@example.com")
    assert delegated.kind == "service_account" and delegated.subject == "dana@example.com"
    assert key["private_key"] not in repr(delegated)
    google_sa = delegated.to_google()
    assert isinstance(google_sa, service_account.Credentials)
    assert google_sa._subject == "dana@example.com"  # domain-wide delegation: act as the user
    assert google_sa.scopes == ["https://www.googleapis.com/auth/gmail.readonly"]

    # What mailsync stores (encrypted) reads back as the same credentials.
    stored = write("stored.json", json.loads(delegated.model_dump_json()))
    assert load_credentials_file(stored) == delegated
    assert load_credentials_file(write("u.json", json.loads(user.model_dump_json()))) == user

    with pytest.raises(ValueError, match="impersonate"):
        load_credentials_file(write("sa2.json", key))
    with pytest.raises(ValueError, match="refresh_token"):
        load_credentials_file(write("c3.json", {"web": {"client_id": "c", "client_secret": "s"}}))
    with pytest.raises(ValueError, match="refresh_token"):
        load_credentials_file(write("adc2.json", {"type": "authorized_user", "client_id": "c", "client_secret": "s"}))
    with pytest.raises(ValueError, match="unrecognised"):
        load_credentials_file(write("x.json", {"type": "external_account"}))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="not JSON"):
        load_credentials_file(tmp_path / "bad.json")


# Error classification ---------------------------------------------------------


def _http_error(status: int, reason: str = "", headers: dict[str, str] | None = None) -> HttpError:
    errors = [{"reason": reason, "domain": "global", "message": "m"}]
    body = {"error": {"code": status, "message": "m", "errors": errors}}
    return HttpError(httplib2.Response({"status": status, **(headers or {})}), json.dumps(body).encode(), uri="u")


def test_classification_of_client_exceptions() -> None:
    limited = classify(_http_error(429, "rateLimitExceeded", {"retry-after": "7"}))
    assert isinstance(limited, RateLimited) and limited.retryable and limited.retry_after == 7
    assert classify(_http_error(429)).retry_after == 1.0  # no Retry-After: 1 s
    user_rate = classify(_http_error(403, "userRateLimitExceeded"))
    assert isinstance(user_rate, RateLimited) and user_rate.retry_after == 1.0
    assert isinstance(classify(_http_error(403, "rateLimitExceeded")), RateLimited)
    daily = classify(_http_error(403, "dailyLimitExceeded"))
    assert isinstance(daily, RateLimited) and daily.retry_after == 60
    denied = classify(_http_error(403, "forbidden"))
    assert isinstance(denied, AccessDenied) and isinstance(denied, AuthError) and not denied.retryable
    expired = classify(_http_error(401, "authError"))
    assert isinstance(expired, AuthExpired) and isinstance(expired, AuthError) and not expired.retryable
    assert isinstance(classify(_http_error(404, "notFound")), NotFound) and not NotFound.retryable
    for status in (500, 502, 503):
        error = classify(_http_error(status, "backendError"))
        assert isinstance(error, GmailServerError) and isinstance(error, ServerError) and error.retryable
        assert error.status == status
    rejected = classify(_http_error(400, "invalidArgument"))
    assert isinstance(rejected, RequestRejected) and not rejected.retryable and rejected.reason == "invalidArgument"

    grant = classify(RefreshError("invalid_grant: Token has been expired or revoked."))
    assert isinstance(grant, AuthExpired) and not grant.retryable
    assert isinstance(classify(RefreshError("temporarily_unavailable", retryable=True)), NetworkError)
    assert isinstance(classify(TransportError("connection refused")), NetworkError)
    transport = (socket.timeout("timed out"), TimeoutError(), ConnectionResetError(), httplib2.ServerNotFoundError("x"))
    for exc in transport:
        error = classify(exc)
        assert isinstance(error, NetworkError) and error.retryable, exc
    assert isinstance(classify(BatchError("garbled")), GmailServerError)
    assert not isinstance(classify(ValueError("?")), (NetworkError, AuthError)) and classify(ValueError()).retryable
    assert HistoryExpired("x").retryable is False

    in_ten = (datetime.now(timezone.utc) + timedelta(seconds=10)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 8 <= retry_after_seconds({"retry-after": in_ten}) <= 10  # the HTTP-date form
    assert retry_after_seconds({"retry-after": "soon"}) == 1.0


async def test_unreachable_server_and_token_endpoint_are_network_errors() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: connection refused
        creds = GmailCredentials.oauth("c", "s", "rt", token_uri=f"{closed}/token")
        async with GmailSession(creds, api_endpoint=closed, timeout=2) as gmail:
            with pytest.raises(NetworkError) as refused:
                await gmail.profile()
            assert refused.value.retryable


# Token bucket -----------------------------------------------------------------


class VirtualClock:
    """Time that only moves when the bucket sleeps, so pacing is checked exactly and instantly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


async def test_token_bucket_paces_to_rate_and_burst() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(100, 20, clock=clock, sleep=clock.sleep)
    grants: list[tuple[float, float]] = []
    for units in [5] * 40 + [50, 5]:  # the 50 is larger than the burst: admitted with a full bucket, in debt
        await bucket.acquire(units)
        grants.append((clock.now, units))
    # A token bucket admits at most burst + rate * t units in any span t (an oversized acquire counts
    # as its own size instead of the burst).
    for i, (t_i, _) in enumerate(grants):
        for j in range(i, len(grants)):
            largest = max(u for _, u in grants[i : j + 1])
            span = grants[j][0] - t_i
            assert sum(u for _, u in grants[i : j + 1]) <= max(20, largest) + 100 * span + 1e-6
    # 20 units free, 180 more at 100/s; the 50 waits for a full bucket (0.2 s), leaving it 30 in
    # debt, so the last 5 waits 0.35 s.
    assert clock.now - 1000.0 == pytest.approx(1.8 + 0.2 + 0.35, abs=1e-6)
    assert bucket.granted_units == 255

    safe = TokenBucket.for_quota(250)
    assert safe.burst + safe.configured_rate * 1.0 < 250  # a strict 1-s window is kept, with headroom
    assert safe.burst >= 25  # at least a batch of 5 messages.get


async def test_token_bucket_halves_on_rate_limit_and_recovers() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(100, 20, min_rate=10, recovery_seconds=10, clock=clock, sleep=clock.sleep)
    await bucket.on_rate_limited(2)
    assert bucket.rate == 50 and bucket.tokens == 0 and bucket.rate_limited == 1
    await bucket.on_rate_limited(1)  # the same overshoot answered twice: one cut per second
    assert bucket.rate == 50 and bucket.rate_limited == 2
    before = clock.now
    await bucket.acquire(10)
    assert clock.now - before == pytest.approx(2 + 10 / 50)  # held for Retry-After, then paid at the new rate
    for _ in range(5):
        clock.now += 1.0
        await bucket.on_rate_limited(0)
    assert bucket.rate == 10  # halved down to the floor, never below
    clock.now += 1.0
    await bucket.on_success()
    assert bucket.rate == pytest.approx(20)  # +10 % of the configured rate per second of success
    clock.now += 4.0
    await bucket.on_success()
    assert bucket.rate == pytest.approx(60)
    clock.now += 60.0
    await bucket.on_success()
    assert bucket.rate == 100  # back to, never above, the configured rate


# Against the fake --------------------------------------------------------------


async def test_profile_and_labels_with_counts(fake: GmailFake) -> None:
    async with session_for(fake, BIG) as gmail:
        email, history_id, total = await gmail.profile()
        labels = await gmail.labels()
    assert (email, history_id, total) == (BIG, fake.history_id(BIG), BIG_MESSAGES)

    mailbox = fake.store.mailbox(BIG)
    assert [label.id for label in labels] == list(mailbox.labels)
    by_id = {label.id: label for label in labels}
    for label_id, stored in mailbox.labels.items():
        label = by_id[label_id]
        assert (label.name, label.type) == (stored.name, stored.type)
        assert (label.message_list_visibility, label.label_list_visibility) == (
            stored.message_list_visibility,
            stored.label_list_visibility,
        )
        if stored.color is not None:
            colors = (stored.color.background_color, stored.color.text_color)
            assert (label.background_color, label.text_color) == colors
        carrying = [m for m in mailbox.messages.values() if label_id in m.labels]
        unread = [m for m in carrying if "UNREAD" in m.labels]
        assert label.messages_total == len(carrying) and label.messages_unread == len(unread)
        assert label.threads_total == len({m.thread_id for m in carrying})
        assert label.threads_unread == len({m.thread_id for m in unread})
    lists = next(label for label in labels if label.name == "Lists/Python")
    assert lists.type == "user" and lists.background_color and lists.messages_total
    assert by_id["INBOX"].messages_total and by_id["SPAM"].messages_total and by_id["TRASH"].messages_total


async def test_list_thread_ids_page_by_page_newest_first(fake: GmailFake) -> None:
    mailbox = fake.store.mailbox(BIG)
    newest = {tid: max(mailbox.messages[m].internal_date_ms for m in ids) for tid, ids in mailbox.threads.items()}
    assert 500 < len(newest) < BIG_MESSAGES  # hundreds of threads, many with several messages

    async with session_for(fake, BIG) as gmail:
        pages: list[list[str]] = []
        token = None
        while True:
            ids, token = await gmail.list_thread_ids(token, page_size=300)
            pages.append(ids)
            if token is None:
                break
        everything = [tid for page in pages for tid in page]
        assert len(pages) == math.ceil(len(newest) / 300) and all(len(page) == 300 for page in pages[:-1])
        assert len(everything) == len(set(everything)) and set(everything) == set(newest)
        dates = [newest[tid] for tid in everything]
        assert dates == sorted(dates, reverse=True)

        # Spam and trash are included by default (a mirror wants them) and can be left out.
        visible, _ = await gmail.list_thread_ids(page_size=500, include_spam_trash=False)
        hidden = {
            tid for tid, ids in mailbox.threads.items()
            if all({"SPAM", "TRASH"} & set(mailbox.messages[m].labels) for m in ids)
        }
        assert hidden and not hidden & set(visible)

        # The --since window: `after:` in epoch seconds.
        cutoff_ms = sorted(newest.values())[-100]
        recent: list[str] = []
        token = None
        while True:
            ids, token = await gmail.list_thread_ids(token, q=f"after:{cutoff_ms // 1000}", page_size=60)
            recent += ids
            if token is None:
                break
        after_ms = (cutoff_ms // 1000) * 1000
        expected = {
            tid
            for tid, ids in mailbox.threads.items()
            if any(mailbox.messages[m].internal_date_ms >= after_ms for m in ids)
        }
        assert set(recent) == expected and 100 <= len(recent) < len(newest)

        # messages.list gives thread membership at 5 units per 500 messages.
        pairs, token = await gmail.list_messages(page_size=500)
        assert token is not None and len(pairs) == 500
        assert all(mailbox.messages[m].thread_id == t for m, t in pairs)
        assert [m for m, _ in pairs] == fake.message_ids(BIG)[:500]


async def test_get_threads_minimal_maps_threads_to_their_messages(fake: GmailFake) -> None:
    mailbox = fake.store.mailbox(BIG)
    by_size = sorted(mailbox.threads, key=lambda tid: -len(mailbox.threads[tid]))
    wanted = by_size[:15] + by_size[-10:]  # the longest threads and single-message ones
    async with session_for(fake, BIG, bucket=TokenBucket.for_quota(250)) as gmail:
        threads = await gmail.get_threads_minimal([*wanted, "ffffffffffffffff", wanted[0]])
    assert list(threads) == wanted  # request order, duplicates once, the unknown thread left out
    for tid in wanted:
        expected = sorted(mailbox.threads[tid], key=lambda m: mailbox.messages[m].sort_key)
        assert threads[tid] == expected
    assert max(len(ids) for ids in threads.values()) >= 5


async def test_batch_raw_fetch_is_byte_exact_and_absorbs_429_parts(fake: GmailFake) -> None:
    user = new_user(fake)
    corpus = list(
        generate_corpus(120, seed=5, malformed_ratio=0.25, attachment_ratio=0.2, max_attachment_bytes=300_000)
    )
    assert {"nul_bytes", "bare_lf", "raw_8bit_header", "header_only", "attachment"} <= {m.kind for m in corpus}
    ids = seed_messages(fake, user, corpus)
    gone = ids.pop(7)
    fake.delete_message(user, gone)
    requested = ids[:50] + [gone] + ids[50:]

    # No bucket: 119 gets are 595 units against 250/s, so parts come back 429 inside the batches.
    async with session_for(fake, user) as gmail:
        result = await gmail.get_raw_messages(requested)
    assert [m.id for m in result.messages] == ids and result.missing == [gone]
    for message in result.messages:
        stored = fake.message(user, message.id)
        assert message.sha256 == sha(stored.raw) and message.raw == stored.raw
        assert message.thread_id == stored.thread_id and message.label_ids == tuple(stored.labels)
        assert message.history_id == stored.history_id
        assert message.internal_date == datetime.fromtimestamp(stored.internal_date_ms / 1000, timezone.utc)
        assert message.internal_date.tzinfo is not None
    stats = fake.stats(user)
    assert stats.rate_limited > 0 and result.retried_parts >= stats.rate_limited  # the in-batch 429 path ran
    assert stats.calls["messages.get"] == len(ids) + 1
    assert result.batches >= 3  # 120 ids need two batches of ≤ 100, plus retries


async def test_iter_raw_messages_yields_batches_as_they_complete(fake: GmailFake) -> None:
    user = new_user(fake)
    ids = fake.seed(user, 30, seed=49)
    async with session_for(fake, user, bucket=TokenBucket.for_quota(250), max_concurrency=2) as gmail:
        size = gmail.batch_size("messages.get")
        seen: list[str] = []
        async for batch in gmail.iter_raw_messages(ids):
            assert 1 <= len(batch.messages) <= size and batch.batches == 1 and not batch.missing
            assert [m.id for m in batch.messages] == [i for i in ids if i in {m.id for m in batch.messages}]
            seen += [m.id for m in batch.messages]
        assert sorted(seen) == sorted(ids)

        # Leaving early stops the workers: no more batches are sent than were in flight.
        fake.reset_stats()
        async with contextlib.aclosing(gmail.iter_raw_messages(ids)) as batches:
            async for _first in batches:
                break
        await asyncio.sleep(0.5)  # a request already handed to a thread still lands; nothing after it
        assert fake.stats(user).calls["messages.get"] <= 2 * size < len(ids)


async def test_history_after_mutations_is_typed(fake: GmailFake) -> None:
    user = new_user(fake)
    first, second, third = (
        fake.add_message(user, reply_chain(1, seed=seed)[0], ["INBOX", "UNREAD"]) for seed in (31, 32, 33)
    )
    thread = {m: fake.message(user, m).thread_id for m in (first, second, third)}
    label = fake.create_label(user, "Projects/Alpha")
    async with session_for(fake, user) as gmail:
        _, start, _ = await gmail.profile()
        added = fake.add_message(user, reply_chain(1, seed=34)[0], ["INBOX", "UNREAD"])
        thread[added] = fake.message(user, added).thread_id
        fake.modify_labels(user, first, add=[label, "STARRED"], remove=["UNREAD"])
        fake.trash(user, second)
        fake.delete_message(user, third)

        changes = []
        cursors = []
        token = None
        while True:
            page = await gmail.history(start, token, page_size=2)
            changes += page.records
            cursors.append(page.history_id)
            token = page.next_page_token
            if token is None:
                break
        assert len(cursors) >= 2 and cursors[-1] == fake.history_id(user)

        caught_up = await gmail.history(cursors[-1])
        assert caught_up.records == [] and caught_up.history_id == cursors[-1]

    stripped = [change.model_copy(update={"history_id": 0}) for change in changes]
    assert stripped == [
        MessageAdded(history_id=0, message_id=added, thread_id=thread[added], label_ids=("INBOX", "UNREAD")),
        LabelsAdded(history_id=0, message_id=first, thread_id=thread[first], label_ids=(label, "STARRED"),
                    message_label_ids=("INBOX", label, "STARRED")),
        LabelsRemoved(history_id=0, message_id=first, thread_id=thread[first], label_ids=("UNREAD",),
                      message_label_ids=("INBOX", label, "STARRED")),
        LabelsAdded(history_id=0, message_id=second, thread_id=thread[second], label_ids=("TRASH",),
                    message_label_ids=("UNREAD", "TRASH")),
        LabelsRemoved(history_id=0, message_id=second, thread_id=thread[second], label_ids=("INBOX",),
                      message_label_ids=("UNREAD", "TRASH")),
        MessageDeleted(history_id=0, message_id=third, thread_id=thread[third]),
    ]
    record_ids = [change.history_id for change in changes]
    assert record_ids == sorted(record_ids) and start < record_ids[0] and record_ids[-1] <= cursors[-1]
    assert len(set(record_ids)) == 4  # one record per mutation; the relabel and the trash carry two changes
    # Pages are plain JSON for Temporal payloads, with the change kinds preserved.
    page = HistoryPage(records=changes, next_page_token=None, history_id=cursors[-1])
    assert HistoryPage.model_validate_json(page.model_dump_json()) == page


async def test_stale_history_id_raises_history_expired(fake: GmailFake) -> None:
    user = new_user(fake)
    fake.seed(user, 3, seed=41)
    async with session_for(fake, user) as gmail:
        _, start, _ = await gmail.profile()
        fake.seed(user, 2, seed=42)
        assert len((await gmail.history(start)).records) == 2
        fake.expire_history(user)
        with pytest.raises(HistoryExpired) as expired:
            await gmail.history(start)
        assert not expired.value.retryable
        _, now, _ = await gmail.profile()
        assert (await gmail.history(now)).records == []  # a fresh cursor works again


async def test_revoked_refresh_token_is_auth_expired_without_retry_storm(fake: GmailFake) -> None:
    user = new_user(fake)
    ids = fake.seed(user, 4, seed=43)
    async with session_for(fake, user) as gmail:
        await gmail.profile()
        refreshes = fake.token_refreshes
        fake.revoke(user)
        with pytest.raises(AuthExpired) as single:
            await gmail.profile()
        with pytest.raises(AuthExpired) as batch:
            await gmail.get_raw_messages(ids)
        assert isinstance(single.value, AuthError) and not single.value.retryable and not batch.value.retryable
        assert "invalid_grant" in str(single.value)
    assert fake.token_refreshes == refreshes  # no token was granted after the revocation
    assert fake.stats(user).calls == {"getProfile": 1}  # nothing else reached the API


async def test_expired_access_token_is_refreshed_transparently(fake: GmailFake) -> None:
    user = new_user(fake)
    ids = fake.seed(user, 3, seed=44)
    async with session_for(fake, user) as gmail:
        await gmail.profile()
        fake.expire_access_tokens(user)
        assert len((await gmail.get_raw_messages(ids)).messages) == 3  # 401 parts: refresh, resend
        fake.expire_access_tokens(user)
        assert (await gmail.profile()).email == user


class RecordingBucket(TokenBucket):
    """Remembers the rate before and after each rate-limit report."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cuts: list[tuple[float, float]] = []

    async def on_rate_limited(self, retry_after: float | None = None) -> None:
        before = self.rate
        await super().on_rate_limited(retry_after)
        self.cuts.append((before, self.rate))


async def test_forced_429_burst_is_absorbed_and_the_bucket_adapts(fake: GmailFake) -> None:
    user = new_user(fake)
    ids = fake.seed(user, 6, seed=45)
    bucket = RecordingBucket.for_quota(250, recovery_seconds=1.0)
    assert isinstance(bucket, RecordingBucket)
    full = bucket.configured_rate
    async with session_for(fake, user, bucket=bucket) as gmail:
        fake.force_rate_limit(2, user=user)  # two single calls answered 429 in a row
        started = time.monotonic()
        labels = await gmail.labels(with_counts=False)
        assert labels and time.monotonic() - started >= 2.0  # waited Retry-After (1 s) twice
        # Halved per 429 (the retry, a second later, was refused too).
        assert bucket.cuts == [(full, full / 2), (full / 2, full / 4)]
        assert full / 4 <= bucket.rate < full * 0.75  # recovering since the success, not yet recovered

        fake.force_rate_limit(3, user=user)  # three parts of the next batch answered 429
        result = await gmail.get_raw_messages(ids)
        assert [m.id for m in result.messages] == ids and result.retried_parts == 3
        assert all(m.raw == fake.message(user, m.id).raw for m in result.messages)
        (before, after), = bucket.cuts[2:]  # one batch answer with three 429 parts: one cut
        assert after == pytest.approx(before / 2) and before < full

        # A second of successful traffic brings the rate back to the configured one, not beyond.
        await asyncio.sleep(1.0)
        await gmail.profile()
        assert bucket.rate == full
    assert fake.stats(user).rate_limited == 5


async def test_server_errors_inside_a_batch_are_retried_and_single_ones_classified(fake: GmailFake) -> None:
    user = new_user(fake)
    ids = fake.seed(user, 5, seed=46)
    async with session_for(fake, user, server_error_backoff=0.05) as gmail:
        fake.force_errors(2, status=503, user=user)
        result = await gmail.get_raw_messages(ids)
        assert len(result.messages) == 5 and result.retried_parts == 2
        fake.force_errors(1, status=500, user=user)
        with pytest.raises(GmailServerError) as single:
            await gmail.profile()
        assert single.value.retryable and single.value.status == 500
        fake.force_errors(20, status=503, user=user)
        with pytest.raises(GmailServerError):  # bounded: 5 fruitless rounds, then the activity's retry policy
            await gmail.get_raw_messages(ids[:2])
    fake.quota.reset()  # drop the unused forced errors


async def test_a_refused_message_is_reported_not_raised_and_a_passing_refusal_is_retried(fake: GmailFake) -> None:
    user = new_user(fake)
    ids = fake.seed(user, 6, seed=47)
    fake.refuse_message(user, ids[1])            # 400 failedPrecondition for good
    fake.refuse_message(user, ids[3], times=1)   # once: the next round gets it
    async with session_for(fake, user, server_error_backoff=0.05) as gmail:
        result = await gmail.get_raw_messages(ids)
        assert [m.id for m in result.messages] == [i for i in ids if i != ids[1]]
        assert list(result.refused) == [ids[1]] and "HTTP 400 failedPrecondition" in result.refused[ids[1]]
        assert result.retried_parts >= 1 + 2  # ids[3] once, ids[1] in each refused round (and after a reset)
        batches = [b async for b in gmail.iter_raw_messages(ids[:2])]
        assert [list(b.refused) for b in batches] == [[ids[1]]]
        # once Gmail serves it, it is fetched like any other
        fake.serve_message(user, ids[1])
        assert len((await gmail.get_raw_messages(ids)).messages) == 6


async def test_sustained_fetch_with_the_bucket_never_exceeds_the_quota(fake: GmailFake) -> None:
    user = new_user(fake)
    ids = fake.seed(user, 200, seed=47)
    bucket = TokenBucket.for_quota(250)
    async with session_for(fake, user, bucket=bucket) as gmail:
        await gmail.open()
        started = time.monotonic()
        result = await gmail.get_raw_messages(ids)
        elapsed = time.monotonic() - started
    stats = fake.stats(user)
    assert stats.rate_limited == 0 and bucket.rate_limited == 0
    assert stats.max_units_in_window <= 250 and stats.total_units == 200 * 5
    assert [m.id for m in result.messages] == ids
    assert all(m.sha256 == sha(fake.message(user, m.id).raw) for m in result.messages)
    # Paced, not starved: the bucket waited about (1000 units - burst) / rate in all, no more (its own
    # account, so a loaded machine's slower transfers do not make this flaky), and the fetch took that long.
    floor = (1000 - bucket.burst) / bucket.configured_rate
    assert bucket.waited_seconds <= floor + 0.05
    assert floor - 0.1 <= elapsed <= floor * 3
    assert result.batches == math.ceil(200 / gmail.batch_size("messages.get"))


async def test_watch_and_stop(fake: GmailFake) -> None:
    user = new_user(fake)
    async with session_for(fake, user) as gmail:
        history_id, expiration = await gmail.watch("projects/p/topics/gmail", ["INBOX"])
        assert history_id == fake.history_id(user)
        assert expiration - datetime.now(timezone.utc) > timedelta(days=6)
        fake.add_message(user, reply_chain(1, seed=48)[0], ["INBOX"])
        assert len(fake.notifications) >= 1 and fake.notifications[-1]["emailAddress"] == user
        await gmail.stop()
        with pytest.raises(RequestRejected) as bad:
            await gmail.watch("not-a-topic")
        assert bad.value.status == 400 and not bad.value.retryable
    assert fake.stats(user).calls["stop"] == 1


def test_provider_errors_are_provider_errors() -> None:
    for cls in (AuthExpired, AccessDenied, RateLimited, HistoryExpired, NotFound, GmailServerError, RequestRejected):
        assert issubclass(cls, ProviderError)
