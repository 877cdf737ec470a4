"""Parse the headers of a raw RFC 822 message into query fields; never raises on malformed input."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

# The body parse for the snippet is bounded: a 20 MB attachment must not cost a full MIME walk.
_SNIPPET_SCAN_BYTES = 64 * 1024
_SNIPPET_CHARS = 200
_MSGID_RE = re.compile(r"<[^<>\s]+>")
_WS_RE = re.compile(r"\s+")
_TAG_RE = re.compile(r"<[^>]*>")
_OLDEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NEWEST = datetime(2200, 1, 1, tzinfo=timezone.utc)


@dataclass
class ParsedMessage:
    sha256: bytes
    size: int
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    subject: str | None = None
    from_addr: str | None = None
    from_name: str | None = None
    to_addrs: list[str] = field(default_factory=list)
    cc_addrs: list[str] = field(default_factory=list)
    bcc_addrs: list[str] = field(default_factory=list)
    # (normalized address, display name) of every correspondent, for contacts
    people: list[tuple[str, str]] = field(default_factory=list)
    sent_at: datetime | None = None
    snippet: str | None = None
    parse_error: str | None = None

    def thread_refs(self) -> list[str]:
        """Every Message-ID this message mentions; a message without any gets a key of its own."""
        refs = list(self.references)
        if self.in_reply_to:
            refs.append(self.in_reply_to)
        if self.message_id:
            refs.append(self.message_id)
        return list(dict.fromkeys(refs)) or ["sha256:" + self.sha256.hex()]


def clean_text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL or lone surrogates, which malformed headers produce."""
    if value is None:
        return None
    value = value.replace("\x00", "")
    return value.encode("utf-8", "replace").decode("utf-8")


def _decode(value: object) -> str:
    if value is None:
        return ""
    raw = str(value)
    try:
        return str(make_header(decode_header(raw)))
    except Exception:  # a broken encoded-word: keep what the sender wrote
        return raw


def _msgids(value: str | None) -> list[str]:
    if not value:
        return []
    return [clean_text(m) or m for m in _MSGID_RE.findall(value)]


def normalize_address(addr: str) -> str:
    return addr.strip().strip("<>").lower()


def _addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    values = [str(v) for v in msg.get_all(name, [])]
    out: list[tuple[str, str]] = []
    for display, addr in getaddresses(values):
        addr = normalize_address(addr)
        if "@" in addr:
            out.append((clean_text(addr) or addr, clean_text(_decode(display).strip()) or ""))
    return out


def _date(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        dt = parsedate_to_datetime(str(value))
    except Exception:
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt if _OLDEST <= dt < _NEWEST else None


def _snippet(raw: bytes) -> str | None:
    msg = email.message_from_bytes(raw[:_SNIPPET_SCAN_BYTES], policy=email.policy.compat32)
    html: str | None = None
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, "replace")
        except LookupError:
            text = payload.decode("utf-8", "replace")
        if ctype == "text/plain":
            return _WS_RE.sub(" ", text).strip()[:_SNIPPET_CHARS]
        html = html or _WS_RE.sub(" ", _TAG_RE.sub(" ", text)).strip()[:_SNIPPET_CHARS]
    return html


def parse_message(raw: bytes) -> ParsedMessage:
    parsed = ParsedMessage(sha256=hashlib.sha256(raw).digest(), size=len(raw))
    problems: list[str] = []
    try:
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            end = raw.find(b"\n\n")
        if end < 0:
            problems.append("no header/body separator")
        header_bytes = raw if end < 0 else raw[: end + 2]
        msg = email.message_from_bytes(header_bytes, policy=email.policy.compat32)
        problems.extend(type(d).__name__ for d in msg.defects)
        parsed.message_id = (_msgids(msg.get("Message-ID")) or [None])[0]
        parsed.in_reply_to = (_msgids(msg.get("In-Reply-To")) or [None])[-1]
        parsed.references = _msgids(msg.get("References"))
        subject = msg.get("Subject")
        parsed.subject = clean_text(_decode(subject)) if subject is not None else None
        senders = _addresses(msg, "From")
        if senders:
            parsed.from_addr, parsed.from_name = senders[0]
        else:
            problems.append("no From")
        to, cc, bcc = (_addresses(msg, h) for h in ("To", "Cc", "Bcc"))
        parsed.to_addrs = [a for a, _ in to]
        parsed.cc_addrs = [a for a, _ in cc]
        parsed.bcc_addrs = [a for a, _ in bcc]
        parsed.people = senders[:1] + to + cc + bcc
        parsed.sent_at = _date(msg.get("Date"))
        if msg.get("Date") is None:
            problems.append("no Date")
        if end >= 0:
            parsed.snippet = clean_text(_snippet(raw))
        if b"\x00" in raw:
            problems.append("NUL bytes")
    except Exception as exc:  # the raw bytes are stored regardless; the flag says why fields are missing
        problems.append(f"{type(exc).__name__}: {exc}")
    parsed.parse_error = clean_text("; ".join(dict.fromkeys(problems))) if problems else None
    return parsed
