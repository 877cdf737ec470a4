"""Parsing of IMAP responses as aioimaplib returns them (LIST, STATUS, SELECT, UID FETCH)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from mail.model import FetchedMessage

_LIST_RE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')
_STATUS_ITEM_RE = re.compile(rb"(MESSAGES|UIDNEXT|UIDVALIDITY|HIGHESTMODSEQ|UNSEEN) (\d+)")
_RESP_CODE_RE = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]")
_EXISTS_RE = re.compile(rb"^(\d+) EXISTS$")
_FETCH_UID_RE = re.compile(rb"\bUID (\d+)")
_FETCH_FLAGS_RE = re.compile(rb"\bFLAGS \(([^)]*)\)")
_FETCH_DATE_RE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_FETCH_HEAD_RE = re.compile(rb"^\d+ FETCH \(")

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


def parse_internaldate(text: bytes) -> datetime | None:
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
            out.append(FetchedMessage(
                uid=int(uid.group(1)),
                raw=raw,
                flags=sorted(f for f in (flags.group(1).decode().split() if flags else []) if f != "\\Recent"),
                internaldate=parse_internaldate(date.group(1)) if date else None,
            ))
        i += 3
    return out
