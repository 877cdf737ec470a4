"""Unit tests of the pure pieces: header parsing, thread grouping, IMAP response parsing, crypto."""

from __future__ import annotations

import itertools
import random

import pytest

from mail.parse import parse_message
from mail.threads import group_page
from providers.imap.client import uid_set
from providers.imap.parse import parse_fetch, parse_list, parse_select
from store.crypto import CredentialBox, SecretKeyError, parse_key


def test_parse_encoded_words_addresses_and_refs() -> None:
    raw = (
        b"From: =?UTF-8?B?SsO8cmdlbg==?= <J@Ex.com>\r\nTo: a@b.c, \"X\" <Y@Z.w>\r\nCc: c@d.e\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <1@x>\r\nIn-Reply-To: <0@x>\r\n"
        b"References: <a@x> <0@x>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0100\r\n\r\nHello\r\n  world\r\n"
    )
    p = parse_message(raw)
    assert p.subject == "Grüße"
    assert (p.from_addr, p.from_name) == ("j@ex.com", "Jürgen")
    assert p.to_addrs == ["a@b.c", "y@z.w"] and p.cc_addrs == ["c@d.e"]
    assert p.message_id == "<1@x>" and p.in_reply_to == "<0@x>" and p.references == ["<a@x>", "<0@x>"]
    assert p.snippet == "Hello world"
    assert p.parse_error is None
    assert p.thread_refs() == ["<a@x>", "<0@x>", "<1@x>"]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"no separator at all\x00", "no header/body separator"),
        (b"Subject: x\n\nbare LF body\n", "no From"),
        (b"From: a@b\r\nSubject: \xff\xfe 8-bit\r\nDate: garbage\r\n\r\nbody", None),
        (b"From: a@b\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\nno parts", "Boundary"),
    ],
)
def test_malformed_messages_never_raise(raw: bytes, reason: str | None) -> None:
    p = parse_message(raw)
    assert p.size == len(raw)
    if reason:
        assert p.parse_error and reason in p.parse_error
    for text in (p.subject, p.snippet, p.from_name, p.parse_error):
        assert text is None or "\x00" not in text


def test_message_without_ids_gets_its_own_thread_key() -> None:
    p = parse_message(b"From: a@b\r\n\r\nx")
    assert p.thread_refs() == ["sha256:" + p.sha256.hex()]


def _partition(refs_by_message: dict[int, list[str]], order: list[int], page: int) -> set[frozenset[int]]:
    """Replays group_page over pages in the given arrival order, like the store does, and returns threads."""
    known: dict[str, int] = {}
    members: dict[int, set[int]] = {}
    next_id = itertools.count(1)
    for i in range(0, len(order), page):
        batch = {k: refs_by_message[k] for k in order[i : i + page]}
        for g in group_page(batch, known):
            target = g.existing_threads[0] if g.existing_threads else next(next_id)
            for other in g.existing_threads[1:]:
                members.setdefault(target, set()).update(members.pop(other, set()))
                for r, t in list(known.items()):
                    if t == other:
                        known[r] = target
            members.setdefault(target, set()).update(g.message_keys)
            for r in g.refs:
                known[r] = target
    return {frozenset(m) for m in members.values()}


def test_threads_are_independent_of_arrival_order() -> None:
    chain = {i: [f"<{j}@x>" for j in range(i + 1)] if i % 2 else [f"<{i}@x>", f"<{i - 1}@x>"] if i else ["<0@x>"]
             for i in range(8)}
    chain.update({100: ["<other@x>"], 101: ["<other@x>", "<reply@x>"]})
    expected = {frozenset(range(8)), frozenset({100, 101})}
    rng = random.Random(7)
    for _ in range(50):
        order = list(chain)
        rng.shuffle(order)
        assert _partition(chain, order, page=rng.choice([1, 2, 3, 10])) == expected


def test_imap_fetch_parsing_handles_attributes_after_the_literal() -> None:
    lines = [
        b'1 FETCH (UID 7 RFC822.SIZE 5 BODY[] {5}', bytearray(b"hello"), b' FLAGS (\\Seen \\Recent) INTERNALDATE "24-Nov-2026 16:24:52 +0100")',
        b"2 FETCH (FLAGS (\\Seen))",
        b'3 FETCH (UID 9 FLAGS () INTERNALDATE "01-Jan-2020 00:00:00 +0000" BODY[] {0}', bytearray(b""), b")",
        b"Fetch completed.",
    ]
    msgs = parse_fetch(lines)
    assert [(m.uid, m.raw, m.flags) for m in msgs] == [(7, b"hello", ["\\Seen"]), (9, b"", [])]
    assert msgs[0].internaldate is not None and msgs[0].internaldate.utcoffset().total_seconds() == 3600


