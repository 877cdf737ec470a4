"""The local Gmail API server (devkit.gmail_fake), driven through the real google-api-python-client.

Nothing on the client side is mocked: services come from the shipped
discovery document, credentials are google-auth's and refresh against the
fake's token endpoint, batches are googleapiclient's BatchHttpRequest. What
these tests pin down is what the sync engine relies on: paging, exact raw
bytes, batch limits, history semantics, quota and auth failures.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from datetime import datetime, timezone
from typing import Any

import google.oauth2.credentials
import google_auth_httplib2
import httplib2
import httpx
import pytest
from google.auth.exceptions import RefreshError
from googleapiclient.discovery import Resource
from googleapiclient.errors import HttpError

from devkit.corpus import generate_corpus, reply_chain
from devkit.gmail_fake import GmailFake, build_gmail_service, new_batch_request, user_credentials
from devkit.gmail_fake.seed import seed_reply_chain

USER = "dana@example.com"
OTHER = "eve@example.com"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake() -> Iterator[GmailFake]:
    with GmailFake.start() as server:
        server.add_user(USER, refresh_token="rt-dana")
        yield server


def service_for(fake: GmailFake, user: str = USER) -> Resource:
    return build_gmail_service(fake, user_credentials(fake, user))


def error_of(exc: HttpError) -> dict[str, Any]:
    return json.loads(exc.content)["error"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_of(message: dict[str, Any]) -> bytes:
    return base64.urlsafe_b64decode(message["raw"])


def list_all(service: Resource, page_size: int, **params: Any) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    token = None
    while True:
        page = service.users().messages().list(userId="me", maxResults=page_size, pageToken=token, **params).execute()
        pages += 1
        ids += [m["id"] for m in page.get("messages", [])]
        token = page.get("nextPageToken")
        if not token:
            return ids, pages


def test_client_requests_go_to_the_fake_under_gmail_paths(fake: GmailFake) -> None:
    service = service_for(fake)
    request = service.users().messages().list(userId="me", q="after:1")
    assert request.uri.startswith(f"{fake.endpoint}/gmail/v1/users/me/messages?")
    assert request.execute() == {"resultSizeEstimate": 0}  # empty lists are omitted, as Gmail does
    profile = service.users().getProfile(userId=USER).execute()
    assert profile == {
        "emailAddress": USER,
        "messagesTotal": 0,
        "threadsTotal": 0,
        "historyId": str(fake.history_id(USER)),
    }
    stats = fake.stats(USER)
    assert stats.calls == {"messages.list": 1, "getProfile": 1}
    assert stats.total_units == 5 + 1 and stats.http_requests == 2
    assert fake.token_refreshes == 1  # google-auth fetched one access token, then reused it


def test_messages_list_pages_newest_first_without_duplicates(fake: GmailFake) -> None:
    fake.seed(USER, 230, seed=3)
    service = service_for(fake)
    expected = fake.message_ids(USER)  # newest first
    visible = [m for m in expected if not {"SPAM", "TRASH"} & set(fake.message(USER, m).labels)]

    ids, pages = list_all(service, 100)
    assert ids == visible and pages == 3
    first = service.users().messages().list(userId="me").execute()
    assert len(first["messages"]) == 100  # default page size
    assert first["resultSizeEstimate"] == len(visible)
    capped = service.users().messages().list(userId="me", maxResults=1000).execute()
    assert len(capped["messages"]) == 230 and "nextPageToken" not in capped

    dates = [fake.message(USER, m).internal_date_ms for m in ids]
    assert dates == sorted(dates, reverse=True)

    # Mail arriving at the head of the list while paging shifts nothing.
    page1 = service.users().messages().list(userId="me", maxResults=50).execute()
    fake.add_message(USER, reply_chain(1, seed=9)[0], ["INBOX"])
    page2 = service.users().messages().list(userId="me", maxResults=50, pageToken=page1["nextPageToken"]).execute()
    assert [m["id"] for m in page1["messages"] + page2["messages"]] == visible[:100]

    with pytest.raises(HttpError) as bad_token:
        service.users().messages().list(userId="me", pageToken="garbage").execute()
    assert bad_token.value.resp.status == 400


def test_messages_list_filters_q_labels_and_spam_trash(fake: GmailFake) -> None:
    raw = reply_chain(1, seed=1)[0]
    day = 86_400_000
    base = int(datetime(2024, 3, 10, 12, tzinfo=timezone.utc).timestamp() * 1000)
    inbox_old = fake.add_message(USER, raw, ["INBOX"], internal_date=base - 2 * day)
    inbox_new = fake.add_message(USER, raw, ["INBOX", "UNREAD"], internal_date=base)
    sent = fake.add_message(USER, raw, ["SENT"], internal_date=base - day)
    spam = fake.add_message(USER, raw, ["SPAM"], internal_date=base)
    trashed = fake.add_message(USER, raw, ["INBOX"], internal_date=base)
    fake.trash(USER, trashed)
    service = service_for(fake)

    def ids(**params: Any) -> set[str]:
        return set(list_all(service, 500, **params)[0])

    assert ids() == {inbox_old, inbox_new, sent}
    assert ids(includeSpamTrash=True) == {inbox_old, inbox_new, sent, spam, trashed}
    assert ids(labelIds=["INBOX"]) == {inbox_old, inbox_new}
    assert ids(labelIds=["INBOX", "UNREAD"]) == {inbox_new}
    assert ids(labelIds=["TRASH"]) == {trashed}
    assert ids(q=f"after:{(base - day) // 1000}") == {inbox_new, sent}
    assert ids(q=f"before:{(base - day) // 1000}") == {inbox_old}
    assert ids(q="after:2024/03/09 before:2024/03/10") == {sent}  # midnight Pacific time
    assert ids(q="in:anywhere is:unread") == {inbox_new}
    assert ids(q="-in:inbox") == {sent}


def test_get_raw_round_trips_exact_bytes_of_every_corpus_kind(fake: GmailFake) -> None:
    corpus = list(generate_corpus(40, seed=11, malformed_ratio=0.25, attachment_ratio=0.2, max_attachment_bytes=200_000))
    assert {"nul_bytes", "bare_lf", "raw_8bit_header", "header_only"} <= {m.kind for m in corpus}
    ids = {fake.add_message(USER, m.raw, ["INBOX"], internal_date=m.internaldate): m for m in corpus}
    fake.set_quota(limit=100_000)  # 80 gets in well under a second would be rate limited otherwise
    service = service_for(fake)
    served = 0
    for message_id, seeded in ids.items():
        got = service.users().messages().get(userId="me", id=message_id, format="raw").execute()
        assert sha(raw_of(got)) == sha(seeded.raw), seeded.kind
        assert got["id"] == message_id and got["threadId"]
        assert got["internalDate"] == str(int(seeded.internaldate.timestamp() * 1000))
        assert got["sizeEstimate"] == len(seeded.raw) and got["labelIds"] == ["INBOX"]
        assert int(got["historyId"]) <= fake.history_id(USER)
        assert "payload" not in got
        served += len(seeded.raw)
        # Every format must work on malformed mail too.
        full = service.users().messages().get(userId="me", id=message_id).execute()
        assert full["payload"]["partId"] == "" and "raw" not in full
    assert fake.stats(USER).raw_bytes_served == served


def test_get_metadata_minimal_and_full_formats(fake: GmailFake) -> None:
    raw = (
        b"From: =?UTF-8?Q?Zo=C3=AB?= <zoe@example.se>\r\nTo: dana@example.com\r\nSubject: =?UTF-8?Q?Caf=C3=A9?=\r\n"
        b"Message-ID: <m1@example.se>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nIt's the caf\xc3\xa9 <menu>\r\n"
        b'--b1\r\nContent-Type: application/pdf; name="a.pdf"\r\nContent-Disposition: attachment; filename="a.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
    )
    message_id = fake.add_message(USER, raw, ["INBOX"])
    service = service_for(fake)
    messages = service.users().messages()

    metadata = messages.get(userId="me", id=message_id, format="metadata", metadataHeaders=["subject", "From"]).execute()
    assert metadata["payload"]["headers"] == [
        {"name": "From", "value": "Zoë <zoe@example.se>"},
        {"name": "Subject", "value": "Café"},
    ]
    assert metadata["snippet"] == "It&#39;s the café &lt;menu&gt;"

    minimal = messages.get(userId="me", id=message_id, format="minimal").execute()
    assert set(minimal) == {"id", "threadId", "labelIds", "snippet", "historyId", "internalDate", "sizeEstimate"}

    full = messages.get(userId="me", id=message_id, format="full").execute()
    text, attachment = full["payload"]["parts"]
    assert full["payload"]["mimeType"] == "multipart/mixed"
    assert (text["partId"], attachment["partId"]) == ("0", "1")
    assert base64.urlsafe_b64decode(text["body"]["data"]) == "It's the café <menu>".encode()
    assert attachment["filename"] == "a.pdf" and "data" not in attachment["body"]
    body = messages.attachments().get(userId="me", messageId=message_id, id=attachment["body"]["attachmentId"]).execute()
    assert base64.urlsafe_b64decode(body["data"]) == b"%PDF-1.4\n"

    with pytest.raises(HttpError) as missing:
        messages.get(userId="me", id="ffff0000ffff0000").execute()
    assert missing.value.resp.status == 404
    assert error_of(missing.value) == {
        "code": 404,
        "message": "Requested entity was not found.",
        "errors": [{"message": "Requested entity was not found.", "domain": "global", "reason": "notFound"}],
        "status": "NOT_FOUND",
    }
    # The client validates enums itself: bad parameters go over plain HTTP.
    auth = {"Authorization": f"Bearer {fake.access_token(USER)}"}
    for url in (f"messages/{message_id}?format=bogus", "messages?maxResults=ten", f"messages/{message_id[:-1]}xyz"):
        bad = httpx.get(f"{fake.endpoint}/gmail/v1/users/me/{url}", headers=auth)
        assert bad.status_code == 400, url
        assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def batch_get(fake: GmailFake, service: Resource, ids: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def collect(request_id: str, response: Any, exception: HttpError | None) -> None:
        results[request_id] = exception if exception is not None else response

    batch = new_batch_request(fake, callback=collect)
    for message_id in ids:
        batch.add(service.users().messages().get(userId="me", id=message_id, format="raw"), request_id=message_id)
    batch.execute()
    return results


def test_batch_of_100_gets_and_101_is_refused() -> None:
    with GmailFake.start(quota_limit=10_000) as fake:
        fake.add_user(USER)
        ids = fake.seed(USER, 101, seed=5)
        service = service_for(fake)
        results = batch_get(fake, service, ids[:100])
        assert set(results) == set(ids[:100])
        for message_id, message in results.items():
            assert message["id"] == message_id
            assert sha(raw_of(message)) == sha(fake.message(USER, message_id).raw)
        stats = fake.stats(USER)
        assert stats.calls["messages.get"] == 100 and stats.total_units == 500  # each part charged alone
        assert stats.batch_requests == 1

        with pytest.raises(HttpError) as too_many:
            batch_get(fake, service, ids)
        assert too_many.value.resp.status == 400
        assert error_of(too_many.value)["errors"][0]["reason"] == "invalidArgument"
        assert fake.stats(USER).calls["messages.get"] == 100  # nothing of the refused batch ran


def test_batch_parts_over_quota_get_429_inside_the_batch(fake: GmailFake) -> None:
    ids = fake.seed(USER, 60, seed=2)
    results = batch_get(fake, service_for(fake), ids)
    ok = [r for r in results.values() if isinstance(r, dict)]
    limited = [r for r in results.values() if isinstance(r, HttpError)]
    # 250 units per second at 5 units per get: the first 50 parts pass, the rest are rate limited.
    assert len(ok) == 50 and len(limited) == 10
    assert all(e.resp.status == 429 and int(e.resp["retry-after"]) >= 1 for e in limited)
    assert fake.stats(USER).max_units_in_window == 250


def test_batch_parts_answered_401_are_refreshed_and_resent(fake: GmailFake) -> None:
    ids = fake.seed(USER, 3, seed=6)
    service = service_for(fake)
    assert len(batch_get(fake, service, ids)) == 3
    fake.expire_access_tokens(USER)
    results = batch_get(fake, service, ids)  # every part 401s; the client refreshes and resends them
    assert [results[i]["id"] for i in ids] == ids
    assert fake.token_refreshes == 2
    fake.revoke(USER)
    with pytest.raises(RefreshError):
        batch_get(fake, service, ids)


def test_batch_endpoint_accepts_crlf_and_lf_parts(fake: GmailFake) -> None:
    ids = fake.seed(USER, 2, seed=4)
    token = fake.access_token(USER)
    for newline in ("\r\n", "\n"):
        parts = "".join(
            f"--xyz{newline}Content-Type: application/http{newline}Content-ID: <item{i}>{newline}{newline}"
            f"GET /gmail/v1/users/me/messages/{message_id}?format=minimal{newline}{newline}"
            for i, message_id in enumerate(ids)
        )
        response = httpx.post(
            fake.batch_uri,
            content=(parts + "--xyz--" + newline).encode(),
            headers={"Content-Type": "multipart/mixed; boundary=xyz", "Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200
        assert response.text.count("HTTP/1.1 200 OK") == 2
        assert "Content-ID: <response-item0>" in response.text and "Content-ID: <response-item1>" in response.text


def test_history_records_every_mutation_in_order(fake: GmailFake) -> None:
    service = service_for(fake)
    start = service.users().getProfile(userId="me").execute()["historyId"]
    first, reply = seed_reply_chain(fake, USER, 2, seed=7)
    label = fake.create_label(USER, "Projects/Alpha")
    fake.modify_labels(USER, first, add=[label, "STARRED"], remove=["INBOX"])
    fake.trash(USER, reply)
    fake.delete_message(USER, first)

    history = service.users().history().list(userId="me", startHistoryId=start).execute()
    records = history["history"]
    assert history["historyId"] == str(fake.history_id(USER))
    ids = [int(r["id"]) for r in records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and int(start) < ids[0]
    assert records[0]["messagesAdded"][0]["message"] == {"id": first, "threadId": first, "labelIds": ["INBOX"]}
    assert records[1]["messagesAdded"][0]["message"]["threadId"] == first  # the reply joined the thread
    assert records[2]["labelsAdded"] == [
        {"message": {"id": first, "threadId": first, "labelIds": [label, "STARRED"]}, "labelIds": [label, "STARRED"]}
    ]
    assert records[2]["labelsRemoved"][0]["labelIds"] == ["INBOX"]
    assert records[3]["labelsAdded"][0]["labelIds"] == ["TRASH"]
    assert records[3]["labelsRemoved"][0]["labelIds"] == ["INBOX"]
    assert records[4]["messagesDeleted"] == [{"message": {"id": first, "threadId": first, "labelIds": [label, "STARRED"]}}]
    assert all(r["messages"][0]["id"] in (first, reply) for r in records)

    added_only = service.users().history().list(userId="me", startHistoryId=start, historyTypes="messageAdded").execute()
    assert [r["id"] for r in added_only["history"]] == [str(i) for i in ids[:2]]
    trash_only = service.users().history().list(userId="me", startHistoryId=start, labelId="TRASH").execute()
    assert [r["id"] for r in trash_only["history"]] == [str(ids[3])]

    paged: list[str] = []
    token = None
    while True:
        page = service.users().history().list(userId="me", startHistoryId=start, maxResults=2, pageToken=token).execute()
        paged += [r["id"] for r in page["history"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert paged == [str(i) for i in ids]

    caught_up = service.users().history().list(userId="me", startHistoryId=history["historyId"]).execute()
    assert caught_up == {"historyId": history["historyId"]}
    with pytest.raises(HttpError) as deleted:
        service.users().messages().get(userId="me", id=first).execute()
    assert deleted.value.resp.status == 404


def test_history_too_old_is_404() -> None:
    with GmailFake.start(history_retention=3) as fake:
        fake.add_user(USER)
        service = service_for(fake)
        start = service.users().getProfile(userId="me").execute()["historyId"]
        fake.seed(USER, 2)
        assert "history" in service.users().history().list(userId="me", startHistoryId=start).execute()
        fake.seed(USER, 2, seed=1)  # 4 records now, 3 kept: `start` is too old
        with pytest.raises(HttpError) as too_old:
            service.users().history().list(userId="me", startHistoryId=start).execute()
        assert too_old.value.resp.status == 404
        assert error_of(too_old.value)["errors"][0]["reason"] == "notFound"

        recent = str(fake.history_id(USER))
        fake.expire_history(USER)
        with pytest.raises(HttpError):
            service.users().history().list(userId="me", startHistoryId=str(int(recent) - 1)).execute()
        assert service.users().history().list(userId="me", startHistoryId=recent).execute() == {"historyId": recent}
        with pytest.raises(HttpError) as missing:
            service.users().history().list(userId="me").execute()
        assert missing.value.resp.status == 400


def test_quota_429_with_retry_after_and_paced_calls_stay_under_the_limit() -> None:
    with GmailFake.start(quota_limit=100) as fake:
        fake.add_user(USER)
        (message_id,) = fake.seed(USER, 1)
        service = service_for(fake)
        get = service.users().messages().get(userId="me", id=message_id, format="minimal")
        for _ in range(20):  # 20 x 5 = the whole budget of this second
            get.execute()
        with pytest.raises(HttpError) as limited:
            get.execute()
        assert limited.value.resp.status == 429
        assert int(limited.value.resp["retry-after"]) == 1
        error = error_of(limited.value)
        assert error["status"] == "RESOURCE_EXHAUSTED" and error["errors"][0]["reason"] == "rateLimitExceeded"
        stats = fake.stats(USER)
        assert stats.rate_limited == 1 and stats.max_units_in_window == 100 and stats.calls["messages.get"] == 20

        # A client spacing its calls to stay under 80 units/s never meets a 429.
        time.sleep(1.0)
        fake.reset_stats()
        for _ in range(25):
            time.sleep(5 / 80)
            get.execute()
        stats = fake.stats(USER)
        assert stats.rate_limited == 0 and stats.total_units == 125 and stats.max_units_in_window <= 80


def test_forced_rate_limit_and_403_form() -> None:
    with GmailFake.start(rate_limit_status=403) as fake:
        fake.add_user(USER)
        service = service_for(fake)
        fake.force_rate_limit(2, retry_after=7)
        for _ in range(2):
            with pytest.raises(HttpError) as limited:
                service.users().labels().list(userId="me").execute()
            assert limited.value.resp.status == 403 and limited.value.resp["retry-after"] == "7"
            assert error_of(limited.value)["errors"][0] == {
                "message": "User Rate Limit Exceeded",
                "domain": "usageLimits",
                "reason": "userRateLimitExceeded",
            }
        assert "labels" in service.users().labels().list(userId="me").execute()
        fake.force_errors(1, status=503)
        with pytest.raises(HttpError) as unavailable:
            service.users().labels().list(userId="me").execute()
        assert unavailable.value.resp.status == 503
        assert fake.stats().rate_limited == 2 and fake.stats().forced_errors == 3


def test_auth_expired_revoked_tokens_and_invalid_grant(fake: GmailFake) -> None:
    credentials = user_credentials(fake, USER)
    service = build_gmail_service(fake, credentials)
    service.users().getProfile(userId="me").execute()
    assert fake.token_refreshes == 1

    # An expired access token is refreshed transparently (401, refresh, retry).
    fake.expire_access_tokens(USER)
    service.users().getProfile(userId="me").execute()
    assert fake.token_refreshes == 2

    # Without refreshing, the client sees Google's 401.
    no_refresh = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(), max_refresh_attempts=0)
    raw_service = build_gmail_service(fake, http=no_refresh)
    fake.revoke_access_tokens(USER)
    with pytest.raises(HttpError) as unauthorized:
        raw_service.users().getProfile(userId="me").execute()
    assert unauthorized.value.resp.status == 401
    assert unauthorized.value.resp["www-authenticate"].startswith("Bearer")
    error = error_of(unauthorized.value)
    assert error["status"] == "UNAUTHENTICATED" and error["errors"][0]["reason"] == "authError"

    # The user revokes the app: the refresh token is dead too.
    fake.revoke(USER)
    with pytest.raises(RefreshError) as refresh:
        service.users().getProfile(userId="me").execute()
    assert "invalid_grant" in str(refresh.value)
    with pytest.raises(RefreshError):
        credentials.refresh(google_auth_httplib2.Request(httplib2.Http()))

    missing = httpx.get(f"{fake.endpoint}/gmail/v1/users/me/profile")
    assert missing.status_code == 401 and missing.json()["error"]["errors"][0]["reason"] == "authError"
    grant = httpx.post(fake.token_uri, data={"grant_type": "refresh_token", "refresh_token": "rt-dana"})
    assert grant.status_code == 400 and grant.json()["error"] == "invalid_grant"


def test_users_are_isolated_and_delegation_is_denied(fake: GmailFake) -> None:
    fake.add_user(OTHER)
    fake.seed(OTHER, 5)
    dana, eve = service_for(fake), service_for(fake, OTHER)
    assert dana.users().messages().list(userId="me").execute()["resultSizeEstimate"] == 0
    assert eve.users().messages().list(userId=OTHER).execute()["resultSizeEstimate"] == 5
    with pytest.raises(HttpError) as denied:
        dana.users().messages().list(userId=OTHER).execute()
    assert denied.value.resp.status == 403
    assert fake.stats(OTHER).calls == {"messages.list": 1}


def test_labels_list_and_get_with_counts(fake: GmailFake) -> None:
    ids = fake.seed(USER, 120, seed=8)
    service = service_for(fake)
    labels = service.users().labels().list(userId="me").execute()["labels"]
    by_id = {label["id"]: label for label in labels}
    for system in ("INBOX", "SENT", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "DRAFT", "CATEGORY_PERSONAL"):
        assert by_id[system]["type"] == "system" and by_id[system]["name"] == system
    assert by_id["SPAM"]["labelListVisibility"] == "labelHide"
    lists = next(label for label in labels if label["name"] == "Lists/Python")
    assert lists["type"] == "user" and lists["id"].startswith("Label_")
    assert set(lists["color"]) == {"textColor", "backgroundColor"}
    assert lists["messageListVisibility"] == "show" and lists["labelListVisibility"] == "labelShow"
    assert "messagesTotal" not in lists  # counts only come with labels.get

    inbox = service.users().labels().get(userId="me", id="INBOX").execute()
    in_inbox = [m for m in ids if "INBOX" in fake.message(USER, m).labels]
    unread = [m for m in in_inbox if "UNREAD" in fake.message(USER, m).labels]
    assert inbox["messagesTotal"] == len(in_inbox) > 0
    assert inbox["messagesUnread"] == len(unread)
    assert inbox["threadsTotal"] == len({fake.message(USER, m).thread_id for m in in_inbox})

    created = service.users().labels().create(userId="me", body={"name": "Receipts"}).execute()
    assert created["type"] == "user" and fake.label_id(USER, "Receipts") == created["id"]
    with pytest.raises(HttpError) as duplicate:
        service.users().labels().create(userId="me", body={"name": "receipts"}).execute()
    assert duplicate.value.resp.status == 409
    with pytest.raises(HttpError) as missing:
        service.users().labels().get(userId="me", id="Label_999").execute()
    assert missing.value.resp.status == 404


def test_threads_list_and_get(fake: GmailFake) -> None:
    chain = seed_reply_chain(fake, USER, 4, seed=2)
    single = fake.add_message(USER, reply_chain(1, seed=99)[0], ["INBOX"], internal_date=1_600_000_000_000)
    service = service_for(fake)
    threads = service.users().threads().list(userId="me").execute()
    assert [t["id"] for t in threads["threads"]] == [chain[0], single]  # newest activity first
    assert threads["resultSizeEstimate"] == 2 and threads["threads"][0]["snippet"]

    thread = service.users().threads().get(userId="me", id=chain[0], format="metadata", metadataHeaders="Subject").execute()
    assert [m["id"] for m in thread["messages"]] == chain
    assert {m["threadId"] for m in thread["messages"]} == {chain[0]}
    assert thread["historyId"] == str(max(fake.message(USER, m).history_id for m in chain))
    assert thread["messages"][1]["payload"]["headers"] == [{"name": "Subject", "value": "Re: Quarterly planning"}]

    pages = service.users().threads().list(userId="me", maxResults=1).execute()
    rest = service.users().threads().list(userId="me", maxResults=1, pageToken=pages["nextPageToken"]).execute()
    assert [t["id"] for t in pages["threads"] + rest["threads"]] == [chain[0], single] and "nextPageToken" not in rest
    assert fake.stats(USER).calls["threads.list"] == 3 and fake.stats(USER).total_units == 3 * 10 + 10


def test_watch_stop_and_notifications(fake: GmailFake) -> None:
    service = service_for(fake)
    watch = service.users().watch(userId="me", body={"topicName": "projects/p/topics/gmail", "labelIds": ["INBOX"]}).execute()
    assert watch["historyId"] == str(fake.history_id(USER))
    assert int(watch["expiration"]) > time.time() * 1000 + 6 * 86_400_000
    inbox = fake.add_message(USER, reply_chain(1)[0], ["INBOX"])
    fake.add_message(USER, reply_chain(1, seed=3)[0], ["SENT"])  # filtered out by the watch's labels
    assert fake.notifications == [{"emailAddress": USER, "historyId": str(fake.message(USER, inbox).history_id)}]
    assert service.users().stop(userId="me").execute() == ""
    fake.add_message(USER, reply_chain(1, seed=4)[0], ["INBOX"])
    assert len(fake.notifications) == 1
    assert fake.stats(USER).total_units == 100 + 50
    with pytest.raises(HttpError) as bad_topic:
        service.users().watch(userId="me", body={"topicName": "gmail"}).execute()
    assert bad_topic.value.resp.status == 400


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def test_push_notifications_are_posted_as_pubsub_messages(fake: GmailFake) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        fake.set_push_url(f"http://127.0.0.1:{receiver.server_address[1]}/push")
        service_for(fake).users().watch(userId="me", body={"topicName": "projects/p/topics/t"}).execute()
        message_id = fake.add_message(USER, reply_chain(1)[0], ["INBOX"])
        fake.modify_labels(USER, message_id, remove=["INBOX"])
        deadline = time.monotonic() + 5
        while len(_Receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        datas = [json.loads(base64.b64decode(envelope["message"]["data"])) for envelope in _Receiver.received]
        assert datas == fake.notifications and len(datas) == 2
        assert datas[-1] == {"emailAddress": USER, "historyId": str(fake.history_id(USER))}
        assert all(envelope["subscription"] and envelope["message"]["messageId"] for envelope in _Receiver.received)
    finally:
        receiver.shutdown()


def test_command_line_server_serves_a_seeded_mailbox() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.gmail_fake", "--seed-messages", "30", "--refresh-token", "rt-cli"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        (user,) = info["users"]
        assert user["refresh_token"] == "rt-cli"
        credentials = google.oauth2.credentials.Credentials(
            token=None, refresh_token="rt-cli", client_id="c", client_secret="s", token_uri=info["token_uri"]
        )
        profile = build_gmail_service(info["endpoint"], credentials).users().getProfile(userId="me").execute()
        assert profile["emailAddress"] == user["address"] and profile["messagesTotal"] == 30
        assert profile["historyId"] == str(user["history_id"])
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
