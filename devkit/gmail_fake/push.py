"""Gmail push notifications for watched mailboxes, delivered as Pub/Sub push messages.

After users.watch, every history record that passes the watch's label
filter produces a notification `{"emailAddress", "historyId"}`. The fake
keeps them in `notifications` (for tests to inspect) and, when a push URL
is set, POSTs each one there wrapped in a Pub/Sub push envelope, from a
background thread, as Google's Pub/Sub push subscription would.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
from datetime import datetime, timezone
from typing import Any

import httpx

from devkit.gmail_fake.state import HistoryRecord, Mailbox

__all__ = ["PushNotifier"]

_LOG = logging.getLogger(__name__)
_SUBSCRIPTION = "projects/mailsync-fake/subscriptions/gmail-push"


class PushNotifier:
    """Collects notifications and, if `url` is set, delivers them in order on a daemon thread."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.notifications: list[dict[str, str]] = []
        self.delivered = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._sequence = 0

    def on_record(self, mailbox: Mailbox, record: HistoryRecord) -> None:
        """Store listener (runs under the store lock: only enqueues)."""
        watch = mailbox.watch
        if watch is None or watch.expiration_ms < _now_ms():
            return
        if not any(watch.wants(change) for change in record.changes):
            return
        payload = {"emailAddress": mailbox.address, "historyId": str(record.id)}
        with self._lock:
            self.notifications.append(payload)
            self._sequence += 1
            sequence = self._sequence
            url = self.url
        if url is not None:
            self._ensure_thread()
            self._queue.put({"url": url, "payload": payload, "sequence": sequence})

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver_loop, name="gmail-fake-push", daemon=True)
                self._thread.start()

    def _deliver_loop(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                data = base64.b64encode(json.dumps(item["payload"]).encode()).decode()
                published = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                message_id = str(10_000_000_000 + item["sequence"])
                envelope = {
                    "message": {
                        "data": data,
                        "messageId": message_id,
                        "message_id": message_id,
                        "publishTime": published,
                        "publish_time": published,
                    },
                    "subscription": _SUBSCRIPTION,
                }
                try:
                    response = client.post(item["url"], json=envelope)
                    ok = response.status_code < 300
                except httpx.HTTPError as exc:
                    _LOG.warning("push to %s failed: %s", item["url"], exc)
                    ok = False
                with self._lock:
                    if ok:
                        self.delivered += 1
                    else:
                        self.failed += 1

    def close(self) -> None:
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5)


def _now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)
