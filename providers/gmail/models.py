"""What the Gmail provider returns: profiles, labels, raw messages, typed history changes.

Small, serialisable things (labels, history pages) are pydantic models, so
activities may return or log them; `GmailMessage` carries raw bodies and is a
plain frozen dataclass (bodies never cross Temporal, DESIGN rule 2, and
thousands of them are built per page). History ids are ints (Gmail sends
them as decimal strings of unsigned 64-bit numbers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "GmailLabel",
    "GmailMessage",
    "GmailProfile",
    "HistoryChange",
    "HistoryPage",
    "LabelsAdded",
    "LabelsRemoved",
    "MessageAdded",
    "MessageDeleted",
    "RawFetchResult",
    "WatchResult",
    "from_epoch_ms",
]


def from_epoch_ms(value: str | int) -> datetime:
    """Gmail's millisecond epoch strings (internalDate, expiration) as aware UTC datetimes."""
    return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)


class GmailProfile(NamedTuple):
    email: str
    history_id: int
    messages_total: int


class WatchResult(NamedTuple):
    history_id: int
    expiration: datetime


class GmailLabel(BaseModel):
    """A label as labels.get describes it; counts are None when only labels.list was asked."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    type: str  # "system" or "user"
    message_list_visibility: str | None = None  # "show" / "hide"
    label_list_visibility: str | None = None  # "labelShow" / "labelShowIfUnread" / "labelHide"
    background_color: str | None = None
    text_color: str | None = None
    messages_total: int | None = None
    messages_unread: int | None = None
    threads_total: int | None = None
    threads_unread: int | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> GmailLabel:
        color = data.get("color") or {}
        return cls(
            id=data["id"],
            name=data.get("name", data["id"]),
            type=data.get("type", "user"),
            message_list_visibility=data.get("messageListVisibility"),
            label_list_visibility=data.get("labelListVisibility"),
            background_color=color.get("backgroundColor"),
            text_color=color.get("textColor"),
            messages_total=data.get("messagesTotal"),
            messages_unread=data.get("messagesUnread"),
            threads_total=data.get("threadsTotal"),
            threads_unread=data.get("threadsUnread"),
        )


@dataclass(frozen=True, slots=True)
class GmailMessage:
    """One message as messages.get(format=raw) serves it; `raw` is the exact RFC 822 bytes."""

    id: str
    thread_id: str
    label_ids: tuple[str, ...]
    history_id: int
    internal_date: datetime
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


@dataclass(slots=True)
class RawFetchResult:
    """`get_raw_messages`' answer: messages in request order, ids the server no longer has, effort spent."""

    messages: list[GmailMessage] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # id -> Gmail's reason, still 4xx after the retries
    retried_parts: int = 0  # parts sent again after a rate-limit, 5xx or 4xx answer inside a batch
    batches: int = 0


class _Change(BaseModel):
    model_config = ConfigDict(frozen=True)

    history_id: int  # the history record the change belongs to
    message_id: str
    thread_id: str


class MessageAdded(_Change):
    kind: Literal["message_added"] = "message_added"
    label_ids: tuple[str, ...] = ()


class MessageDeleted(_Change):
    kind: Literal["message_deleted"] = "message_deleted"


class LabelsAdded(_Change):
    kind: Literal["labels_added"] = "labels_added"
    label_ids: tuple[str, ...]  # the labels this change added
    message_label_ids: tuple[str, ...] = ()  # the message's labels after the change


class LabelsRemoved(_Change):
    kind: Literal["labels_removed"] = "labels_removed"
    label_ids: tuple[str, ...]  # the labels this change removed
    message_label_ids: tuple[str, ...] = ()


HistoryChange = Annotated[
    MessageAdded | MessageDeleted | LabelsAdded | LabelsRemoved, Field(discriminator="kind")
]


class HistoryPage(BaseModel):
    """One page of history.list, flattened: every change of every record, in record order.

    `history_id` is the mailbox's current historyId as of this answer: after the last page, the
    cursor to store (once the changes are persisted).
    """

    model_config = ConfigDict(frozen=True)

    records: list[HistoryChange]
    next_page_token: str | None = None
    history_id: int

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> HistoryPage:
        changes: list[MessageAdded | MessageDeleted | LabelsAdded | LabelsRemoved] = []
        for record in data.get("history") or ():
            record_id = int(record["id"])
            # One record usually holds one kind; when it holds several, apply additions before
            # label changes before deletions, so a message added and deleted in one record ends deleted.
            for item in record.get("messagesAdded") or ():
                message = item["message"]
                changes.append(
                    MessageAdded(
                        history_id=record_id,
                        message_id=message["id"],
                        thread_id=message.get("threadId", ""),
                        label_ids=tuple(message.get("labelIds") or ()),
                    )
                )
            for key, model in (("labelsAdded", LabelsAdded), ("labelsRemoved", LabelsRemoved)):
                for item in record.get(key) or ():
                    message = item["message"]
                    changes.append(
                        model(
                            history_id=record_id,
                            message_id=message["id"],
                            thread_id=message.get("threadId", ""),
                            label_ids=tuple(item.get("labelIds") or ()),
                            message_label_ids=tuple(message.get("labelIds") or ()),
                        )
                    )
            for item in record.get("messagesDeleted") or ():
                message = item["message"]
                changes.append(
                    MessageDeleted(
                        history_id=record_id, message_id=message["id"], thread_id=message.get("threadId", "")
                    )
                )
        return cls(
            records=changes, next_page_token=data.get("nextPageToken") or None, history_id=int(data["historyId"])
        )
