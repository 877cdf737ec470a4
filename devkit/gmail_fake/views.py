"""Stored state rendered as Gmail API resources: messages in each format, labels, history records.

Callers hold the store's lock; nothing here mutates state (except the
lazily cached snippet).
"""

from __future__ import annotations

import base64
from typing import Literal

from devkit.gmail_fake.errors import invalid_argument
from devkit.gmail_fake.mime import b64url, build_payload, metadata_payload
from devkit.gmail_fake.models import (
    HistoryLabelChange,
    HistoryMessageChange,
    HistoryRecordModel,
    LabelModel,
    MessageModel,
    ThreadModel,
)
from devkit.gmail_fake.state import Change, HistoryRecord, Label, Mailbox, StoredMessage

__all__ = [
    "MessageFormat",
    "attachment_id",
    "history_record_view",
    "label_view",
    "message_format",
    "message_view",
    "parse_attachment_id",
    "thread_view",
]

MessageFormat = Literal["minimal", "full", "raw", "metadata"]
_FORMATS: tuple[str, ...] = ("minimal", "full", "raw", "metadata")


def message_format(value: str | None, *, allow_raw: bool = True) -> MessageFormat:
    fmt = (value or "full").lower()
    if fmt not in _FORMATS or (fmt == "raw" and not allow_raw):
        raise invalid_argument(f"Invalid value at 'format' ({value})", location="format")
    return fmt  # type: ignore[return-value]


def attachment_id(message_id: str, part_id: str) -> str:
    token = base64.urlsafe_b64encode(f"{message_id}/{part_id}".encode()).decode().rstrip("=")
    return f"ANGjdJ_{token}"


def parse_attachment_id(value: str) -> tuple[str, str] | None:
    if not value.startswith("ANGjdJ_"):
        return None
    token = value.removeprefix("ANGjdJ_")
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    message_id, sep, part_id = decoded.partition("/")
    return (message_id, part_id) if sep else None


def _labels(message: StoredMessage) -> list[str] | None:
    return list(message.labels) or None


def message_view(message: StoredMessage, fmt: MessageFormat, metadata_headers: list[str] | None = None) -> MessageModel:
    view = MessageModel(
        id=message.id,
        thread_id=message.thread_id,
        label_ids=_labels(message),
        snippet=message.snippet,
        size_estimate=len(message.raw),
        history_id=str(message.history_id),
        internal_date=str(message.internal_date_ms),
    )
    if fmt == "raw":
        view.raw = b64url(message.raw)
    elif fmt == "metadata":
        view.payload = metadata_payload(message.raw, metadata_headers)
    elif fmt == "full":
        view.payload = build_payload(message.raw, lambda part_id: attachment_id(message.id, part_id))
    return view


def thread_view(mailbox: Mailbox, thread_id: str, fmt: MessageFormat, metadata_headers: list[str] | None) -> ThreadModel:
    messages = sorted((mailbox.messages[m] for m in mailbox.threads[thread_id]), key=lambda m: m.sort_key)
    return ThreadModel(
        id=thread_id,
        history_id=str(max(m.history_id for m in messages)),
        messages=[message_view(m, fmt, metadata_headers) for m in messages],
    )


def label_view(mailbox: Mailbox, label: Label, *, with_counts: bool) -> LabelModel:
    view = LabelModel(
        id=label.id,
        name=label.name,
        type=label.type,
        message_list_visibility=label.message_list_visibility,  # type: ignore[arg-type]
        label_list_visibility=label.label_list_visibility,  # type: ignore[arg-type]
        color=label.color,
    )
    if with_counts:
        # Only labels.get carries counts; labels.list leaves them out, as Gmail does.
        total = unread = 0
        threads: set[str] = set()
        unread_threads: set[str] = set()
        for message in mailbox.messages.values():
            if label.id in message.labels:
                total += 1
                threads.add(message.thread_id)
                if "UNREAD" in message.labels:
                    unread += 1
                    unread_threads.add(message.thread_id)
        view.messages_total = total
        view.messages_unread = unread
        view.threads_total = len(threads)
        view.threads_unread = len(unread_threads)
    return view


def _change_matches(change: Change, history_types: set[str] | None, label_id: str | None) -> bool:
    # Change kinds are named like the historyTypes enum values.
    if history_types is not None and change.kind not in history_types:
        return False
    if label_id is not None and label_id not in change.label_ids and label_id not in change.changed:
        return False
    return True


def history_record_view(
    record: HistoryRecord, history_types: set[str] | None, label_id: str | None
) -> HistoryRecordModel | None:
    """The record as history.list shows it, filtered; None when the filters leave nothing."""
    changes = [change for change in record.changes if _change_matches(change, history_types, label_id)]
    if not changes:
        return None
    view = HistoryRecordModel(id=str(record.id))
    seen: list[str] = []
    messages: list[MessageModel] = []
    for change in changes:
        if change.message_id not in seen:
            seen.append(change.message_id)
            messages.append(MessageModel(id=change.message_id, thread_id=change.thread_id))
        snapshot = MessageModel(id=change.message_id, thread_id=change.thread_id, label_ids=list(change.label_ids) or None)
        if change.kind == "messageAdded":
            view.messages_added = [*(view.messages_added or []), HistoryMessageChange(message=snapshot)]
        elif change.kind == "messageDeleted":
            view.messages_deleted = [*(view.messages_deleted or []), HistoryMessageChange(message=snapshot)]
        elif change.kind == "labelAdded":
            item = HistoryLabelChange(message=snapshot, label_ids=list(change.changed))
            view.labels_added = [*(view.labels_added or []), item]
        else:
            item = HistoryLabelChange(message=snapshot, label_ids=list(change.changed))
            view.labels_removed = [*(view.labels_removed or []), item]
    view.messages = messages
    return view
