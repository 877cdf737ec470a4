"""Mailbox state of the fake: messages, threads, labels and history, per user.

This is the one place that mutates mailboxes, and every mutation follows
Gmail's rules: it appends a history record, advances the user's historyId
(monotonic, with random gaps, because real ids are not contiguous), and
stamps the touched messages with it. Message ids are 64-bit hex like
Gmail's (millisecond time in the high bits); a thread's id is the id of its
first message; replies join their parent's thread when they reference it
(In-Reply-To / References) and their subject matches, as Gmail threads.

All public methods take the store's lock: the HTTP server runs in another
thread than the tests that seed and mutate mailboxes.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from devkit.gmail_fake.errors import GmailApiError, conflict, failed_precondition, invalid_argument, not_found
from devkit.gmail_fake.mime import HeaderInfo, normalize_subject, snippet
from devkit.gmail_fake.models import LabelColor

__all__ = [
    "SYSTEM_LABEL_IDS",
    "Change",
    "ChangeKind",
    "HistoryRecord",
    "Label",
    "MailStore",
    "Mailbox",
    "StoredMessage",
    "Watch",
]

ChangeKind = Literal["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]

# id, messageListVisibility, labelListVisibility: as Gmail's labels.list shows system labels.
_SYSTEM_LABELS: tuple[tuple[str, str | None, str | None], ...] = (
    ("CHAT", "hide", "labelHide"),
    ("SENT", None, None),
    ("INBOX", None, None),
    ("IMPORTANT", "hide", "labelHide"),
    ("TRASH", "hide", "labelHide"),
    ("DRAFT", None, None),
    ("SPAM", "hide", "labelHide"),
    ("CATEGORY_FORUMS", "hide", "labelHide"),
    ("CATEGORY_UPDATES", "hide", "labelHide"),
    ("CATEGORY_PERSONAL", "hide", "labelHide"),
    ("CATEGORY_PROMOTIONS", "hide", "labelHide"),
    ("CATEGORY_SOCIAL", "hide", "labelHide"),
    ("STARRED", None, None),
    ("UNREAD", None, None),
)
SYSTEM_LABEL_IDS: frozenset[str] = frozenset(label_id for label_id, _, _ in _SYSTEM_LABELS)

# A few of the background/text pairs Gmail's label palette allows.
_PALETTE: tuple[tuple[str, str], ...] = (
    ("#16a766", "#ffffff"),
    ("#4a86e8", "#ffffff"),
    ("#fad165", "#000000"),
    ("#f691b3", "#994a64"),
    ("#a479e2", "#ffffff"),
    ("#ffad47", "#ffffff"),
    ("#43d692", "#094228"),
    ("#cccccc", "#000000"),
)

_ATTACHMENT = re.compile(rb"^content-disposition:\s*attachment", re.IGNORECASE | re.MULTILINE)
_ID_SEQUENCE_BITS = 20


@dataclass
class Label:
    id: str
    name: str
    type: Literal["system", "user"]
    message_list_visibility: str | None = None
    label_list_visibility: str | None = None
    color: LabelColor | None = None


@dataclass(eq=False)
class StoredMessage:
    id: str
    thread_id: str
    raw: bytes
    internal_date_ms: int
    labels: dict[str, None]  # an ordered set: label order is stable across reads
    history_id: int
    headers: HeaderInfo
    restore_inbox_on_untrash: bool = False
    _snippet: str | None = None

    @property
    def sort_key(self) -> tuple[int, int]:
        """Gmail lists newest first; the id breaks ties between equal dates."""
        return (self.internal_date_ms, int(self.id, 16))

    @property
    def snippet(self) -> str:
        if self._snippet is None:
            self._snippet = snippet(self.raw)
        return self._snippet

    def label_set(self) -> Collection[str]:
        return self.labels.keys()

    def header_text(self, field_name: str) -> str:
        if field_name == "from":
            return self.headers.sender
        if field_name == "recipients":
            return self.headers.recipients
        if field_name == "subject":
            return self.headers.subject
        if field_name == "message-id":
            return self.headers.message_id or ""
        return ""

    def has_attachment(self) -> bool:
        return _ATTACHMENT.search(self.raw) is not None


@dataclass(frozen=True, slots=True)
class Change:
    """One message's part of a history record. `label_ids` are the message's labels after the change."""

    kind: ChangeKind
    message_id: str
    thread_id: str
    label_ids: tuple[str, ...]
    changed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    id: int
    changes: tuple[Change, ...]


@dataclass
class Watch:
    topic_name: str
    label_ids: tuple[str, ...]
    behavior: Literal["include", "exclude"]
    expiration_ms: int

    def wants(self, change: Change) -> bool:
        if not self.label_ids:
            return True
        touched = set(change.label_ids) | set(change.changed)
        hit = any(label in touched for label in self.label_ids)
        return hit if self.behavior == "include" else not hit


@dataclass(eq=False)
class Mailbox:
    address: str
    history_id: int
    history_floor: int  # records with id <= floor are gone: older startHistoryIds get 404
    gaps: random.Random
    messages: dict[str, StoredMessage] = field(default_factory=dict)
    threads: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, Label] = field(default_factory=dict)
    history: list[HistoryRecord] = field(default_factory=list)
    by_rfc822_id: dict[str, str] = field(default_factory=dict)
    next_label_number: int = 1
    watch: Watch | None = None
    version: int = 0  # bumped when the set of messages or their dates change
    _sorted: list[StoredMessage] | None = None
    _sorted_version: int = -1

    def newest_first(self) -> list[StoredMessage]:
        # Listing 20k messages page by page must not re-sort on every page.
        if self._sorted is None or self._sorted_version != self.version:
            self._sorted = sorted(self.messages.values(), key=lambda m: m.sort_key, reverse=True)
            self._sorted_version = self.version
        return self._sorted

    def label_by_name(self, name: str) -> Label | None:
        wanted = name.lower()
        return next((label for label in self.labels.values() if label.name.lower() == wanted), None)


class MailStore:
    """All mailboxes of one fake server, guarded by one re-entrant lock."""

    def __init__(self, *, history_retention: int | None = None) -> None:
        self.lock = threading.RLock()
        self.history_retention = history_retention
        self._mailboxes: dict[str, Mailbox] = {}
        self._sequence = 0
        self._used_ids: set[int] = set()
        self._listeners: list[Callable[[Mailbox, HistoryRecord], None]] = []
        # (address, message id) -> refusals left (None: for good); see `refuse`
        self._refusals: dict[tuple[str, str], int | None] = {}

    # Mailboxes -------------------------------------------------------------

    def add_mailbox(self, address: str) -> Mailbox:
        with self.lock:
            key = address.lower()
            if key in self._mailboxes:
                raise ValueError(f"mailbox {address} already exists")
            digest = hashlib.sha256(key.encode()).digest()
            start = 100_000 + int.from_bytes(digest[:3], "big") % 900_000
            mailbox = Mailbox(address=address, history_id=start, history_floor=start, gaps=random.Random(digest))
            for label_id, message_visibility, list_visibility in _SYSTEM_LABELS:
                mailbox.labels[label_id] = Label(label_id, label_id, "system", message_visibility, list_visibility)
            self._mailboxes[key] = mailbox
            return mailbox

    def mailbox(self, address: str) -> Mailbox:
        with self.lock:
            try:
                return self._mailboxes[address.lower()]
            except KeyError:
                raise KeyError(f"no mailbox {address}") from None

    def addresses(self) -> list[str]:
        with self.lock:
            return [mailbox.address for mailbox in self._mailboxes.values()]

    def subscribe(self, listener: Callable[[Mailbox, HistoryRecord], None]) -> None:
        """Call `listener` (under the lock: it must only enqueue) after every new history record."""
        with self.lock:
            self._listeners.append(listener)

    # History ---------------------------------------------------------------

    def _record(self, mailbox: Mailbox, changes: Sequence[Change]) -> HistoryRecord:
        mailbox.history_id += mailbox.gaps.randint(1, 5)
        record = HistoryRecord(mailbox.history_id, tuple(changes))
        mailbox.history.append(record)
        for change in changes:
            message = mailbox.messages.get(change.message_id)
            if message is not None:
                message.history_id = record.id
        if self.history_retention is not None:
            self._prune(mailbox, self.history_retention)
        for listener in self._listeners:
            listener(mailbox, record)
        return record

    @staticmethod
    def _prune(mailbox: Mailbox, keep: int) -> None:
        excess = len(mailbox.history) - keep
        if excess > 0:
            mailbox.history_floor = mailbox.history[excess - 1].id
            del mailbox.history[:excess]

    def expire_history(self, address: str, *, keep_last: int = 0) -> int:
        """Forget all but the newest `keep_last` records; returns the oldest startHistoryId still valid."""
        with self.lock:
            mailbox = self.mailbox(address)
            self._prune(mailbox, keep_last)
            if keep_last == 0:
                mailbox.history_floor = mailbox.history_id
            return mailbox.history_floor

    # Messages --------------------------------------------------------------

    def _new_id(self, internal_date_ms: int) -> str:
        # Gmail ids carry the arrival time in their high bits; the low bits keep them unique.
        while True:
            self._sequence += 1
            value = (max(internal_date_ms, 0) << _ID_SEQUENCE_BITS) | (self._sequence & ((1 << _ID_SEQUENCE_BITS) - 1))
            if value not in self._used_ids:
                self._used_ids.add(value)
                return format(value, "x")

    def _check_labels(self, mailbox: Mailbox, label_ids: Iterable[str]) -> list[str]:
        result: list[str] = []
        for label_id in label_ids:
            if label_id not in mailbox.labels:
                raise invalid_argument(f"Invalid label: {label_id}")
            if label_id not in result:
                result.append(label_id)
        return result

    def add_message(
        self,
        address: str,
        raw: bytes,
        label_ids: Iterable[str] = ("INBOX", "UNREAD"),
        *,
        thread_id: str | None = None,
        internal_date: datetime | int | None = None,
    ) -> StoredMessage:
        """Deliver `raw`; `internal_date` is a datetime or epoch milliseconds (default: now)."""
        if isinstance(internal_date, datetime):
            internal_ms = int(internal_date.timestamp() * 1000)
        elif internal_date is None:
            internal_ms = int(time.time() * 1000)
        else:
            internal_ms = int(internal_date)
        headers = HeaderInfo.from_raw(raw)
        with self.lock:
            mailbox = self.mailbox(address)
            labels = self._check_labels(mailbox, label_ids)
            message_id = self._new_id(internal_ms)
            if thread_id is not None and thread_id not in mailbox.threads:
                raise not_found(f"Unknown threadId {thread_id}")
            thread_id = thread_id or self._thread_for(mailbox, headers) or message_id
            message = StoredMessage(
                id=message_id,
                thread_id=thread_id,
                raw=bytes(raw),
                internal_date_ms=internal_ms,
                labels=dict.fromkeys(labels),
                history_id=mailbox.history_id,
                headers=headers,
            )
            mailbox.messages[message_id] = message
            mailbox.threads.setdefault(thread_id, []).append(message_id)
            if headers.message_id is not None:
                mailbox.by_rfc822_id.setdefault(headers.message_id, message_id)
            mailbox.version += 1
            self._record(mailbox, [Change("messageAdded", message_id, thread_id, tuple(message.labels))])
            return message

    @staticmethod
    def _thread_for(mailbox: Mailbox, headers: HeaderInfo) -> str | None:
        subject = normalize_subject(headers.subject)
        for parent_rfc_id in headers.parent_ids:
            parent_id = mailbox.by_rfc822_id.get(parent_rfc_id)
            parent = mailbox.messages.get(parent_id) if parent_id else None
            if parent is not None and normalize_subject(parent.headers.subject) == subject:
                return parent.thread_id
        return None

    def get_message(self, address: str, message_id: str) -> StoredMessage:
        with self.lock:
            message = self.mailbox(address).messages.get(message_id)
            if message is None:
                raise not_found()
            return message

    def refuse(self, address: str, message_id: str, times: int | None = None) -> None:
        """Answer messages.get of this message with 400 failedPrecondition (`times` times, or until
        `serve` is called)."""
        with self.lock:
            if times is None or times > 0:
                self._refusals[(address.lower(), message_id)] = times
            else:
                self._refusals.pop((address.lower(), message_id), None)

    def serve(self, address: str, message_id: str) -> None:
        self.refuse(address, message_id, 0)

    def check_refusal(self, address: str, message_id: str) -> None:
        """Raise the 400 if this message is refused right now (counting a limited refusal down)."""
        with self.lock:
            key = (address.lower(), message_id)
            if key not in self._refusals:
                return
            left = self._refusals[key]
            if left is not None:
                if left <= 1:
                    del self._refusals[key]
                else:
                    self._refusals[key] = left - 1
            raise failed_precondition()

    def modify(
        self, address: str, message_id: str, *, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> StoredMessage:
        """Add and remove labels in one history record (nothing is recorded when nothing changes)."""
        with self.lock:
            mailbox = self.mailbox(address)
            message = self.get_message(address, message_id)
            to_add = [label for label in self._check_labels(mailbox, add) if label not in message.labels]
            to_remove = [label for label in self._check_labels(mailbox, remove) if label in message.labels]
            to_add = [label for label in to_add if label not in to_remove]
            self._apply(mailbox, message, to_add, to_remove)
            return message

    def _apply(self, mailbox: Mailbox, message: StoredMessage, to_add: list[str], to_remove: list[str]) -> None:
        if not to_add and not to_remove:
            return
        for label in to_add:
            message.labels[label] = None
        for label in to_remove:
            message.labels.pop(label, None)
        after = tuple(message.labels)
        changes = []
        if to_add:
            changes.append(Change("labelAdded", message.id, message.thread_id, after, tuple(to_add)))
        if to_remove:
            changes.append(Change("labelRemoved", message.id, message.thread_id, after, tuple(to_remove)))
        self._record(mailbox, changes)

    def trash(self, address: str, message_id: str) -> StoredMessage:
        """Gmail's trash: TRASH added, INBOX and SPAM taken away (INBOX comes back on untrash)."""
        with self.lock:
            mailbox = self.mailbox(address)
            message = self.get_message(address, message_id)
            if "TRASH" not in message.labels:
                message.restore_inbox_on_untrash = "INBOX" in message.labels
                removed = [label for label in ("INBOX", "SPAM") if label in message.labels]
                self._apply(mailbox, message, ["TRASH"], removed)
            return message

    def untrash(self, address: str, message_id: str) -> StoredMessage:
        with self.lock:
            mailbox = self.mailbox(address)
            message = self.get_message(address, message_id)
            if "TRASH" in message.labels:
                restore = ["INBOX"] if message.restore_inbox_on_untrash and "INBOX" not in message.labels else []
                message.restore_inbox_on_untrash = False
                self._apply(mailbox, message, restore, ["TRASH"])
            return message

    def delete(self, address: str, message_id: str) -> None:
        """Permanent deletion: a messagesDeleted record, then the id is gone (404)."""
        with self.lock:
            mailbox = self.mailbox(address)
            message = self.get_message(address, message_id)
            del mailbox.messages[message_id]
            siblings = mailbox.threads[message.thread_id]
            siblings.remove(message_id)
            if not siblings:
                del mailbox.threads[message.thread_id]
            rfc_id = message.headers.message_id
            if rfc_id is not None and mailbox.by_rfc822_id.get(rfc_id) == message_id:
                del mailbox.by_rfc822_id[rfc_id]
            mailbox.version += 1
            self._record(
                mailbox, [Change("messageDeleted", message_id, message.thread_id, tuple(message.labels))]
            )

    # Labels ----------------------------------------------------------------

    def create_label(
        self,
        address: str,
        name: str,
        *,
        color: LabelColor | None = None,
        message_list_visibility: str | None = "show",
        label_list_visibility: str | None = "labelShow",
    ) -> Label:
        with self.lock:
            mailbox = self.mailbox(address)
            if not name.strip():
                raise invalid_argument("Invalid label name", location="name")
            if mailbox.label_by_name(name) is not None or name.upper() in SYSTEM_LABEL_IDS:
                raise conflict("Label name exists or conflicts")
            if color is None:
                background, text = _PALETTE[(mailbox.next_label_number - 1) % len(_PALETTE)]
                color = LabelColor(background_color=background, text_color=text)
            label = Label(
                id=f"Label_{mailbox.next_label_number}",
                name=name,
                type="user",
                message_list_visibility=message_list_visibility,
                label_list_visibility=label_list_visibility,
                color=color,
            )
            mailbox.next_label_number += 1
            mailbox.labels[label.id] = label
            return label

    def ensure_label(self, address: str, name: str) -> Label:
        """The user label called `name`, created if missing (seeding helper)."""
        with self.lock:
            return self.mailbox(address).label_by_name(name) or self.create_label(address, name)

    def delete_label(self, address: str, label_id: str) -> None:
        """Remove a user label from its messages (one labelRemoved record each), then the label."""
        with self.lock:
            mailbox = self.mailbox(address)
            label = mailbox.labels.get(label_id)
            if label is None:
                raise not_found()
            if label.type == "system":
                raise GmailApiError(400, "Invalid delete request", reason="invalidArgument")
            for message in list(mailbox.messages.values()):
                if label_id in message.labels:
                    self._apply(mailbox, message, [], [label_id])
            del mailbox.labels[label_id]

    # Watch -----------------------------------------------------------------

    def set_watch(self, address: str, watch: Watch | None) -> int:
        with self.lock:
            mailbox = self.mailbox(address)
            mailbox.watch = watch
            return mailbox.history_id
