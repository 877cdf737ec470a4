"""Parse the headers of a raw RFC 822 message into query fields; never raises on malformed input."""

from __future__ import annotations

import binascii
import email
import email.parser
import email.policy
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from functools import cached_property, lru_cache

# The body parse for the snippet is bounded: a 20 MB attachment must not cost a full MIME walk.
_SNIPPET_SCAN_BYTES = 64 * 1024
_SNIPPET_CHARS = 200
_MSGID_RE = re.compile(r"<[^<>\s]+>")
_WS_RE = re.compile(r"\s+")
_TAG_RE = re.compile(r"<[^>]*>")
# headersonly: the feed parser would otherwise compile a regex per MIME boundary it meets
_HEADERS = email.parser.BytesParser(policy=email.policy.compat32)
# A header field name as the feed parser accepts it: printable ASCII except ':' (and no space).
# A field: its name (printable ASCII but ':', as the feed parser accepts it), then its value with any
# continuation lines (starting with a blank), each line ending in CRLF.
_FIELD = r"([\x21-\x39\x3b-\x7e]++):([^\r\n]*+(?:\r\n[ \t][^\r\n]*+)*+)\r\n"
_FIELD_RE = re.compile(_FIELD)
_FIELDS_RE = re.compile(f"(?:{_FIELD})*+")  # a block made of fields only, nothing left over
# The common shapes of an address list, parsed here exactly as email.utils.getaddresses would:
# `addr-spec`, `phrase <addr-spec>`, `<addr-spec>`, separated by commas. Anything else (comments,
# groups, routes, backslashes, whitespace inside an address, empty items) goes to getaddresses.
# Possessive quantifiers: an atom is never re-split when a match fails (no backtracking blow-up).
_FWS = r"[ \t\r\n]*+"
_WORD = r'(?:[^()<>@,:;"\[\] \t\r\n]++|"[^"\\\r]*+")'  # phrase atom (dots allowed) or quoted string
_ATOM = r'[^()<>@,:;."\[\] \t\r\n]++'
_ADDR_SPEC = f"{_ATOM}(?:\\.{_ATOM})*@{_ATOM}(?:\\.{_ATOM})*"
_MAILBOX_RE = re.compile(
    f"{_FWS}(?:(?P<bare>{_ADDR_SPEC})|(?P<phrase>{_WORD}(?:{_FWS}{_WORD})*)?{_FWS}<(?P<angle>{_ADDR_SPEC})>){_FWS}(?:,|\\Z)"
)
_WORD_RE = re.compile(_WORD)
_OLDEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NEWEST = datetime(2200, 1, 1, tzinfo=timezone.utc)


@dataclass
class ParsedMessage:
    sha256: bytes
    size: int
    header_sha256: bytes | None = None  # of the header block as `BODY[HEADER]` serves it
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
    if value is None or (value.isascii() and "\x00" not in value):
        return value
    value = value.replace("\x00", "")
    return value.encode("utf-8", "replace").decode("utf-8")


def _decode(value: object) -> str:
    if value is None:
        return ""
    raw = str(value)
    if "=?" not in raw:  # no encoded word: decode_header/make_header give the text back unchanged
        return raw
    return _decode_words(raw)


@lru_cache(maxsize=4096)
def _decode_words(raw: str) -> str:
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


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not values:
        return out
    for display, addr in _getaddresses(", ".join(values)):
        addr = normalize_address(addr)
        if "@" in addr:
            out.append((clean_text(addr) or addr, clean_text(_decode(display).strip()) or ""))
    return out


def _getaddresses(text: str) -> list[tuple[str, str]]:
    """email.utils.getaddresses([text]), with the common shapes parsed by one regular expression."""
    out: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _MAILBOX_RE.match(text, pos)
        if m is None or m.end() == pos:
            return _getaddresses_slow(text)
        if m.group("bare") is not None:
            out.append(("", m.group("bare")))
        else:
            phrase = m.group("phrase")
            words = [w[1:-1] if w[0] == '"' else w for w in _WORD_RE.findall(phrase)] if phrase else []
            out.append((" ".join(words), m.group("angle")))
        pos = m.end()
    if not out:
        return _getaddresses_slow(text)
    return out


