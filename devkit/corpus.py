"""Deterministic corpus of realistic, and deliberately broken, RFC 5322 messages.

Tests, benchmarks and `make demo` all seed IMAP servers from here, so the
same seed must always give byte-identical messages: everything is driven by
seeded `random.Random` instances (no clock, no hash ordering, no `email`
package whose output could change between Python releases).

The mix imitates a real mailbox: threads whose replies land in other folders,
RFC 2047 encoded-word headers with non-ASCII names and subjects,
multipart/alternative text+HTML, base64 attachments whose sizes are
log-uniform (most small, a few large), 8-bit bodies, plus a small share of
malformed messages (see `MALFORMED_KINDS`) that a mirror must still store
byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import quote

__all__ = [
    "MALFORMED_KINDS",
    "NORMAL_KINDS",
    "OWNER_ADDRESS",
    "SeedMessage",
    "generate_corpus",
    "generate_sample_mailbox",
    "reply_chain",
]

NORMAL_KINDS: tuple[str, ...] = ("plain", "alternative", "8bit", "attachment")
"""Kinds of well-formed messages (CRLF line ends, all required headers)."""

MALFORMED_KINDS: tuple[str, ...] = (
    "no_date",  # no Date header
    "no_from",  # no From header
    "no_message_id",  # no Message-ID header
    "broken_boundary",  # multipart whose parts use another boundary, never closed
    "nul_bytes",  # NUL bytes inside the body
    "bare_lf",  # LF line endings instead of CRLF
    "raw_8bit_header",  # unencoded UTF-8 / Latin-1 bytes in Subject and From
    "header_only",  # header block only: no empty line, no body
)
"""Kinds of malformed messages, produced round-robin so every kind shows up."""

OWNER_ADDRESS = "dana@example.com"
"""The mailbox owner's address: From of Sent/Drafts messages, To of the rest."""

_OWNER_NAME = "Dana Kowalski"


@dataclass(frozen=True, kw_only=True)
class SeedMessage:
    """One message to place in a mailbox, exactly as its bytes should be stored."""

    raw: bytes
    internaldate: datetime
    folder: str = "INBOX"
    flags: tuple[str, ...] = ()
    kind: str = "plain"


# Display name, local part, domain. Non-ASCII names exercise RFC 2047 decoding.
_PEOPLE: tuple[tuple[str, str, str], ...] = (
    ("Alice Martin", "alice.martin", "example.org"),
    ("José Müller", "jose.mueller", "example.de"),
    ("Zoë Ångström", "zoe", "example.se"),
    ("Søren Kierkegaard", "soren.k", "example.dk"),
    ("François Dupont", "f.dupont", "example.fr"),
    ("Ольга Иванова", "olga.ivanova", "example.ru"),
    ("张伟", "zhang.wei", "example.cn"),
    ("佐藤 花子", "hanako.sato", "example.jp"),
    ("Bob O'Neil", "bob", "example.net"),
    ("Priya Raman", "priya", "example.in"),
    ("Łukasz Wiśniewski", "lukasz.w", "example.pl"),
    ("Ayşe Yılmaz", "ayse", "example.com.tr"),
    ("Nguyễn Văn An", "an.nguyen", "example.vn"),
    ("Carlos Peña", "carlos", "example.es"),
    ("Émilie Durand", "emilie.durand", "example.fr"),
    ("Dmitri Sokolov", "dsokolov", "example.net"),
    ("Grace Hopper", "grace", "example.mil"),
    ("محمد علي", "m.ali", "example.eg"),
    ("Jürgen Weiß", "juergen", "example.at"),
    ("Martin, Alice (Finance)", "finance", "example.org"),
    ("Ingrid Østergaard", "ingrid", "example.no"),
    ("Kim Lee", "kim", "example.kr"),
    ("Noreply Billing", "no-reply", "billing.example.com"),
    ("GitLab", "gitlab", "gitlab.example.com"),
)

