"""What Gmail derives from a message's raw bytes: headers, snippet and the `payload` tree.

The fake stores only raw RFC 822 bytes; everything here is computed from
them on demand, tolerating the corpus's malformed messages (bare LF, NUL
bytes, 8-bit headers, broken MIME boundaries) the way Gmail does: never an
error, a best-effort answer instead.
"""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message

from devkit.gmail_fake.models import MessagePart, MessagePartBody, MessagePartHeader

__all__ = [
    "HeaderInfo",
    "attachment_bytes",
    "b64url",
    "build_payload",
    "decode_header_value",
    "metadata_payload",
    "normalize_subject",
    "parse_headers",
    "snippet",
]

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MSG_ID = re.compile(r"<[^<>\s]+>")
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|sv|wg|antw)(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_STYLE_OR_SCRIPT = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")
_SNIPPET_CHARS = 200


def b64url(data: bytes) -> str:
    """Gmail's `raw`/`data` encoding: URL-safe base64, padded."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def decode_header_value(value: str) -> str:
    """Unfolded, RFC 2047-decoded header text, as the API shows header values."""
    unfolded = re.sub(r"\r?\n[ \t]", " ", value).strip()
    if "=?" not in unfolded:
        return unfolded
    try:
        return str(email.header.make_header(email.header.decode_header(unfolded)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return unfolded


def parse_headers(raw: bytes) -> list[tuple[str, str]]:
    """Top-level header fields in order, names as written, values unfolded and decoded."""
    match = _HEADER_END.search(raw)
    block = raw[: match.start()] if match else raw
    fields: list[tuple[str, str]] = []
    for line in re.split(rb"\r?\n", block):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + "\n" + _text(line))
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # not a header field; Gmail drops such lines from the header list too
        fields.append((_text(name).strip(), _text(value).lstrip(" ")))
    return [(name, decode_header_value(value)) for name, value in fields]


def normalize_subject(subject: str) -> str:
    return _SPACE.sub(" ", _SUBJECT_PREFIX.sub("", subject)).strip().lower()


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """The header facts threading and search need, parsed once when a message is added."""

    message_id: str | None
    parent_ids: tuple[str, ...]  # In-Reply-To then References, nearest ancestor first
    subject: str
    sender: str
    recipients: str

    @classmethod
    def from_raw(cls, raw: bytes) -> HeaderInfo:
        headers = parse_headers(raw)

        def first(name: str) -> str:
            return next((v for n, v in headers if n.lower() == name), "")

        def all_of(*names: str) -> str:
            return ", ".join(v for n, v in headers if n.lower() in names)

        ids = _MSG_ID.findall(first("message-id"))
        parents: list[str] = []
        for candidate in _MSG_ID.findall(first("in-reply-to")) + list(reversed(_MSG_ID.findall(first("references")))):
            if candidate not in parents:
                parents.append(candidate)
        return cls(
            message_id=ids[0] if ids else None,
            parent_ids=tuple(parents),
            subject=first("subject"),
            sender=first("from"),
            recipients=all_of("to", "cc", "bcc"),
        )


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _clean(value: str) -> str:
    # compat32 keeps undecodable header bytes as surrogates; JSON must carry real text.
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _part_bytes(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except (ValueError, TypeError):
        data = None
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    return _clean(payload).encode("utf-8") if isinstance(payload, str) else b""


def _part_text(part: Message) -> str:
    data = _part_bytes(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _gmail_escape(text: str) -> str:
    # Gmail snippets are HTML-escaped, with &#39; for the apostrophe.
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("'", "&#39;")
    )


def snippet(raw: bytes) -> str:
    """The first ~200 characters of the message's text, whitespace collapsed, HTML-escaped."""
    try:
        message = _parse(raw)
        text_plain: str | None = None
        text_html: str | None = None
        for part in message.walk():
            if part.is_multipart() or part.get_filename():
                continue
            ctype = part.get_content_type()
            if ctype == "text/plain" and text_plain is None:
                text_plain = _part_text(part)
            elif ctype == "text/html" and text_html is None:
                text_html = _part_text(part)
        if text_plain is None and text_html is not None:
            text_plain = _TAG.sub(" ", _STYLE_OR_SCRIPT.sub(" ", text_html))
        text = text_plain or ""
    except Exception:  # noqa: BLE001 - a snippet never fails a request; Gmail shows an empty one
        text = ""
    text = _SPACE.sub(" ", text.replace("\x00", "")).strip()
    return _gmail_escape(text[:_SNIPPET_CHARS])


def _headers_of(part: Message) -> list[MessagePartHeader]:
    return [MessagePartHeader(name=_clean(n), value=decode_header_value(_clean(str(v)))) for n, v in part.items()]


def _filename(part: Message) -> str:
    try:
        name = part.get_filename()
    except (ValueError, LookupError):
        name = None
    return decode_header_value(_clean(name)) if name else ""


def build_payload(raw: bytes, attachment_id: Callable[[str], str]) -> MessagePart:
    """The `payload` of format=full: the MIME tree, bodies inline, attachments by id."""
    try:
        return _build_part(_parse(raw), "", attachment_id)
    except Exception:  # noqa: BLE001 - unparseable MIME: one opaque text part, as Gmail does
        match = _HEADER_END.search(raw)
        body = raw[match.end() :] if match else b""
        return MessagePart(
            part_id="",
            mime_type="text/plain",
            filename="",
            headers=[MessagePartHeader(name=n, value=v) for n, v in parse_headers(raw)],
            body=MessagePartBody(size=len(body), data=b64url(body) if body else None),
        )


def _build_part(part: Message, part_id: str, attachment_id: Callable[[str], str]) -> MessagePart:
    filename = _filename(part)
    headers = _headers_of(part)
    if part.is_multipart():
        children = part.get_payload()
        assert isinstance(children, list)
        return MessagePart(
            part_id=part_id,
            mime_type=part.get_content_type(),
            filename=filename,
            headers=headers,
            body=MessagePartBody(size=0),
            parts=[
                _build_part(child, f"{part_id}.{i}" if part_id else str(i), attachment_id)
                for i, child in enumerate(children)
            ],
        )
    data = _part_bytes(part)
    if filename:
        body = MessagePartBody(attachment_id=attachment_id(part_id or "0"), size=len(data))
    else:
        body = MessagePartBody(size=len(data), data=b64url(data) if data else None)
    return MessagePart(part_id=part_id, mime_type=part.get_content_type(), filename=filename, headers=headers, body=body)


def attachment_bytes(raw: bytes, part_id: str) -> bytes | None:
    """Decoded content of the part `part_id` ("0.1" style), or None when there is no such part."""
    try:
        node: Message = _parse(raw)
    except Exception:  # noqa: BLE001
        return None
    if part_id in ("", "0") and not node.is_multipart():
        return _part_bytes(node)
    for index in part_id.split("."):
        children = node.get_payload()
        if not node.is_multipart() or not isinstance(children, list) or not index.isdigit():
            return None
        if int(index) >= len(children):
            return None
        node = children[int(index)]
    return None if node.is_multipart() else _part_bytes(node)


def metadata_payload(raw: bytes, only: list[str] | None) -> MessagePart:
    """The `payload` of format=metadata: top-level headers only, optionally filtered by name."""
    wanted = {h.lower() for h in only} if only else None
    headers = [
        MessagePartHeader(name=n, value=v) for n, v in parse_headers(raw) if wanted is None or n.lower() in wanted
    ]
    content_type = next((v for n, v in parse_headers(raw) if n.lower() == "content-type"), "text/plain")
    mime_type = content_type.split(";", 1)[0].strip().lower() or "text/plain"
    return MessagePart(part_id="", mime_type=mime_type, filename="", headers=headers, body=MessagePartBody(size=0))