@lru_cache(maxsize=4096)
def _getaddresses_slow(text: str) -> list[tuple[str, str]]:
    return getaddresses([text])


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


class _Head:
    """A parsed header block: the compat32 Message (what the snippet walker asks) and field lookups.

    Simple blocks (ASCII, CRLF line ends, every line a field or a continuation) are split here,
    field for field as the feed parser splits them; everything else goes through the feed parser.
    """

    __slots__ = ("msg", "index")

    def __init__(self, block: bytes) -> None:
        fields = _simple_fields(block)
        if fields is None:
            self.msg = _HEADERS.parsebytes(block, headersonly=True)
            self.index: dict[str, list[str]] | None = None
            return
        index: dict[str, list[str]] = {}
        for name, value in fields:
            index.setdefault(name.lower(), []).append(value)
        self.index = index
        self.msg = _IndexedMessage(fields, index)

    def get(self, name: str) -> object:
        """`Message.get`: the first value (a plain str for an ASCII block), None when absent."""
        if self.index is None:
            return self.msg.get(name)
        values = self.index.get(name.lower())
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        if self.index is None:
            return [str(v) for v in self.msg.get_all(name, [])]
        return self.index.get(name.lower(), [])


class _IndexedMessage(Message):
    """A compat32 Message of an ASCII header block whose field lookups go through a dict.

    For ASCII values compat32 hands back what was stored, so `get` is the first stored value, as
    Message.get (a scan of every field per call) returns it; get_content_type, get_param and
    get_content_charset all read through `get`.
    """

    def __init__(self, fields: list[tuple[str, str]], index: dict[str, list[str]]) -> None:
        super().__init__()
        self._headers = fields  # what the feed parser's set_raw() builds, in order
        self._payload = ""      # headersonly: nothing follows the header block
        self._index = index

    def get(self, name, failobj=None):  # type: ignore[no-untyped-def,override]
        values = self._index.get(name.lower())
        return values[0] if values else failobj


def _simple_fields(block: bytes) -> list[tuple[str, str]] | None:
    """The (name, value) pairs compat32's feed parser makes of a simple header block, else None.

    `block` holds whole header lines, each ending in CRLF. Values keep their folding, as
    `Compat32.header_source_parse` leaves them: leading blanks of the first line stripped, line
    ends inside kept, the final one removed. A block the feed parser would flag (a first line
    that is a continuation, a line that is no field, `From ` lines) or read differently (bare CR
    or LF, 8-bit bytes) returns None.
    """
    if not block.endswith(b"\r\n") or not block.isascii():
        return None
    text = block.decode("ascii")
    # The fields must tile the block: a line that is no field (or a leading continuation) is left
    # over, and a bare CR or LF fits no field (a field's lines hold neither, and end in CRLF).
    if _FIELDS_RE.fullmatch(text) is None:
        return None
    # A value never ends in a line end here (each line of it ends in CRLF, the last one outside the
    # match), so compat32's `(lines joined).lstrip(" \t").rstrip("\r\n")` is a left strip.
    return [(name, value.lstrip(" \t")) for name, value in _FIELD_RE.findall(text)]


class _ContentType:
    """What the snippet walker and the MIME checks ask of a Content-Type field, as compat32 answers,
    each answer worked out when first asked: compat32 raises on some malformed parameters
    (`name*=a; name*0=b`), and a part whose charset nobody asks for must not fail on it."""

    def __init__(self, msg: Message) -> None:
        self._msg = msg

    @cached_property
    def ctype(self) -> str:
        return self._msg.get_content_type()

    @cached_property
    def maintype(self) -> str:
        return self._msg.get_content_maintype()

    @cached_property
    def boundary(self) -> object:  # get_param("boundary"): str, an RFC 2231 tuple, or None
        return self._msg.get_param("boundary")

    @cached_property
    def charset(self) -> str | None:
        return self._msg.get_content_charset()