def test_imap_list_and_select_parsing() -> None:
    folders = parse_list([
        b'(\\HasNoChildren \\Sent) "/" Sent', b'(\\HasChildren) "/" "Lists"', b'(\\Noselect) "/" "Lists/x y"',
        b'(\\HasNoChildren) "/" INBOX', b'(\\HasNoChildren) "/" {5}', b"Caf\xc3\xa9", b"List completed.",
    ])
    assert [(f.name, f.role, f.selectable) for f in folders] == [
        ("Sent", "sent", True), ("Lists", None, True), ("Lists/x y", None, False), ("INBOX", "inbox", True),
        ("Café", None, True),
    ]
    st = parse_select([b"3 EXISTS", b"OK [UIDVALIDITY 42] x", b"OK [UIDNEXT 9] y", b"OK [HIGHESTMODSEQ 5] z", b"done"])
    assert (st.uidvalidity, st.uidnext, st.messages, st.highestmodseq) == (42, 9, 3, 5)


def test_uid_set_is_compact() -> None:
    assert uid_set([5, 1, 2, 3, 9, 12, 13, 14]) == "1:3,5,9,12:14"
    assert uid_set([4]) == "4"


def test_credential_box_binds_account_and_detects_wrong_key() -> None:
    box = CredentialBox(b"a" * 32)
    blob = box.seal(b"hunter2", "acc_1")
    assert b"hunter2" not in blob
    assert box.open(blob, "acc_1") == b"hunter2"
    with pytest.raises(SecretKeyError):
        box.open(blob, "acc_2")
    with pytest.raises(SecretKeyError):
        CredentialBox(b"b" * 32).open(blob, "acc_1")
    with pytest.raises(SecretKeyError):
        parse_key("c2hvcnQ=")


def test_snippet_walks_nested_parts_whose_boundary_extends_the_outer_one() -> None:
    raw = (
        b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"=_b\"\r\n\r\npreamble\r\n"
        b"--=_b\r\nContent-Type: multipart/alternative; boundary=\"=_b_alt\"\r\n\r\n"
        b"--=_b_alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html</p>\r\n"
        b"--=_b_alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"ni=C3=B1o\r\n  caf=\r\n=C3=A9\r\n"
        b"--=_b_alt--\r\n"
        b"--=_b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
        b"--=_b--\r\n"
    )
    p = parse_message(raw)
    assert p.snippet == "niño café"
    assert p.parse_error is None or "Boundary" not in p.parse_error


def test_snippet_decodes_base64_text_and_falls_back_to_html() -> None:
    b64 = parse_message(
        b"From: a@b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"Q2Fm6SBvbGUh\r\n"
    )
    assert b64.snippet == "Café ole!"
    html = parse_message(
        b"From: a@b\nContent-Type: multipart/alternative; boundary=x\n\n--x\nContent-Type: text/html\n\n"
        b"<b>Only</b> html\n--x--\n"
    )
    assert html.snippet == "Only html"



def test_fetch_wait_data_counts_parentheses_as_aioimaplib_does() -> None:
    """providers.imap.wire's running count answers as aioimaplib's rescan, line after line."""
    import asyncio

    from aioimaplib import aioimaplib as lib

    from providers.imap import wire

    def rescan(cmd: lib.FetchCommand) -> bool:  # aioimaplib 2.0.3's FetchCommand.wait_data
        last_fetch_index = 0
        for index, line in enumerate(cmd._resp_lines):
            if isinstance(line, bytes) and cmd.FETCH_MESSAGE_DATA_RE.match(line):
                last_fetch_index = index
        return not lib.matched_parenthesis(
            b"".join(filter(lambda l: isinstance(l, bytes), cmd.response.lines[last_fetch_index:]))
        )

    pieces = [b"* 1 FETCH (UID 1 BODY[] {3}", b"* 22 FETCH (FLAGS (\\Seen) UID 2)", b" UID 7)", b")", b"(",
              b"* 3 FETCH (", b"x (y) z", b"OK done", b"", b"* 4 FETCH ((", b"))", bytearray(b"lit(eral")]
    rng = random.Random(7)
    loop = asyncio.new_event_loop()
    try:
        for _ in range(300):
            theirs = lib.FetchCommand("A1", "1:*", "(BODY[])", loop=loop)
            ours = lib.FetchCommand("A1", "1:*", "(BODY[])", loop=loop)
            for _ in range(rng.randint(1, 25)):
                line = rng.choice(pieces)
                theirs._resp_lines.append(line)
                ours._resp_lines.append(line)
                assert wire._fetch_wait_data(ours) == rescan(theirs)
    finally:
        loop.close()


