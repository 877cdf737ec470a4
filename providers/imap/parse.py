"""Parsing of IMAP responses as aioimaplib returns them (LIST, STATUS, SELECT, UID FETCH, IDLE pushes).

aioimaplib hands over untagged responses with their leading `* ` removed and ends a command's lines
with the text of its tagged completion (`[HIGHESTMODSEQ 12] Fetch completed`), without tag or status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from mail.model import FetchedMessage

_LIST_RE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')
_STATUS_ITEM_RE = re.compile(rb"(MESSAGES|UIDNEXT|UIDVALIDITY|HIGHESTMODSEQ|UNSEEN) (\d+)")
_RESP_CODE_RE = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]")
_EXISTS_RE = re.compile(rb"^(\d+) EXISTS$")
_FETCH_UID_RE = re.compile(rb"\bUID (\d+)")
_FETCH_FLAGS_RE = re.compile(rb"\bFLAGS \(([^)]*)\)")
_FETCH_DATE_RE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_FETCH_SIZE_RE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_FETCH_HEAD_RE = re.compile(rb"^\d+ FETCH \(")
_FETCH_MODSEQ_RE = re.compile(rb"\bMODSEQ \((\d+)\)")
_VANISHED_RE = re.compile(rb"^VANISHED (?:\(EARLIER\) )?([0-9:,]+)\s*$")
_TAGGED_MODSEQ_RE = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")
_CHANGE_RE = re.compile(rb"^(?:\d+ (EXISTS|EXPUNGE|FETCH)\b|(VANISHED)\b)")

SPECIAL_USE_ROLES = {
    "\\all": "all", "\\archive": "archive", "\\drafts": "drafts", "\\flagged": "flagged",
    "\\junk": "junk", "\\sent": "sent", "\\trash": "trash", "\\important": "important",
}


@dataclass
class FolderInfo:
    name: str                 # as the server spells it (modified UTF-7): what IMAP commands need
    delimiter: str | None
    attributes: list[str]
    role: str | None

    @property
    def selectable(self) -> bool:
        lowered = {a.lower() for a in self.attributes}
        return "\\noselect" not in lowered and "\\nonexistent" not in lowered


@dataclass
class FolderStatus:
    uidvalidity: int
    uidnext: int | None
    messages: int
    highestmodseq: int | None


def _unquote(token: bytes) -> str:
    text = token.decode("utf-8", "surrogateescape")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


def parse_list(lines: list[bytes | bytearray]) -> list[FolderInfo]:
    folders: list[FolderInfo] = []
    pending: re.Match[bytes] | None = None
    for line in lines:
        if pending is not None:  # the name came as a literal on the next line
            name = bytes(line).decode("utf-8", "surrogateescape")
            folders.append(_folder(pending, name))
            pending = None
            continue
        m = _LIST_RE.match(bytes(line))
        if not m:
            continue
        raw_name = m.group("name")
        if raw_name.endswith(b"}") and b"{" in raw_name:
            pending = m
            continue
        folders.append(_folder(m, _unquote(raw_name)))
    return folders


def _folder(m: re.Match[bytes], name: str) -> FolderInfo:
    attrs = m.group("attrs").decode().split()
    delim_token = m.group("delim")
    delimiter = None if delim_token == b"NIL" else _unquote(delim_token)
    role = next((SPECIAL_USE_ROLES[a.lower()] for a in attrs if a.lower() in SPECIAL_USE_ROLES), None)
    if name.upper() == "INBOX":
        role, name = "inbox", "INBOX"
    return FolderInfo(name=name, delimiter=delimiter, attributes=attrs, role=role)


def parse_select(lines: list[bytes | bytearray]) -> FolderStatus:
    values: dict[bytes, int] = {}
    exists = 0
    for line in lines:
        line = bytes(line)
        for key, val in _RESP_CODE_RE.findall(line):
            values[key] = int(val)
        m = _EXISTS_RE.match(line)
        if m:
            exists = int(m.group(1))
    if b"UIDVALIDITY" not in values:
        raise ValueError("SELECT response without UIDVALIDITY")
    return FolderStatus(
        uidvalidity=values[b"UIDVALIDITY"], uidnext=values.get(b"UIDNEXT"), messages=exists,
        highestmodseq=values.get(b"HIGHESTMODSEQ"),
    )


def parse_search(lines: list[bytes | bytearray]) -> list[int]:
    uids: list[int] = []
    for line in lines[:-1]:  # the last line is the tagged completion text
        uids.extend(int(tok) for tok in bytes(line).split() if tok.isdigit())
    return uids


_INTERNALDATE_RE = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_MONTHS = {m: i for i, m in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), 1)}
_ZONES: dict[int, timezone] = {}


def parse_internaldate(text: bytes) -> datetime | None:
    """`24-Nov-2026 21:26:16 +0100` as strptime("%d-%b-%Y %H:%M:%S %z") reads it, the usual form
    without strptime (a third of the time spent on a fetched message's attributes)."""
    m = _INTERNALDATE_RE.fullmatch(text.strip())
    if m is not None:
        day, month, year, hour, minute, second, sign, zh, zm = m.groups()
        number = _MONTHS.get(month.lower())
        offset = int(zh) * 60 + int(zm)
        if number is not None and int(zm) < 60 and offset < 24 * 60:
            offset = -offset if sign == b"-" else offset
            zone = _ZONES.get(offset)
            if zone is None:
                zone = _ZONES[offset] = timezone(timedelta(minutes=offset))
            try:
                return datetime(int(year), number, int(day), int(hour), int(minute), int(second), tzinfo=zone)
            except ValueError:
                pass  # e.g. 31-Feb: strptime decides
    try:
        return datetime.strptime(text.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


def parse_fetch(lines: list[bytes | bytearray]) -> list[FetchedMessage]:
    """Turn `n FETCH (… BODY[] {len}` / literal / `…)` triples into messages.

    Attributes may come before or after the literal, so both the head and the trailing line are read.
    A FETCH without a body (e.g. a flag update pushed by the server) is ignored.
    """
    out: list[FetchedMessage] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if isinstance(line, bytearray) or not _FETCH_HEAD_RE.match(line):
            i += 1
            continue
        if not line.endswith(b"}") or i + 1 >= n or not isinstance(lines[i + 1], bytearray):
            i += 1
            continue
        raw = bytes(lines[i + 1])
        tail = bytes(lines[i + 2]) if i + 2 < n and not isinstance(lines[i + 2], bytearray) else b""
        meta = line + b" " + tail
        uid = _FETCH_UID_RE.search(meta)
        if uid is not None:
            flags = _FETCH_FLAGS_RE.search(meta)
            date = _FETCH_DATE_RE.search(meta)
            size = _FETCH_SIZE_RE.search(meta)
            out.append(FetchedMessage(
                uid=int(uid.group(1)),
                raw=raw,
                flags=sorted(f for f in (flags.group(1).decode().split() if flags else []) if f != "\\Recent"),
                internaldate=parse_internaldate(date.group(1)) if date else None,
                size=int(size.group(1)) if size else None,
            ))
        i += 3
    return out


# Incremental sync: STATUS, flag changes (CONDSTORE/QRESYNC, RFC 7162) and IDLE pushes -----------


@dataclass
class MessageFlags:
    """A message's current flags, as `UID FETCH … (UID FLAGS)` reports them (`\\Recent` left out)."""

    uid: int
    flags: list[str]
    modseq: int | None = None  # present when CONDSTORE is on for the mailbox


@dataclass
class MailboxChanges:
    """What changed in the selected folder since a mod-sequence (see `ImapSession.changes_since`).

    `changed` holds the current flags of every message whose flags changed (or that arrived) after
    the mod-sequence; `vanished` the UIDs expunged since then, which only a QRESYNC session learns
    (a CONDSTORE-only caller diffs `uid_search_all()` against what it knows instead). Dovecot may
    list UIDs the caller never saw in `vanished` (RFC 7162 allows it), so treat it as "delete if
    present". A UID is never in both lists: a message reported changed, then expunged within the
    same response, counts as vanished. `highestmodseq` is the cursor to store for the next call.
    Over-reporting is possible and harmless: Dovecot records per-message mod-sequences only once a
    client has used CONDSTORE on the folder, and until then reports every message as changed.
    `partial` means some reported changes could not be placed (see `parse_changes`); the cursor was
    held back so that the next call reports them.
    """

    changed: list[MessageFlags]
    vanished: list[int]
    highestmodseq: int
    partial: bool = False


@dataclass
class MailboxEvents:
    """Unsolicited changes the server pushed while a session waited (IDLE or NOOP polling).

    `lines` are the untagged responses that signal a change (`n EXISTS`, `n EXPUNGE`, `n FETCH …`,
    `VANISHED …`), without the leading `* `. Empty after a quiet wait. They tell *that* something
    changed, not reliably *what*: sequence numbers shift, and a sync pass must ask again by UID.
    """

    lines: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.lines)

    @property
    def exists(self) -> int | None:
        """The last message count announced (`n EXISTS`), i.e. new mail may have arrived."""
        count = None
        for line in self.lines:
            head, _, kind = line.partition(" ")
            if kind == "EXISTS":
                count = int(head)
        return count

    @property
    def expunged(self) -> bool:
        return any(l.split(" ", 2)[1:2] == ["EXPUNGE"] or l.startswith("VANISHED") for l in self.lines)

    @property
    def flags_changed(self) -> bool:
        return any(l.split(" ", 2)[1:2] == ["FETCH"] for l in self.lines)


def expand_uid_set(text: str | bytes) -> list[int]:
    """`1:3,7,10:9` → [1, 2, 3, 7, 9, 10]; a range may be written high:low (RFC 3501 sequence-set)."""
    raw = text.decode("ascii") if isinstance(text, bytes) else text
    out: set[int] = set()
    for part in raw.strip().split(","):
        if not part:
            continue
        lo_text, _, hi_text = part.partition(":")
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else lo
        if lo > hi:
            lo, hi = hi, lo
        out.update(range(lo, hi + 1))
    return sorted(out)


def parse_status(lines: list[bytes | bytearray]) -> FolderStatus:
    """`STATUS name (MESSAGES n UIDNEXT n UIDVALIDITY n [HIGHESTMODSEQ n])` → FolderStatus."""
    values: dict[bytes, int] = {}
    after_literal = False
    for line in lines[:-1]:  # the last line is the tagged completion text
        if isinstance(line, bytearray):  # a mailbox name sent as a literal; its items follow
            after_literal = True
            continue
        if line.startswith(b"STATUS ") or after_literal:
            # The item list is the last parenthesised group: a mailbox name may contain "(" but
            # the list itself cannot.
            items = line[line.rfind(b"(") :]
            values.update((k, int(v)) for k, v in _STATUS_ITEM_RE.findall(items))
        after_literal = False
    if b"UIDVALIDITY" not in values:
        raise ValueError("STATUS response without UIDVALIDITY")
    return FolderStatus(
        uidvalidity=values[b"UIDVALIDITY"], uidnext=values.get(b"UIDNEXT"), messages=values.get(b"MESSAGES", 0),
        highestmodseq=values.get(b"HIGHESTMODSEQ"),
    )


def _clean_flags(text: bytes) -> list[str]:
    # \Recent is per-session state, not a property of the message; parse_fetch drops it too.
    return sorted(f for f in text.decode("utf-8", "surrogateescape").split() if f != "\\Recent")


def _flag_fetches(lines: list[bytes | bytearray]) -> list[tuple[int | None, list[str], int | None]]:
    """(uid, flags, modseq) of every `n FETCH (…FLAGS (…)…)` line; uid is None when the server left it out."""
    out: list[tuple[int | None, list[str], int | None]] = []
    for line in lines:
        if isinstance(line, bytearray) or not _FETCH_HEAD_RE.match(line):
            continue
        flags = _FETCH_FLAGS_RE.search(line)
        if flags is None:
            continue
        uid = _FETCH_UID_RE.search(line)
        modseq = _FETCH_MODSEQ_RE.search(line)
        out.append((
            int(uid.group(1)) if uid else None, _clean_flags(flags.group(1)), int(modseq.group(1)) if modseq else None,
        ))
    return out


def parse_flag_fetch(lines: list[bytes | bytearray]) -> list[MessageFlags]:
    """`n FETCH (UID u FLAGS (…) [MODSEQ (m)])` lines → one entry per UID, in UID order.

    FETCH lines without a UID (unsolicited flag updates outside QRESYNC) cannot be placed and are
    skipped; when a UID is reported twice (result plus unsolicited update), the later report wins.
    """
    by_uid: dict[int, MessageFlags] = {}
    for uid, flags, modseq in _flag_fetches(lines):
        if uid is not None:
            by_uid[uid] = MessageFlags(uid=uid, flags=flags, modseq=modseq)
    return [by_uid[uid] for uid in sorted(by_uid)]


def parse_vanished(lines: list[bytes | bytearray]) -> list[int]:
    """UIDs from `VANISHED (EARLIER) 1:3,7` (answers) and `VANISHED 9` (unsolicited expunges)."""
    uids: set[int] = set()
    for line in lines:
        if isinstance(line, bytearray):
            continue
        m = _VANISHED_RE.match(line)
        if m:
            uids.update(expand_uid_set(m.group(1)))
    return sorted(uids)


def parse_changes(lines: list[bytes | bytearray], since: int, *, qresync: bool) -> MailboxChanges:
    """The answer to `UID FETCH … (UID FLAGS) (CHANGEDSINCE m [VANISHED])`.

    Dovecot answers from the session's view as of the command's start, then brings the view up to
    date with unsolicited FETCH/VANISHED lines and, if expunges moved it, `[HIGHESTMODSEQ n]` in
    the tagged answer. The cursor returned is the highest mod-sequence up to which every change was
    placed: an unsolicited FETCH without UID (CONDSTORE without QRESYNC) caps it just below its own
    MODSEQ, so that change is reported again by the next call instead of being skipped. Changes
    made after the answer have higher mod-sequences than anything in it.
    """
    vanished = parse_vanished(lines) if qresync else []
    gone = set(vanished)
    changed = [m for m in parse_flag_fetch(lines) if m.uid not in gone]
    highest = since
    for m in changed:
        if m.modseq is not None:
            highest = max(highest, m.modseq)
    if qresync and lines and not isinstance(lines[-1], bytearray):
        tagged = _TAGGED_MODSEQ_RE.search(lines[-1])
        if tagged:
            highest = max(highest, int(tagged.group(1)))
    partial = False
    for uid, _, modseq in _flag_fetches(lines):
        if uid is None:
            partial = True
            highest = max(since, min(highest, modseq - 1)) if modseq is not None else since
    return MailboxChanges(changed=changed, vanished=vanished, highestmodseq=highest, partial=partial)


def view_was_stale(lines: list[bytes | bytearray]) -> bool:
    """Whether an answer came with updates it does not itself reflect, so asking again is worthwhile.

    Dovecot answers from the session's view of the folder as of the command's start and announces
    other sessions' changes after the results: an `n EXPUNGE` (the UID may still be listed above
    it) or a FETCH without UID (a flag change the results predate). QRESYNC's `VANISHED` and UID
    FETCHes carry UIDs and are placed by the parsers, so they do not count.
    """
    for line in lines:
        if isinstance(line, bytearray):
            continue
        m = _CHANGE_RE.match(line)
        if m and m.group(1) == b"EXPUNGE":
            return True
        if m and m.group(1) == b"FETCH" and not _FETCH_UID_RE.search(line):
            return True
    return False


def change_lines(lines: list[bytes | bytearray]) -> list[str]:
    """The untagged responses among `lines` that announce a mailbox change (for MailboxEvents)."""
    return [
        bytes(line).decode("utf-8", "replace").strip()
        for line in lines
        if not isinstance(line, bytearray) and _CHANGE_RE.match(line)
    ]