def _content_type(msg: Message) -> _ContentType:
    """compat32's answers for `msg`: they depend on its first Content-Type value only (its default
    type is always text/plain here, each part being parsed on its own). A plain-str value (almost
    every part) is answered from a cache: content types and charsets repeat from message to message."""
    value = msg.get("content-type")
    if type(value) is str:
        return _content_type_of(value)
    return _ContentType(msg)


@lru_cache(maxsize=4096)
def _content_type_of(value: str) -> _ContentType:
    probe = Message()
    probe["Content-Type"] = value
    return _ContentType(probe)


def _split_head(part: bytes) -> tuple[Message, bytes]:
    end = part.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end, sep = part.find(b"\n\n"), 2
    if end < 0:
        return _HEADERS.parsebytes(part, headersonly=True), b""
    return _Head(part[: end + 2]).msg, part[end + sep :]


def _leaf_text(head: Message, body: bytes) -> str:
    cte = str(head.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "base64":
        data = b"".join(body.split())
        data = data[: len(data) - len(data) % 4]
        try:
            body = binascii.a2b_base64(data)
        except binascii.Error:
            pass
    elif cte == "quoted-printable":
        body = binascii.a2b_qp(body)
    charset = _content_type(head).charset or "utf-8"
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


def _first_text(head: Message, body: bytes, depth: int = 0) -> tuple[str | None, str | None]:
    """(first text/plain, first text/html) of a MIME entity, walking parts by their boundaries only.

    Splitting on the boundary line instead of running the feed parser over the whole body keeps the
    snippet cheap (it is computed for every message of every page).
    """
    info = _content_type(head)
    ctype = info.ctype
    if ctype == "text/plain":
        return _leaf_text(head, body), None
    if ctype == "text/html":
        return None, _leaf_text(head, body)
    boundary = info.boundary if info.maintype == "multipart" else None
    if not isinstance(boundary, str) or not boundary or depth > 4:
        return None, None
    html: str | None = None
    for piece in _parts(body, b"--" + boundary.encode("ascii", "replace")):
        part_head, part_body = _split_head(piece)
        plain, part_html = _first_text(part_head, part_body, depth + 1)
        if plain is not None:
            return plain, None
        html = html or part_html
    return None, html


def _parts(body: bytes, delimiter: bytes) -> Iterator[bytes]:
    """The body parts between boundary lines (RFC 2046 5.1.1).

    A delimiter only counts at the start of a line and followed by end of line or `--`: a nested
    boundary may extend the outer one (`=_b` and `=_b_alt`).
    """
    pos, start = 0, -1
    while True:
        at = body.find(delimiter, pos)
        if at < 0:
            if start >= 0:
                yield body[start:]
            return
        after = at + len(delimiter)
        tail = body[after : after + 2]
        at_line_start = at == 0 or body[at - 1 : at] == b"\n"
        closing = tail == b"--"
        if at_line_start and (closing or tail[:1] in (b"\r", b"\n", b" ", b"\t", b"")):
            if start >= 0:
                end = at - 2 if body[at - 2 : at] == b"\r\n" else at - 1
                yield body[start:end]
            if closing:
                return
            eol = body.find(b"\n", after)
            if eol < 0:
                return
            start = eol + 1
        pos = after


def _snippet(head: Message, body: bytes) -> str | None:
    plain, html = _first_text(head, body[:_SNIPPET_SCAN_BYTES])
    if plain is not None:
        return _collapse(plain, html=False)
    if html is not None:
        return _collapse(html, html=True)
    return None


def _collapse(text: str, *, html: bool) -> str:
    """`_WS_RE.sub(" ", text).strip()[:_SNIPPET_CHARS]` (tags removed first for html), on a prefix.

    A prefix collapses to a prefix of the whole: a run of blanks cut at the end still becomes one
    space, and an html prefix ends just after a `>` so that no tag is cut. Once the collapsed
    prefix is longer than the snippet, the rest of the text cannot change it.
    """
    size = 2 * _SNIPPET_CHARS
    while True:
        cut = size
        if cut < len(text) and html:
            close = text.find(">", cut)
            cut = len(text) if close < 0 else close + 1
        whole = cut >= len(text)
        part = text if whole else text[:cut]
        if html:
            part = _TAG_RE.sub(" ", part)
        out = _WS_RE.sub(" ", part).lstrip()
        if whole or len(out) > _SNIPPET_CHARS:
            return out.strip()[:_SNIPPET_CHARS]
        size *= 4


def _mime_problems(head: Message, raw: bytes, body_start: int) -> list[str]:
    """The structural defects the feed parser would report, found without a full MIME walk."""
    info = _content_type(head)
    if info.maintype != "multipart":
        return []
    boundary = info.boundary
    if not isinstance(boundary, str) or not boundary:
        return ["NoBoundaryInMultipartDefect"]
    delimiter = b"--" + boundary.encode("ascii", "replace")
    # searched in place: the body can be megabytes, and the close delimiter sits near its end
    if raw.find(delimiter, body_start) < 0:
        return ["StartBoundaryNotFoundDefect"]
    if raw.rfind(delimiter + b"--", body_start) < 0:
        return ["CloseBoundaryNotFoundDefect"]
    return []


def parse_message(raw: bytes) -> ParsedMessage:
    parsed = ParsedMessage(sha256=hashlib.sha256(raw).digest(), size=len(raw))
    problems: list[str] = []
    try:
        end = raw.find(b"\r\n\r\n")
        if end >= 0:
            parsed.header_sha256 = hashlib.sha256(raw[: end + 4]).digest()  # = header_key(raw)
        else:
            end = raw.find(b"\n\n")
            parsed.header_sha256 = header_key(raw)
        if end < 0:
            problems.append("no header/body separator")
        head = _Head(raw if end < 0 else raw[: end + 2])
        msg = head.msg
        problems.extend(type(d).__name__ for d in msg.defects)
        parsed.message_id = (_msgids(head.get("Message-ID")) or [None])[0]  # type: ignore[arg-type]
        parsed.in_reply_to = (_msgids(head.get("In-Reply-To")) or [None])[-1]  # type: ignore[arg-type]
        parsed.references = _msgids(head.get("References"))  # type: ignore[arg-type]
        subject = head.get("Subject")
        parsed.subject = clean_text(_decode(subject)) if subject is not None else None
        senders = _addresses(head.get_all("From"))
        if senders:
            parsed.from_addr, parsed.from_name = senders[0]
        else:
            problems.append("no From")
        to, cc, bcc = (_addresses(head.get_all(h)) for h in ("To", "Cc", "Bcc"))
        parsed.to_addrs = [a for a, _ in to]
        parsed.cc_addrs = [a for a, _ in cc]
        parsed.bcc_addrs = [a for a, _ in bcc]
        parsed.people = senders[:1] + to + cc + bcc
        date = head.get("Date")
        parsed.sent_at = _date(date)
        if date is None:
            problems.append("no Date")
        if end >= 0:
            body_start = end + (4 if raw.startswith(b"\r\n\r\n", end) else 2)
            parsed.snippet = clean_text(_snippet(msg, raw[body_start : body_start + _SNIPPET_SCAN_BYTES]))
            problems.extend(_mime_problems(msg, raw, body_start))
        if b"\x00" in raw:
            problems.append("NUL bytes")
    except Exception as exc:  # the raw bytes are stored regardless; the flag says why fields are missing
        problems.append(f"{type(exc).__name__}: {exc}")
    parsed.parse_error = clean_text("; ".join(dict.fromkeys(problems))) if problems else None
    return parsed


def header_key(raw: bytes) -> bytes:
    """sha256 of the header block including the blank line, i.e. what `BODY[HEADER]` returns."""
    end = raw.find(b"\r\n\r\n")
    if end >= 0:
        return hashlib.sha256(raw[: end + 4]).digest()
    end = raw.find(b"\n\n")
    return hashlib.sha256(raw if end < 0 else raw[: end + 2]).digest()


def parse_many(raws: Sequence[bytes]) -> list[ParsedMessage]:
    """A chunk at a time: the unit handed to a parser process."""
    return [parse_message(raw) for raw in raws]