_SUBJECTS: tuple[str, ...] = (
    "Quarterly report",
    "Lunch on Friday?",
    "Release 2.4 planning",
    "Invoice {n}",
    "Café meeting notes",
    "Überprüfung der Verträge",
    "会議の議事録",
    "Привет из Москвы",
    "Party 🎉 this weekend",
    "Re-org proposal — draft",
    "Flight itinerary for {n}",
    "Build failed on main ({n})",
    "Your order #{n} has shipped",
    "Budget 2024: naïve estimate",
    "Résumé attached",
    "Weekly sync",
    "Question about the API",
    "Zürich offsite logistics",
    "Ideas for the roadmap",
    "Password reset requested",
    "Photos from the trip 📷",
    "Contract renewal",
    "Sprint retro notes",
    "Fwd: conference schedule",
    "Année fiscale: clôture",
    "Server migration window",
)

_LIST_SUBJECTS: tuple[str, ...] = (
    "PEP discussion: pattern matching edge cases",
    "asyncio cancellation semantics",
    "Packaging with pyproject.toml",
    "Unicode normalisation in file names",
    "Ann: mailsync {n} released",
    "Type hints for decorators",
)

_WORDS: tuple[str, ...] = tuple(
    (
        "the of and to in is that for it as was with be by on not he this are or his from "
        "at which but have an they you were her she there been one all we their has would "
        "when if so what can more about other out time into could some than them these its "
        "only new also our after two first may any well way work even because most where "
        "meeting project report budget schedule deadline review draft release server "
        "customer invoice contract team office travel update question answer proposal "
        "migration database backup network deploy feature issue ticket agenda minutes "
        "please thanks regards tomorrow today next week month quarter soon attached below "
        "above following previous summary details numbers estimate plan option decision"
    ).split()
)

# Sprinkled into bodies so text parts need quoted-printable or 8-bit transfer.
_NON_ASCII_WORDS: tuple[str, ...] = (
    "naïve",
    "café",
    "résumé",
    "Zürich",
    "Straße",
    "façade",
    "smörgåsbord",
    "東京",
    "Москва",
    "Ελλάδα",
    "€120",
    "“quoted”",
    "—",
    "😀",
    "niño",
    "coöperate",
)

_TIMEZONES: tuple[timezone, ...] = tuple(
    timezone(timedelta(minutes=m)) for m in (0, 60, 120, -300, -240, -480, 330, 540, 480, 180, -180, 600)
)

_MAILERS: tuple[str, ...] = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0",
    "X-Mailer: Apple Mail (2.3731.700.6)",
    "X-Mailer: Microsoft Outlook 16.0",
    "User-Agent: Mutt/2.2.12 (2023-09-09)",
    "X-Mailer: iPhone Mail (21B101)",
    "User-Agent: Roundcube Webmail/1.6.5",
)

_ATTACHMENT_TYPES: tuple[tuple[str, str], ...] = (
    ("application/pdf", "report-{n}.pdf"),
    ("application/pdf", "Präsentation_{n}.pdf"),
    ("image/jpeg", "IMG_{n}.jpg"),
    ("image/png", "screenshot {n}.png"),
    ("application/zip", "logs-{n}.zip"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "contrat_signé_{n}.docx"),
    ("application/octet-stream", "données-{n}.bin"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "Бюджет-{n}.xlsx"),
)

# Smallest attachment; with a 2 MB maximum the log-uniform mean is ~240 KB,
# which at a 5 % attachment ratio keeps the corpus mean near 25 KB.
_MIN_ATTACHMENT_BYTES = 500
_B64_LINE_BYTES = 57  # raw bytes per 76-character base64 line
_HTML_STYLE = (
    'style="margin:0 0 12px 0;font-family:Helvetica,Arial,sans-serif;font-size:14px;line-height:20px;color:#333333;"'
)


@dataclass(frozen=True)
class _Paragraph:
    text: str
    html: str
    ascii: bool


@dataclass(frozen=True)
class _Pools:
    paragraphs: tuple[_Paragraph, ...]
    html_heads: tuple[str, ...]
    b64_lines: bytes  # base64 of random bytes, 77 bytes per line incl. LF
    b64_line_count: int
    dkim_noise: str


@dataclass(frozen=True)
class _ThreadRef:
    message_id: str
    references: tuple[str, ...]
    subject: str
    person: tuple[str, str, str]  # the other party: who a reply goes to / comes from
    author: str
    date: datetime


