"""messages.list, threads.list and history.list: filtering, ordering and page tokens.

Page tokens are cursors (the sort key of the last item served), not
offsets, so mail arriving at the head of the list while a client pages
through it causes neither duplicates nor gaps, which is how Gmail behaves
in practice. Callers hold the store's lock.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from devkit.gmail_fake.errors import invalid_argument, not_found
from devkit.gmail_fake.models import ListHistoryResponse, ListMessagesResponse, ListThreadsResponse, MessageModel, ThreadModel
from devkit.gmail_fake.query import label_key, parse_query
from devkit.gmail_fake.state import Mailbox, StoredMessage
from devkit.gmail_fake.views import history_record_view

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "list_history", "list_messages", "list_threads", "page_size"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
_HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")
_KEY_WIDTHS = (15, 20)


def page_size(value: int | None) -> int:
    """maxResults: default 100; Gmail silently caps larger values at 500."""
    if value is None or value == 0:
        return DEFAULT_PAGE_SIZE
    if value < 0:
        raise invalid_argument(f"Invalid value at 'max_results' ({value})", location="maxResults")
    return min(value, MAX_PAGE_SIZE)


def _encode_key(key: tuple[int, int]) -> str:
    return f"{key[0]:0{_KEY_WIDTHS[0]}d}{key[1]:0{_KEY_WIDTHS[1]}d}"


def _decode_key(token: str) -> tuple[int, int]:
    if len(token) != sum(_KEY_WIDTHS) or not token.isdigit():
        raise invalid_argument("Invalid pageToken", location="pageToken")
    return int(token[: _KEY_WIDTHS[0]]), int(token[_KEY_WIDTHS[0] :])


def _label_index(mailbox: Mailbox) -> dict[str, str]:
    index: dict[str, str] = {}
    for label in mailbox.labels.values():
        index[label_key(label.name)] = label.id
        index[label.id.lower()] = label.id
    return index


def _matching(
    mailbox: Mailbox, q: str | None, label_ids: Sequence[str], include_spam_trash: bool
) -> list[StoredMessage]:
    query = parse_query(q or "", _label_index(mailbox))
    hide_spam_trash = not (include_spam_trash or query.mentions_spam_trash or {"SPAM", "TRASH"} & set(label_ids))
    wanted = list(label_ids)
    result: list[StoredMessage] = []
    for message in mailbox.newest_first():
        labels = message.labels
        if hide_spam_trash and ("SPAM" in labels or "TRASH" in labels):
            continue
        if any(label not in labels for label in wanted):
            continue
        if query.predicates and not query.matches(message):
            continue
        result.append(message)
    return result


def list_messages(
    mailbox: Mailbox,
    *,
    q: str | None,
    label_ids: Sequence[str],
    include_spam_trash: bool,
    max_results: int,
    page_token: str | None,
) -> ListMessagesResponse:
    matches = _matching(mailbox, q, label_ids, include_spam_trash)
    start = 0
    if page_token:
        cursor = _decode_key(page_token)
        # matches are sorted by descending key: skip everything at or before the cursor.
        start = bisect.bisect_right([_neg(m.sort_key) for m in matches], _neg(cursor))
    page = matches[start : start + max_results]
    more = start + max_results < len(matches)
    return ListMessagesResponse(
        messages=[MessageModel(id=m.id, thread_id=m.thread_id) for m in page] or None,
        next_page_token=_encode_key(page[-1].sort_key) if more and page else None,
        result_size_estimate=len(matches),
    )


def _neg(key: tuple[int, int]) -> tuple[int, int]:
    return (-key[0], -key[1])


def list_threads(
    mailbox: Mailbox,
    *,
    q: str | None,
    label_ids: Sequence[str],
    include_spam_trash: bool,
    max_results: int,
    page_token: str | None,
) -> ListThreadsResponse:
    # A thread is listed when any of its messages matches, ranked by its newest matching message.
    newest: dict[str, StoredMessage] = {}
    for message in _matching(mailbox, q, label_ids, include_spam_trash):
        newest.setdefault(message.thread_id, message)  # matches come newest first
    ranked = sorted(
        ((message.internal_date_ms, int(thread_id, 16)), thread_id, message) for thread_id, message in newest.items()
    )
    ranked.reverse()
    if page_token:
        cursor = _decode_key(page_token)
        ranked = [item for item in ranked if item[0] < cursor]
    page = ranked[:max_results]
    more = len(ranked) > max_results
    return ListThreadsResponse(
        threads=[
            ThreadModel(
                id=thread_id,
                snippet=message.snippet,
                history_id=str(max(mailbox.messages[m].history_id for m in mailbox.threads[thread_id])),
            )
            for _, thread_id, message in page
        ]
        or None,
        next_page_token=_encode_key(page[-1][0]) if more and page else None,
        result_size_estimate=len(newest),
    )


def _history_id(value: str | None, name: str) -> int:
    if value is None or value == "":
        raise invalid_argument(f"Missing required parameter: {name}", location=name)
    if not value.isdigit():
        raise invalid_argument(f"Invalid value at '{name}' ({value})", location=name)
    return int(value)


def list_history(
    mailbox: Mailbox,
    *,
    start_history_id: str | None,
    history_types: Sequence[str],
    label_id: str | None,
    max_results: int,
    page_token: str | None,
) -> ListHistoryResponse:
    start = _history_id(start_history_id, "startHistoryId")
    for history_type in history_types:
        if history_type not in _HISTORY_TYPES:
            raise invalid_argument(f"Invalid value at 'history_types' ({history_type})", location="historyTypes")
    after = _history_id(page_token, "pageToken") if page_token else start
    # Records after `after` must all still be retained, or the client would silently miss changes.
    if start < mailbox.history_floor or after < mailbox.history_floor:
        raise not_found()
    types = set(history_types) if history_types else None
    records = mailbox.history
    index = bisect.bisect_right([record.id for record in records], after)
    page = []
    last_id = after
    more = False
    for record in records[index:]:
        view = history_record_view(record, types, label_id)
        if view is None:
            continue
        if len(page) == max_results:
            more = True
            break
        page.append(view)
        last_id = record.id
    return ListHistoryResponse(
        history=page or None,
        next_page_token=str(last_id) if more else None,
        history_id=str(mailbox.history_id),
    )