def test_reads_are_not_formatted_for_a_disabled_debug_log() -> None:
    """aioimaplib formats every socket read for its debug log; with debug off, ours does not."""
    import asyncio

    from aioimaplib import aioimaplib as lib

    import providers.imap.client  # noqa: F401  (installs providers.imap.wire)

    class Loud(bytes):
        def __str__(self) -> str:
            raise AssertionError("a read was formatted")

        __repr__ = __str__

    loop = asyncio.new_event_loop()
    try:
        proto = lib.IMAP4ClientProtocol(loop, None)
        proto.state = lib.AUTH
        level = lib.log.level
        lib.log.setLevel("INFO")
        try:
            proto.data_received(Loud(b"* 3 EXISTS\r\n"))
        finally:
            lib.log.setLevel(level)
    finally:
        loop.close()


def test_command_inactivity_timeout_moves_with_data_and_still_fires() -> None:
    """providers.imap.wire keeps one timer per command and moves its deadline on each piece of data:
    the command still times out `timeout` seconds after the last data, and not before."""
    import asyncio

    from aioimaplib import aioimaplib as lib

    import providers.imap.client  # noqa: F401  (installs providers.imap.wire)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        cmd = lib.Command("NOOP", "A1", loop=loop, timeout=0.2)
        for _ in range(4):  # data every 0.1 s for 0.4 s: twice the timeout, no timeout
            await asyncio.sleep(0.1)
            cmd.append_to_resp(b"* 1 EXISTS")
        assert not cmd._event.is_set()
        last = loop.time()
        with pytest.raises(lib.CommandTimeout):
            await cmd.wait()
        assert 0.18 <= loop.time() - last < 0.5
        done = lib.Command("NOOP", "A2", loop=loop, timeout=0.1)
        done.close(b"A2 OK done", "OK")
        await asyncio.sleep(0.2)  # a closed command leaves no timer behind
        assert done._exception is None and done._timer.cancelled()

    asyncio.run(scenario())