def _wrap(words: list[str], width: int = 72) -> str:
    lines: list[str] = []
    current: list[str] = []
    length = 0
    for word in words:
        if current and length + 1 + len(word) > width:
            lines.append(" ".join(current))
            current, length = [word], len(word)
        else:
            length += len(word) + (1 if current else 0)
            current.append(word)
    if current:
        lines.append(" ".join(current))
    return "\n".join(lines)


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@functools.lru_cache(maxsize=4)
def _pools(seed: int, max_attachment_bytes: int) -> _Pools:
    # Composing bodies from pre-built paragraphs and slicing one pre-encoded
    # base64 pool is what keeps 20k messages within a few seconds.
    rng = random.Random(f"mailsync-corpus-pools-{seed}")
    paragraphs: list[_Paragraph] = []
    for _ in range(1500):
        words: list[str] = []
        for _ in range(rng.randint(2, 6)):
            sentence = rng.choices(_WORDS, k=rng.randint(6, 18))
            if rng.random() < 0.15:
                sentence.insert(rng.randrange(len(sentence) + 1), rng.choice(_NON_ASCII_WORDS))
            sentence[0] = sentence[0].capitalize()
            sentence[-1] += rng.choice((".", ".", ".", "?", "!"))
            words.extend(sentence)
        text = _wrap(words)
        paragraphs.append(
            _Paragraph(
                text=text,
                html=f"<p {_HTML_STYLE}>{_html_escape(' '.join(words))}</p>",
                ascii=text.isascii(),
            )
        )
    html_heads = tuple(_html_head(rng, rules) for rules in (4, 25, 70))
    pool_bytes = max(2 * max_attachment_bytes, 64 * 1024)
    encoded = base64.encodebytes(rng.randbytes(pool_bytes))
    line_count = len(encoded) // 77
    noise = base64.b64encode(rng.randbytes(600)).decode("ascii")
    return _Pools(tuple(paragraphs), html_heads, encoded[: line_count * 77], line_count, noise)


def _html_head(rng: random.Random, rules: int) -> str:
    # Real HTML mail carries a lot of CSS; it is most of a message's size.
    css = []
    for i in range(rules):
        css.append(
            f".c{i}-{rng.getrandbits(24):06x} {{ font-family: Helvetica, Arial, sans-serif; "
            f"font-size: {rng.randint(10, 18)}px; color: #{rng.getrandbits(24):06x}; "
            f"padding: {rng.randint(0, 20)}px {rng.randint(0, 20)}px; }}"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n'
        '<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1.0">\n'
        '<style type="text/css">\n' + "\n".join(css) + "\n</style>\n</head>\n"
        '<body style="margin:0;padding:0;background-color:#f4f4f4;">\n'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">'
        '<tr><td align="center" style="padding:24px;">\n'
    )


_HTML_TAIL = "</td></tr></table>\n</body>\n</html>\n"


# --- RFC 2047 encoded words -------------------------------------------------

_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")


@functools.lru_cache(maxsize=8192)
def _encoded_words(text: str, method: str) -> str:
    """Encode `text` as folded UTF-8 encoded words, each within 75 characters."""
    words: list[str] = []
    chunk = bytearray()
    budget = 45 if method == "B" else 62  # payload chars that fit in 75 with "=?UTF-8?X?" "?="
    used = 0
    for ch in text:
        raw = ch.encode("utf-8")
        cost = len(raw) if method == "B" else sum(1 if b in _Q_SAFE or b == 0x20 else 3 for b in raw)
        if used + cost > budget and chunk:
            words.append(_one_word(bytes(chunk), method))
            chunk.clear()
            used = 0
        chunk += raw
        used += cost
    if chunk:
        words.append(_one_word(bytes(chunk), method))
    return "\n ".join(words)


def _one_word(data: bytes, method: str) -> str:
    if method == "B":
        return f"=?UTF-8?B?{base64.b64encode(data).decode('ascii')}?="
    payload = "".join(chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in data)
    return f"=?UTF-8?Q?{payload}?="


def _header_text(text: str, rng: random.Random) -> str:
    if text.isascii():
        return text
    return _encoded_words(text, rng.choice("BQ"))


