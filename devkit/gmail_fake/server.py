"""`GmailFake`: the local Gmail API server, run by uvicorn on a loopback port in a daemon thread.

Tests, the demo and benchmarks start one, add users (each bound to a
refresh token), seed and mutate mailboxes through its Python API, point a
real google-api-python-client at `endpoint` / `token_uri`, and read its
counters afterwards. Mutations take the store's lock, so they are safe
while the server thread is answering requests.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any

import uvicorn

from devkit.gmail_fake.app import FakeContext, create_app
from devkit.gmail_fake.auth import TokenIssuer
from devkit.gmail_fake.models import LabelColor
from devkit.gmail_fake.push import PushNotifier
from devkit.gmail_fake.quota import QuotaLedger, QuotaStats
from devkit.gmail_fake.state import Label, MailStore, StoredMessage

__all__ = ["GmailFake"]


class GmailFake:
    """A Gmail REST API v1 server on 127.0.0.1 with a Python API to shape what it serves.

    Quota: `quota_limit` units per user per `quota_window` seconds (sliding
    window; Gmail documents 250/s); `enforce_quota=False` only counts.
    `rate_limit_status` 429 (default) or 403 picks the form of rate errors.
    History: `history_retention` keeps only the newest N records per user
    (None: all); older startHistoryIds then get 404, as do ids before a
    call to `expire_history`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        quota_limit: int = 250,
        quota_window: float = 1.0,
        enforce_quota: bool = True,
        rate_limit_status: int = 429,
        history_retention: int | None = None,
        access_token_ttl: int = 3600,
        client_id: str | None = None,
        client_secret: str | None = None,
        push_url: str | None = None,
    ) -> None:
        self.host = host
        self.store = MailStore(history_retention=history_retention)
        self.quota = QuotaLedger(
            limit=quota_limit, window=quota_window, enforce=enforce_quota, rate_limit_status=rate_limit_status
        )
        self.tokens = TokenIssuer(access_token_ttl=access_token_ttl, client_id=client_id, client_secret=client_secret)
        self.push = PushNotifier(push_url)
        self.store.subscribe(self.push.on_record)
        self.app = create_app(FakeContext(self.store, self.quota, self.tokens, self.push))
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # Lifecycle -------------------------------------------------------------

    @classmethod
    def start(cls, **kwargs: Any) -> GmailFake:
        """Construct with `kwargs` and start serving; returns once the port accepts requests."""
        fake = cls(**kwargs)
        fake.serve()
        return fake

    def serve(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on sockets that say so,
        # and without it every keep-alive response stalls ~40 ms on delayed ACKs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"gmail-fake-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Gmail fake did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self.push.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> GmailFake:
        if self._thread is None:
            self.serve()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL for `client_options={"api_endpoint": …}`; requests go to `/gmail/v1/users/…`."""
        return f"http://{self.host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.endpoint}/token"

    @property
    def batch_uri(self) -> str:
        return f"{self.endpoint}/batch/gmail/v1"

    # Users and credentials -------------------------------------------------

    def add_user(self, address: str, refresh_token: str | None = None) -> str:
        """Create an empty mailbox bound to `refresh_token` (generated if None); returns the token."""
        self.store.add_mailbox(address)
        return self.tokens.bind(address, refresh_token)

    def users(self) -> list[str]:
        return self.store.addresses()

    def refresh_token(self, address: str) -> str:
        """The user's (first) valid refresh token; KeyError when revoked."""
        tokens = self.tokens.refresh_tokens(address)
        if not tokens:
            raise KeyError(f"{address} has no valid refresh token")
        return tokens[0]

    def set_refresh_token(self, address: str, refresh_token: str | None = None) -> str:
        """Bind an additional (e.g. re-consented) refresh token to the user; returns it."""
        self.store.mailbox(address)
        return self.tokens.bind(address, refresh_token)

    def access_token(self, address: str) -> str:
        """A valid access token issued directly (no token endpoint round trip)."""
        return self.tokens.issue(address).token

    def revoke(self, address: str) -> None:
        """The user revokes the app: refreshing fails with invalid_grant and API calls get 401."""
        self.tokens.revoke(address)

    def revoke_access_tokens(self, address: str) -> None:
        self.tokens.revoke_access_tokens(address)

    def expire_access_tokens(self, address: str) -> None:
        self.tokens.expire_access_tokens(address)

    @property
    def token_refreshes(self) -> int:
        """Access tokens granted by the token endpoint so far."""
        return self.tokens.refreshes

    # Mailbox content -------------------------------------------------------

    def add_message(
        self,
        user: str,
        raw: bytes,
        label_ids: Iterable[str] = ("INBOX", "UNREAD"),
        *,
        thread_id: str | None = None,
        internal_date: datetime | int | None = None,
    ) -> str:
        """Deliver a message; threadId derived from In-Reply-To/References + subject when None. Returns its id."""
        return self.store.add_message(user, raw, label_ids, thread_id=thread_id, internal_date=internal_date).id

    def message(self, user: str, message_id: str) -> StoredMessage:
        return self.store.get_message(user, message_id)

    def message_ids(self, user: str) -> list[str]:
        """All message ids, newest first."""
        with self.store.lock:
            return [message.id for message in self.store.mailbox(user).newest_first()]

    def thread_ids(self, user: str) -> list[str]:
        with self.store.lock:
            return list(self.store.mailbox(user).threads)

    def modify_labels(
        self, user: str, message_id: str, *, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> list[str]:
        """Change labels in one history record; returns the message's labels afterwards."""
        return list(self.store.modify(user, message_id, add=add, remove=remove).labels)

    def trash(self, user: str, message_id: str) -> None:
        self.store.trash(user, message_id)

    def untrash(self, user: str, message_id: str) -> None:
        self.store.untrash(user, message_id)

    def delete_message(self, user: str, message_id: str) -> None:
        self.store.delete(user, message_id)

    def create_label(self, user: str, name: str, *, color: tuple[str, str] | None = None) -> str:
        """A user label (id `Label_N`); `color` is (backgroundColor, textColor). Returns its id."""
        label_color = LabelColor(background_color=color[0], text_color=color[1]) if color else None
        return self.store.create_label(user, name, color=label_color).id

    def delete_label(self, user: str, label_id: str) -> None:
        self.store.delete_label(user, label_id)

    def label(self, user: str, label_id: str) -> Label:
        with self.store.lock:
            return self.store.mailbox(user).labels[label_id]

    def label_id(self, user: str, name: str) -> str | None:
        with self.store.lock:
            label = self.store.mailbox(user).label_by_name(name)
            return label.id if label else None

    def history_id(self, user: str) -> int:
        with self.store.lock:
            return self.store.mailbox(user).history_id

    def expire_history(self, user: str, *, keep_last: int = 0) -> int:
        """Drop history so older startHistoryIds get 404; returns the oldest id still accepted."""
        return self.store.expire_history(user, keep_last=keep_last)

    def seed(self, user: str, n: int, *, seed: int = 0, **corpus_kwargs: Any) -> list[str]:
        """Fill the mailbox with `n` deterministic corpus messages (see `devkit.gmail_fake.seed`)."""
        from devkit.gmail_fake.seed import seed_mailbox

        return seed_mailbox(self, user, n, seed=seed, **corpus_kwargs)

    # Quota, failures, counters ---------------------------------------------

    def force_rate_limit(self, n_requests: int, *, user: str | None = None, retry_after: int = 1) -> None:
        """Answer the next `n_requests` API calls (of `user`, or anyone's) with a rate-limit error."""
        self.quota.force_errors(n_requests, status=self.quota.rate_limit_status, user=user, retry_after=retry_after)

    def force_errors(self, n_requests: int, *, status: int = 503, user: str | None = None) -> None:
        """Answer the next `n_requests` API calls with `status` (500/503: Google's backendError)."""
        self.quota.force_errors(n_requests, status=status, user=user)

    def refuse_message(self, user: str, message_id: str, times: int | None = None) -> None:
        """Answer messages.get of this message with Gmail's 400 failedPrecondition, `times` times (the
        intermittent kind) or until `serve_message` (a message Gmail will not serve)."""
        self.store.refuse(user, message_id, times)

    def serve_message(self, user: str, message_id: str) -> None:
        self.store.serve(user, message_id)

    def set_quota(self, *, limit: int | None = None, enforce: bool | None = None) -> None:
        if limit is not None:
            self.quota.limit = limit
        if enforce is not None:
            self.quota.enforce = enforce

    def stats(self, user: str | None = None) -> QuotaStats:
        """Counters for `user`, or summed over users (max_units_in_window: the worst user)."""
        return self.quota.stats(user)

    def reset_stats(self) -> None:
        self.quota.reset()

    @property
    def notifications(self) -> list[dict[str, str]]:
        """Push notifications produced so far for watched mailboxes ({"emailAddress", "historyId"})."""
        return list(self.push.notifications)

    def set_push_url(self, url: str | None) -> None:
        self.push.url = url
