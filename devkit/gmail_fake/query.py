"""Gmail search (`q`) for messages.list / threads.list: the operators a sync engine uses.

Supported: `after:` / `before:` (epoch seconds, or a date taken as midnight
Pacific time, as Gmail documents), `newer_than:` / `older_than:` (`3d`,
`2m`, `1y`), `in:` (inbox, sent, spam, trash, drafts, anywhere, a label),
`label:`, `is:` (unread, read, starred, important), `from:`, `to:`,
`subject:`, `rfc822msgid:`, `has:attachment`, a leading `-` to negate, and
bare words matched as case-insensitive text. `OR`, braces and parentheses
are not supported: such terms are matched as text.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from devkit.gmail_fake.errors import invalid_argument

__all__ = ["Query", "Searchable", "label_key", "parse_query"]

_PACIFIC = ZoneInfo("America/Los_Angeles")
_DATE_FORMATS = ("%Y/%m/%d", "%Y-%m-%d", "%m/%d/%Y")
_AGE = re.compile(r"^(\d+)([dmy])$")
_AGE_SECONDS = {"d": 86400, "m": 31 * 86400, "y": 365 * 86400}


class Searchable(Protocol):
    """What the query needs to know about a message (implemented by the store's message)."""

    internal_date_ms: int
    raw: bytes

    def label_set(self) -> Collection[str]: ...
    def header_text(self, field_name: str) -> str: ...
    def has_attachment(self) -> bool: ...


Predicate = Callable[[Searchable], bool]


@dataclass
class Query:
    """A parsed `q`: all predicates must hold. `mentions_spam_trash` lifts the default exclusion."""

    predicates: list[Predicate] = field(default_factory=list)
    mentions_spam_trash: bool = False

    def matches(self, message: Searchable) -> bool:
        return all(predicate(message) for predicate in self.predicates)


def _epoch_ms(value: str, operator: str) -> int:
    if value.isdigit():
        return int(value) * 1000
    for fmt in _DATE_FORMATS:
        try:
            day = datetime.strptime(value, fmt)
        except ValueError:
            continue
        return int(day.replace(tzinfo=_PACIFIC).timestamp() * 1000)
    raise invalid_argument(f"Invalid value for {operator}: {value!r}", location="q")


def label_key(name: str) -> str:
    # Gmail search writes label names lower-case with spaces and slashes as dashes.
    return re.sub(r"[\s/]+", "-", name.strip().lower())


def parse_query(q: str, label_ids_by_key: dict[str, str]) -> Query:
    """Parse `q`; `label_ids_by_key` maps `label_key(name)` and lower-case ids to label ids."""
    query = Query()
    try:
        terms = shlex.split(q, posix=True)
    except ValueError:
        terms = q.split()
    for term in terms:
        negate = term.startswith("-") and len(term) > 1
        if negate:
            term = term[1:]
        predicate = _term(term, label_ids_by_key, query)
        query.predicates.append((lambda p: lambda m: not p(m))(predicate) if negate else predicate)
    return query


def _term(term: str, labels: dict[str, str], query: Query) -> Predicate:
    operator, sep, value = term.partition(":")
    operator = operator.lower()
    if not sep or not value:
        return _text_predicate(term)
    if operator in ("after", "before"):
        bound = _epoch_ms(value, operator)
        if operator == "after":
            return lambda m: m.internal_date_ms >= bound
        return lambda m: m.internal_date_ms < bound
    if operator in ("newer_than", "older_than"):
        match = _AGE.match(value.lower())
        if not match:
            raise invalid_argument(f"Invalid value for {operator}: {value!r}", location="q")
        cutoff = int((time.time() - int(match.group(1)) * _AGE_SECONDS[match.group(2)]) * 1000)
        if operator == "newer_than":
            return lambda m: m.internal_date_ms > cutoff
        return lambda m: m.internal_date_ms <= cutoff
    if operator in ("in", "label"):
        key = label_key(value)
        if key == "anywhere":
            query.mentions_spam_trash = True
            return lambda m: True
        aliases = {"drafts": "DRAFT", "draft": "DRAFT", "chats": "CHAT"}
        label_id = aliases.get(key) or labels.get(key) or labels.get(value.lower())
        if label_id in ("SPAM", "TRASH"):
            query.mentions_spam_trash = True
        if label_id is None:
            return lambda m: False
        return lambda m: label_id in m.label_set()
    if operator == "is":
        flag = value.lower()
        if flag == "read":
            return lambda m: "UNREAD" not in m.label_set()
        label_id = {"unread": "UNREAD", "starred": "STARRED", "important": "IMPORTANT"}.get(flag)
        if label_id is None:
            return lambda m: False
        return lambda m: label_id in m.label_set()
    if operator in ("from", "to", "subject"):
        needle = value.lower()
        field_name = {"from": "from", "to": "recipients", "subject": "subject"}[operator]
        return lambda m: needle in m.header_text(field_name).lower()
    if operator == "rfc822msgid":
        wanted = value.strip("<>").lower()
        return lambda m: m.header_text("message-id").strip("<>").lower() == wanted
    if operator == "has" and value.lower() == "attachment":
        return lambda m: m.has_attachment()
    return _text_predicate(term)


def _text_predicate(term: str) -> Predicate:
    needle = term.lower().encode("utf-8")
    return lambda m: needle in m.raw.lower()