def _mailbox(person: tuple[str, str, str], rng: random.Random) -> str:
    name, local, domain = person
    address = f"{local}@{domain}"
    if not name.isascii():
        return f"{_encoded_words(name, rng.choice('BQ'))} <{address}>"
    if any(c in name for c in ',.;:()"'):
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{address}>'
    return f"{name} <{address}>"


def _fold_ids(name: str, ids: Sequence[str]) -> str:
    return f"{name}: " + "\n ".join(ids)


def _content_disposition_filename(filename: str) -> str:
    if filename.isascii():
        return f'filename="{filename}"'
    # RFC 2231, which is what most current clients emit for non-ASCII names.
    return f"filename*=UTF-8''{quote(filename, safe='')}"


# --- message building -------------------------------------------------------


class _Builder:
    """Stateful generator: keeps the thread history and malformed round-robin."""

    def __init__(
        self,
        seed: int,
        folders: Sequence[str],
        malformed_ratio: float,
        attachment_ratio: float,
        max_attachment_bytes: int,
    ) -> None:
        if not folders:
            raise ValueError("folders must not be empty")
        if not 0.0 <= malformed_ratio <= 1.0 or not 0.0 <= attachment_ratio <= 1.0:
            raise ValueError("ratios must be between 0 and 1")
        if max_attachment_bytes < _B64_LINE_BYTES:
            raise ValueError(f"max_attachment_bytes must be at least {_B64_LINE_BYTES}")
        self.rng = random.Random(f"mailsync-corpus-{seed}")
        self.pools = _pools(seed, max_attachment_bytes)
        self.folders = tuple(folders)
        self.folder_weights = tuple(
            6.0 if f.upper() == "INBOX" else 2.0 if f in ("Sent", "Archive") else 1.0 for f in self.folders
        )
        self.malformed_ratio = malformed_ratio
        self.attachment_ratio = attachment_ratio
        self.max_attachment_bytes = max_attachment_bytes
        self.malformed_done = 0
        self.recent: list[_ThreadRef] = []
        self.clock = datetime(2019, 3, 4, 8, 30, tzinfo=timezone.utc) + timedelta(
            seconds=self.rng.randrange(86400 * 365)
        )
        self.counter = 0

    # One message ---------------------------------------------------------

    def next_message(self) -> SeedMessage:
        rng = self.rng
        self.counter += 1
        n = self.counter
        self.clock += timedelta(seconds=int(rng.expovariate(1 / 7200)) + 1)
        sent = self.clock
        folder = rng.choices(self.folders, weights=self.folder_weights)[0]
        outgoing = folder in ("Sent", "Drafts")
        is_list = folder.startswith("Lists/")

        kind: str
        if rng.random() < self.malformed_ratio:
            kind = MALFORMED_KINDS[self.malformed_done % len(MALFORMED_KINDS)]
            self.malformed_done += 1
        elif rng.random() < self.attachment_ratio:
            kind = "attachment"
        else:
            kind = rng.choices(("plain", "alternative", "8bit"), weights=(45, 45, 10))[0]

        parent = rng.choice(self.recent) if self.recent and rng.random() < 0.35 else None
        correspondent = parent.person if parent is not None else rng.choice(_PEOPLE)
        if parent is not None:
            base_subject = parent.subject
            subject = base_subject if base_subject.lower().startswith("re:") else f"Re: {base_subject}"
        else:
            template = rng.choice(_LIST_SUBJECTS if is_list else _SUBJECTS)
            subject = template.format(n=rng.randint(1000, 99999))
            if is_list:
                subject = f"[{folder.split('/')[-1].lower()}-list] {subject}"
            base_subject = subject
        domain = correspondent[2] if not outgoing else "example.com"
        message_id = f"<{n:06d}.{rng.getrandbits(64):016x}@{domain}>"

        if outgoing:
            sender: tuple[str, str, str] = (_OWNER_NAME, "dana", "example.com")
            recipients = [correspondent, *rng.sample(_PEOPLE, rng.choice((0, 0, 1, 2)))]
        else:
            sender = correspondent
            recipients = [(_OWNER_NAME, "dana", "example.com"), *rng.sample(_PEOPLE, rng.choice((0, 0, 0, 1, 3)))]
        tz = rng.choice(_TIMEZONES)

        headers = self._trace_headers(sender, sent, outgoing)
        headers.append("MIME-Version: 1.0")
        if kind != "no_from":
            headers.append(f"From: {_mailbox(sender, rng)}")
        headers.append("To: " + ",\n ".join(_mailbox(p, rng) for p in recipients[:2]))
        if len(recipients) > 2:
            headers.append("Cc: " + ",\n ".join(_mailbox(p, rng) for p in recipients[2:]))
        subject_header = (
            f"Subject: Re: {_header_text(subject[4:], rng)}"
            if subject.startswith("Re: ")
            else (f"Subject: {_header_text(subject, rng)}")
        )
        headers.append(subject_header)
        if kind != "no_date":
            headers.append(f"Date: {format_datetime(sent.astimezone(tz))}")
        if kind != "no_message_id":
            headers.append(f"Message-ID: {message_id}")
        if parent is not None:
            refs = (*parent.references, parent.message_id)
            if len(refs) > 20:
                # Clients trim the middle of long chains but keep the root (RFC 5322 3.6.4).
                refs = refs[:1] + refs[-19:]
            headers.append(f"In-Reply-To: {parent.message_id}")
            headers.append(_fold_ids("References", refs))
        else:
            refs = ()
        headers.append(rng.choice(_MAILERS))
        if is_list:
            list_name = folder.split("/")[-1].lower()
            headers.append(f"List-Id: {list_name} discussion <{list_name}-list.lists.example.org>")
            headers.append(f"List-Unsubscribe: <mailto:{list_name}-list-leave@lists.example.org>")
            headers.append("Precedence: list")

        greeting_name = correspondent[0].split()[0].strip('",') if outgoing else _OWNER_NAME.split()[0]
        text = self._body_text(greeting_name, sender[0], parent, force_non_ascii=kind == "8bit")

        raw = self._assemble(kind, headers, text, n)

        internal = sent if outgoing else sent + timedelta(seconds=rng.randint(2, 300))
        flags = self._flags(folder)

        if kind != "no_message_id":
            self.recent.append(_ThreadRef(message_id, tuple(refs), base_subject, correspondent, sender[0], sent))
            if len(self.recent) > 300:
                del self.recent[0]
        return SeedMessage(raw=raw, internaldate=internal, folder=folder, flags=flags, kind=kind)

    def _trace_headers(self, sender: tuple[str, str, str], sent: datetime, outgoing: bool) -> list[str]:
        rng = self.rng
        address = f"{sender[1]}@{sender[2]}"
        if outgoing:
            return [f"Return-Path: <{address}>"]
        hops = []
        when = sent
        for hop in range(rng.randint(1, 3)):
            when += timedelta(seconds=rng.randint(0, 20))
            ip = f"203.0.113.{rng.randint(1, 254)}"
            relay = f"mail-{rng.getrandbits(20):05x}.{sender[2]}"
            hops.append(
                f"Received: from {relay} ({relay} [{ip}])\n"
                f"\tby mx{hop + 1}.example.com (Postfix) with ESMTPS id {rng.getrandbits(40):010X}\n"
                f"\tfor <{OWNER_ADDRESS}>; {format_datetime(when)}"
            )
        hops.reverse()  # newest hop first, as MTAs prepend
        noise = self.pools.dkim_noise
        start = rng.randrange(len(noise) - 400)
        signature = noise[start : start + 344]
        return [
            f"Return-Path: <{address}>",
            f"Delivered-To: {OWNER_ADDRESS}",
            *hops,
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={sender[2]};\n"
            f"\ts=sel{rng.randint(1, 3)}; t={int(sent.timestamp())};\n"
            f"\th=from:to:subject:date:message-id:mime-version:content-type;\n"
            f"\tbh={noise[start + 344 : start + 387]}=;\n"
            + "\tb="
            + "\n\t  ".join(signature[i : i + 70] for i in range(0, len(signature), 70)),
            f"Authentication-Results: mx1.example.com; dkim=pass header.d={sender[2]};\n"
            f"\tspf=pass smtp.mailfrom={address}; dmarc=pass header.from={sender[2]}",
        ]

    def _body_text(
        self, greeting_name: str, signer: str, parent: _ThreadRef | None, *, force_non_ascii: bool
    ) -> list[_Paragraph]:
        rng = self.rng
        paragraphs = self.pools.paragraphs
        count = rng.choices((1, 2, 3, 4, 6, 9), weights=(20, 30, 25, 15, 7, 3))[0]
        chosen = [paragraphs[rng.randrange(len(paragraphs))] for _ in range(count)]
        parts = [
            _Paragraph(
                f"Hi {greeting_name},",
                f"<p {_HTML_STYLE}>Hi {_html_escape(greeting_name)},</p>",
                greeting_name.isascii(),
            )
        ]
        parts.extend(chosen)
        if force_non_ascii:
            parts.append(
                _Paragraph(
                    "Grüße aus Zürich — à bientôt 😀", f"<p {_HTML_STYLE}>Grüße aus Zürich — à bientôt 😀</p>", False
                )
            )
        if parent is not None:
            quoted = paragraphs[rng.randrange(len(paragraphs))]
            stamp = format_datetime(parent.date)
            parts.append(
                _Paragraph(
                    f"On {stamp}, {parent.author} wrote:\n"
                    + "\n".join("> " + line for line in quoted.text.split("\n")),
                    f'<blockquote type="cite" style="border-left:2px solid #ccc;padding-left:8px;">'
                    f"{quoted.html}</blockquote>",
                    quoted.ascii and parent.author.isascii(),
                )
            )
        parts.append(
            _Paragraph(f"-- \n{signer}", f"<p {_HTML_STYLE}>-- <br>{_html_escape(signer)}</p>", signer.isascii())
        )
        return parts

    def _assemble(self, kind: str, headers: list[str], parts: list[_Paragraph], n: int) -> bytes:
        rng = self.rng
        text = "\n\n".join(p.text for p in parts) + "\n"
        ascii_text = all(p.ascii for p in parts)
        boundary = f"=_mailsync_{rng.getrandbits(48):012x}"

        if kind == "header_only":
            return ("\n".join(headers) + "\n").encode("utf-8").replace(b"\n", b"\r\n")

        if kind == "raw_8bit_header":
            # Real-world breakage: clients that put raw UTF-8 or Latin-1 into headers.
            charset = rng.choice(("utf-8", "latin-1"))
            subject = "Café crème für Jürgen à Zürich"
            name = "Renée Façade"
            headers = [h for h in headers if not h.startswith(("Subject:", "From:"))]
            head_bytes = ("\n".join(headers) + "\n").encode("utf-8")
            head_bytes += f"From: {name} <renee@example.fr>\nSubject: {subject}\n".encode(charset)
            body_bytes = self._text_part_body(text, ascii_text, eight_bit=False)
            ctype = "Content-Type: text/plain; charset=utf-8\n" + self._cte_header(ascii_text, eight_bit=False)
            return (head_bytes + ctype.encode("ascii") + b"\n" + body_bytes).replace(b"\n", b"\r\n")

        if kind == "broken_boundary":
            declared, used = boundary, boundary + "_x"
            html = self._html(parts)
            mime_body = (
                f"This is a multi-part message in MIME format.\n\n--{used}\n"
                f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{text}\n"
                f"--{used}\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{html}\n"
            )
            mime_head = "\n".join(headers) + f'\nContent-Type: multipart/alternative; boundary="{declared}"\n\n'
            return (mime_head + mime_body).encode("utf-8").replace(b"\n", b"\r\n")

        shaped_like_alternative = kind in ("no_date", "no_from", "no_message_id", "bare_lf") and rng.random() < 0.5
        if kind == "alternative" or shaped_like_alternative:
            message = self._alternative(headers, text, ascii_text, parts, boundary)
        elif kind == "attachment":
            message = self._with_attachments(headers, text, ascii_text, parts, boundary, n)
        else:
            eight_bit = kind == "8bit"
            message = (
                ("\n".join(headers) + "\nContent-Type: text/plain; charset=utf-8; format=flowed\n").encode("utf-8")
                + self._cte_header(ascii_text, eight_bit=eight_bit).encode("ascii")
                + b"\n"
                + self._text_part_body(text, ascii_text, eight_bit=eight_bit)
            )

        if kind == "bare_lf":
            return message
        message = message.replace(b"\n", b"\r\n")
        if kind == "nul_bytes":
            header_end = message.find(b"\r\n\r\n") + 4
            payload = bytearray(message[header_end:])
            for _ in range(rng.randint(1, 4)):
                payload.insert(rng.randrange(len(payload)), 0)
            message = message[:header_end] + bytes(payload)
        return message

    @staticmethod
    def _cte_header(ascii_text: bool, *, eight_bit: bool) -> str:
        if eight_bit:
            return "Content-Transfer-Encoding: 8bit\n"
        return "Content-Transfer-Encoding: 7bit\n" if ascii_text else "Content-Transfer-Encoding: quoted-printable\n"

    @staticmethod
    def _text_part_body(text: str, ascii_text: bool, *, eight_bit: bool) -> bytes:
        data = text.encode("utf-8")
        if eight_bit or ascii_text:
            return data
        return binascii.b2a_qp(data, istext=True)

    def _html(self, parts: list[_Paragraph]) -> str:
        head = self.pools.html_heads[self.rng.choices((0, 1, 2), weights=(50, 35, 15))[0]]
        return head + "\n".join(p.html for p in parts) + "\n" + _HTML_TAIL

    def _alternative(
        self, headers: list[str], text: str, ascii_text: bool, parts: list[_Paragraph], boundary: str
    ) -> bytes:
        html = self._html(parts).encode("utf-8")
        if self.rng.random() < 0.2:
            html_cte, html_body = "base64", base64.encodebytes(html)
        else:
            html_cte, html_body = "quoted-printable", binascii.b2a_qp(html, istext=True)
        return b"".join(
            (
                ("\n".join(headers) + f'\nContent-Type: multipart/alternative; boundary="{boundary}"\n\n').encode(
                    "utf-8"
                ),
                f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n".encode("ascii"),
                self._cte_header(ascii_text, eight_bit=False).encode("ascii"),
                b"\n",
                self._text_part_body(text, ascii_text, eight_bit=False),
                (
                    f"\n--{boundary}\nContent-Type: text/html; charset=utf-8\n"
                    f"Content-Transfer-Encoding: {html_cte}\n\n"
                ).encode("ascii"),
                html_body,
                f"\n--{boundary}--\n".encode("ascii"),
            )
        )

    def _with_attachments(
        self, headers: list[str], text: str, ascii_text: bool, parts: list[_Paragraph], boundary: str, n: int
    ) -> bytes:
        rng = self.rng
        pools = self.pools
        inner = f"{boundary}_alt"
        chunks = [
            ("\n".join(headers) + f'\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n').encode("utf-8"),
            f"This is a multi-part message in MIME format.\n\n--{boundary}\n".encode("ascii"),
        ]
        if rng.random() < 0.5:
            chunks.append(self._alternative([], text, ascii_text, parts, inner).lstrip(b"\n"))
        else:
            chunks.append(
                b"Content-Type: text/plain; charset=utf-8\n"
                + self._cte_header(ascii_text, eight_bit=False).encode("ascii")
                + b"\n"
            )
            chunks.append(self._text_part_body(text, ascii_text, eight_bit=False))
        low = math.log(min(_MIN_ATTACHMENT_BYTES, self.max_attachment_bytes))
        high = math.log(self.max_attachment_bytes)
        for _ in range(rng.choices((1, 2, 3), weights=(85, 10, 5))[0]):
            size = int(math.exp(rng.uniform(low, high)))
            lines = max(1, min(size // _B64_LINE_BYTES, pools.b64_line_count // 2))
            start = rng.randrange(pools.b64_line_count - lines + 1)
            payload = pools.b64_lines[start * 77 : (start + lines) * 77]
            ctype, name_template = rng.choice(_ATTACHMENT_TYPES)
            filename = name_template.format(n=n)
            disposition = _content_disposition_filename(filename)
            name_param = f'name="{filename}"' if filename.isascii() else f'name="{_encoded_words(filename, "B")}"'
            chunks.append(
                (
                    f"\n--{boundary}\nContent-Type: {ctype};\n {name_param}\n"
                    f"Content-Disposition: attachment;\n {disposition}\n"
                    "Content-Transfer-Encoding: base64\n\n"
                ).encode("utf-8")
            )
            chunks.append(payload)
        chunks.append(f"\n--{boundary}--\n".encode("ascii"))
        return b"".join(chunks)

    def _flags(self, folder: str) -> tuple[str, ...]:
        rng = self.rng
        if folder == "Drafts":
            return ("\\Draft", "\\Seen") if rng.random() < 0.5 else ("\\Draft",)
        if folder == "Sent":
            return ("\\Seen",)
        flags: list[str] = []
        if rng.random() < 0.75:
            flags.append("\\Seen")
            if rng.random() < 0.12:
                flags.append("\\Answered")
        if rng.random() < 0.05:
            flags.append("\\Flagged")
        if rng.random() < 0.02:
            flags.append("$Forwarded")
        return tuple(flags)


def generate_corpus(
    n: int,
    *,
    seed: int = 0,
    folders: Sequence[str] = ("INBOX", "Sent", "Archive", "Lists/Python"),
    malformed_ratio: float = 0.02,
    attachment_ratio: float = 0.05,
    max_attachment_bytes: int = 2_000_000,
) -> Iterator[SeedMessage]:
    """Yield `n` messages in chronological order; the same arguments give identical bytes.

    Messages in "Sent"/"Drafts" are from `OWNER_ADDRESS`, everything else is
    to it; folders named "Lists/..." get mailing-list headers. Malformed
    messages (share `malformed_ratio`) cycle through `MALFORMED_KINDS`.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    builder = _Builder(seed, folders, malformed_ratio, attachment_ratio, max_attachment_bytes)
    for _ in range(n):
        yield builder.next_message()


def _chain(n: int, seed: int, subject: str) -> list[tuple[bytes, datetime, bool]]:
    rng = random.Random(f"mailsync-chain-{seed}")
    people = [(_OWNER_NAME, "dana", "example.com"), *rng.sample(_PEOPLE[:18], 2)]
    when = datetime(2023, 5, 2, 9, 0, tzinfo=timezone.utc) + timedelta(hours=rng.randrange(24 * 90))
    ids: list[str] = []
    result: list[tuple[bytes, datetime, bool]] = []
    for i in range(n):
        sender = people[i % len(people)]
        recipient = people[(i + 1) % len(people)]
        message_id = f"<chain-{seed}-{i:04d}.{rng.getrandbits(32):08x}@{sender[2]}>"
        headers = [
            f"From: {_mailbox(sender, rng)}",
            f"To: {_mailbox(recipient, rng)}",
            f"Subject: {'Re: ' if i else ''}{_header_text(subject, rng)}",
            f"Date: {format_datetime(when)}",
            f"Message-ID: {message_id}",
        ]
        if ids:
            headers.append(f"In-Reply-To: {ids[-1]}")
            headers.append(_fold_ids("References", ids))
        body = f"Message {i + 1} of {n} in this thread.\n\n" + (f"> previous: {ids[-1]}\n" if ids else "")
        text = (
            "\n".join(headers)
            + "\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"
            + body
        )
        result.append((text.encode("utf-8").replace(b"\n", b"\r\n"), when, sender[1] == "dana"))
        ids.append(message_id)
        when += timedelta(minutes=rng.randint(5, 600))
    return result


def reply_chain(n: int, *, seed: int = 0, subject: str = "Quarterly planning") -> list[bytes]:
    """`n` messages where message i replies to i-1 (In-Reply-To plus the full References)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return [raw for raw, _, _ in _chain(n, seed, subject)]


def generate_sample_mailbox(seed: int = 0) -> list[SeedMessage]:
    """About 300 messages over INBOX, Sent, Drafts, Archive and Lists/Python, for `make demo`."""
    messages = list(
        generate_corpus(
            288,
            seed=seed,
            folders=("INBOX", "Sent", "Drafts", "Archive", "Lists/Python"),
            max_attachment_bytes=400_000,
        )
    )
    for raw, when, from_owner in _chain(12, seed, "Offsite agenda — Zürich"):
        messages.append(
            SeedMessage(
                raw=raw,
                internaldate=when,
                folder="Sent" if from_owner else "INBOX",
                flags=("\\Seen",),
                kind="plain",
            )
        )
    return messages