def test_internaldate_parsed_as_strptime_does() -> None:
    from datetime import datetime

    from providers.imap.parse import parse_internaldate

    def strptime(text: bytes) -> datetime | None:
        try:
            return datetime.strptime(text.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
        except ValueError:
            return None

    rng = random.Random(5)
    cases = [b"24-Nov-2026 21:26:16 +0100", b" 4-Nov-2026 01:02:03 -0530", b"31-Feb-2026 01:02:03 +0000",
             b"4-Nov-2026 01:02:03 Z", b"04-Nov-2026 01:02:03 +0099", b"04-Nov-2026 01:02:03 +2400", b"garbage", b""]
    cases += [
        f"{rng.randint(0, 32)}-{rng.choice(['Jan', 'feb', 'DEC', 'Foo'])}-{rng.randint(0, 9999):04d} "
        f"{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:{rng.randint(0, 61):02d} "
        f"{rng.choice('+-')}{rng.randint(0, 25):02d}{rng.randint(0, 99):02d}".encode()
        for _ in range(3000)
    ]
    for text in cases:
        ours, theirs = parse_internaldate(text), strptime(text)
        assert ours == theirs and (ours is None or ours.utcoffset() == theirs.utcoffset()), text  # type: ignore[union-attr]


@pytest.mark.parametrize("block", [
    b"Content-Type: text/plain; CHARSET=\"ISO-8859-1\"\r\n",
    b"Content-Type: Multipart/Mixed; boundary*=''%3Dabc\r\n",
    b"Content-Type: multipart/mixed;\r\n boundary=\"a;b\"; charset=utf-8\r\n",
    b"Content-Type: text\r\n",
    b"Content-Type: text/html; charset=x-unknown\r\nContent-Type: text/plain\r\n",
    b"X-Other: 1\r\n",
    b"Content-Type: text/plain; charset=\"caf\xc3\xa9\"\r\n",  # 8-bit: the feed parser's Message
])
def test_content_type_answers_are_compat32s(block: bytes) -> None:
    """The cached Content-Type answers equal what compat32's Message methods say for the same part."""
    from email.parser import BytesParser
    from email.policy import compat32

    from mail.parse import _content_type, _split_head

    head, _ = _split_head(block + b"\r\nbody")
    reference = BytesParser(policy=compat32).parsebytes(block, headersonly=True)
    for _ in range(2):  # the second answer comes from the cache
        info = _content_type(head)
        assert (info.ctype, info.maintype, info.boundary, info.charset) == (
            reference.get_content_type(), reference.get_content_maintype(), reference.get_param("boundary"),
            reference.get_content_charset(),
        )


@pytest.mark.parametrize("block", [
    b"Subject: a\rb\r\nFrom: x@y\r\n", b"Subject: a\nb\r\nFrom: x@y\r\n", b" Subject: a\r\nFrom: x@y\r\n",
    b"From x@y\r\nSubject: a\r\n", b"Subject: a\r\nFrom: x@y",
])
def test_header_blocks_the_fast_split_cannot_read_go_to_the_feed_parser(block: bytes) -> None:
    from mail.parse import _simple_fields

    assert _simple_fields(block) is None
    assert _simple_fields(b"Subject: a\r\n  b\r\nFrom:x@y\r\nTo: \r\n") == [
        ("Subject", "a\r\n  b"), ("From", "x@y"), ("To", ""),
    ]


def _pristine_aioimaplib():  # type: ignore[no-untyped-def]
    """A second copy of aioimaplib's module, loaded from its file: without providers.imap.wire's patches."""
    import importlib.util

    from aioimaplib import aioimaplib as lib

    spec = importlib.util.spec_from_file_location("_aioimaplib_pristine", lib.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _responses(lib, name: str, args: tuple[str, ...], reads: list[bytes]) -> list[object]:  # type: ignore[no-untyped-def]
    """Run one command on a protocol object fed `reads` as socket reads; the response lines it ends with."""
    import asyncio

    class Transport:
        def write(self, data: bytes) -> None:
            pass

    loop = asyncio.new_event_loop()
    try:
        proto = lib.IMAP4ClientProtocol(loop, None)
        proto.transport, proto.state = Transport(), lib.SELECTED
        cmd = lib.FetchCommand("A1", *args, loop=loop) if name == "FETCH" else lib.Command(name, "A1", *args, loop=loop)
        task = loop.create_task(proto.execute(cmd))
        loop.run_until_complete(asyncio.sleep(0))
        for data in reads:
            proto.data_received(data)
        response = loop.run_until_complete(asyncio.wait_for(task, 1))
        return [bytes(line) for line in response.lines]
    finally:
        loop.close()


@pytest.mark.parametrize("name, args, answer", [
    ("STATUS", ("x", "(MESSAGES UIDNEXT)"), b"* STATUS {5}\r\nINBOX (MESSAGES 3 UIDNEXT 4)\r\nA1 OK done\r\n"),
    ("FETCH", ("1:2", "(UID BODY[])"),
     b"* 1 FETCH (UID 1 BODY[] {4}\r\nab\r\n)\r\n* 2 FETCH (BODY[] {3}\r\nxyz UID 2 FLAGS (\\Seen))\r\nA1 OK done\r\n"),
])
def test_patched_reader_answers_as_aioimaplib_at_every_read_boundary(name: str, args: tuple[str, ...], answer: bytes) -> None:
    """providers.imap.wire replaces aioimaplib's response splitter: for every way one answer can be cut
    into two socket reads, both give the command the same response lines."""
    from aioimaplib import aioimaplib as patched

    import providers.imap.client  # noqa: F401  (installs providers.imap.wire)

    pristine = _pristine_aioimaplib()
    for cut in range(1, len(answer)):
        reads = [answer[:cut], answer[cut:]]
        assert _responses(patched, name, args, reads) == _responses(pristine, name, args, reads), cut


def test_a_malformed_parameter_of_a_part_nobody_reads_does_not_break_the_parse() -> None:
    """compat32 raises TypeError decoding `name*=a; name*0=b`: only a part whose parameters are read
    may fail (the image's are not: it is neither text nor multipart)."""
    p = parse_message(
        b"From: a@b\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: image/png; name*=a; name*0=b\r\n\r\nPNG\r\n"
        b"--x\r\nContent-Type: text/plain\r\n\r\nhello world\r\n--x--\r\n"
    )
    assert p.snippet == "hello world" and p.parse_error is None
