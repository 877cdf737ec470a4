"""The multipart/mixed wire format of Google's batch endpoint, both directions.

A batch request is a multipart/mixed body whose parts are `application/http`
requests (request line, headers, body) with a Content-ID; the answer is a
multipart/mixed body with one `application/http` response per part, its
Content-ID `response-<request Content-ID>`. google-api-python-client writes
its parts with bare LF line ends (Python's email generator), Google's own
docs use CRLF: both are accepted. Answers use CRLF, which the client's
parser relies on (it splits a part's headers from its body at CRLFCRLF).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from http import HTTPStatus

from devkit.gmail_fake.errors import invalid_argument

__all__ = ["InnerRequest", "InnerResponse", "MAX_BATCH_PARTS", "parse_batch", "render_batch"]

MAX_BATCH_PARTS = 100
_LINE = re.compile(rb"\r?\n")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


@dataclass
class InnerRequest:
    content_id: str | None
    method: str
    target: str  # path and query, as in the request line
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@dataclass
class InnerResponse:
    content_id: str | None
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _parse_header_block(block: bytes) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in _LINE.split(block):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip().decode("latin-1"))
            continue
        name, sep, value = line.partition(b":")
        if sep:
            headers.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    return headers


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    match = _BLANK_LINE.search(data)
    if match is None:
        return data, b""
    return data[: match.start()], data[match.end() :]


def parse_batch(content_type: str, body: bytes) -> list[InnerRequest]:
    """The inner requests of a batch body; 400 (Google-shaped) when it is not a valid batch."""
    if not content_type.lower().startswith("multipart/"):
        raise invalid_argument("Batch requests must be multipart/mixed")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise invalid_argument("Missing boundary in multipart/mixed Content-Type")
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    chunks = body.split(delimiter)
    requests: list[InnerRequest] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # close delimiter
        # The line break before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
        chunk = re.sub(rb"\r?\n\Z", b"", chunk)
        chunk = re.sub(rb"\A[ \t]*\r?\n", b"", chunk)
        part_head, http_message = _split_head(chunk)
        part_headers = {name.lower(): value for name, value in _parse_header_block(part_head)}
        content_id = part_headers.get("content-id")
        request_head, inner_body = _split_head(http_message)
        lines = _LINE.split(request_head)
        request_line = lines[0].decode("latin-1").strip() if lines else ""
        pieces = request_line.split()
        if len(pieces) < 2:
            raise invalid_argument(f"Invalid HTTP request line in batch part: {request_line!r}")
        inner_headers = _parse_header_block(b"\n".join(lines[1:]))
        length = next((value for name, value in inner_headers if name.lower() == "content-length"), None)
        if length is not None and length.isdigit():
            inner_body = inner_body[: int(length)]
        requests.append(InnerRequest(content_id, pieces[0].upper(), pieces[1], inner_headers, inner_body))
    if not requests:
        raise invalid_argument("The batch request contains no parts")
    if len(requests) > MAX_BATCH_PARTS:
        raise invalid_argument(f"Too many requests in batch: {len(requests)} (the limit is {MAX_BATCH_PARTS})")
    return requests


def _response_id(content_id: str | None) -> str | None:
    if content_id is None:
        return None
    return f"<response-{content_id.strip().removeprefix('<').removesuffix('>')}>"


def render_batch(responses: list[InnerResponse]) -> tuple[str, bytes]:
    """(Content-Type, body) of the batch answer."""
    boundary = f"batch_{secrets.token_urlsafe(18)}"
    out: list[bytes] = []
    for response in responses:
        out.append(f"--{boundary}\r\nContent-Type: application/http\r\n".encode("latin-1"))
        response_id = _response_id(response.content_id)
        if response_id is not None:
            out.append(f"Content-ID: {response_id}\r\n".encode("latin-1"))
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        out.append(f"\r\nHTTP/1.1 {response.status} {reason}\r\n".encode("latin-1"))
        for name, value in response.headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                out.append(f"{name}: {value}\r\n".encode("latin-1"))
        out.append(f"Content-Length: {len(response.body)}\r\n\r\n".encode("latin-1"))
        out.append(response.body)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode("latin-1"))
    return f"multipart/mixed; boundary={boundary}", b"".join(out)
