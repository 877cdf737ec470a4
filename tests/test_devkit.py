"""Tests for devkit: the private Dovecot, the corpus generator and the chaos proxy.

Everything else builds on these helpers, so this file checks the properties
other tests rely on: seeded bytes come back exactly (modulo Dovecot's
documented LF/NUL normalisation), flags and folders survive seeding, the
capability switch works, and the proxy cuts exactly where asked.
"""

from __future__ import annotations

import collections
import email
import email.policy
import hashlib
import imaplib
import os
import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from devkit.chaos_proxy import ChaosProxy
from devkit.corpus import (
    MALFORMED_KINDS,
    NORMAL_KINDS,
    SeedMessage,
    generate_corpus,
    generate_sample_mailbox,
    reply_chain,
)
from devkit.dovecot import (
    DovecotNotInstalled,
    DovecotServer,
    find_dovecot,
    imap_wire_bytes,
    start_dovecot,
)


def _dovecot_unavailable() -> str | None:
    try:
        find_dovecot()
    except DovecotNotInstalled as exc:
        return str(exc)
    if os.geteuid() != 0:
        return "devkit.dovecot needs root"
    return None


needs_dovecot = pytest.mark.skipif(_dovecot_unavailable() is not None, reason=str(_dovecot_unavailable()))

FOLDERS = ("INBOX", "Sent", "Archive", "Lists/Python")
_LIST_LINE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _login(server_or_proxy: DovecotServer | ChaosProxy, user: str, password: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4(server_or_proxy.host, server_or_proxy.port, timeout=10)
    client.login(user, password)
    return client


def _capabilities_after_login(client: imaplib.IMAP4) -> set[str]:
    # imaplib keeps the pre-login list; Dovecot announces far more once logged in.
    typ, data = client.capability()
    assert typ == "OK"
    return set(data[-1].decode().split())


def _list_folders(client: imaplib.IMAP4) -> dict[str, set[str]]:
    typ, lines = client.list()
    assert typ == "OK"
    result: dict[str, set[str]] = {}
    for line in lines:
        assert isinstance(line, bytes)
        match = _LIST_LINE.match(line)
        assert match, line
        name = match["name"].decode().strip('"')
        result[name] = set(match["attrs"].decode().split())
    return result


def _fetch_all(client: imaplib.IMAP4, folder: str) -> list[tuple[bytes, frozenset[str], int]]:
    """(BODY[], FLAGS without \\Recent, INTERNALDATE as epoch) for every message in `folder`."""
    typ, _ = client.select(f'"{folder}"', readonly=True)
    assert typ == "OK"
    typ, data = client.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
    assert typ == "OK"
    out = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        header, body = item
        flags_match = _FLAGS.search(header)
        assert flags_match, header
        flags = frozenset(flags_match.group(1).decode().split()) - {"\\Recent"}
        internal = imaplib.Internaldate2tuple(header)
        assert internal is not None, header
        out.append((body, flags, int(time.mktime(internal))))
    return out


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotServer]:
    server = start_dovecot()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def seeded(dovecot: DovecotServer) -> tuple[DovecotServer, list[SeedMessage]]:
    messages = list(
        generate_corpus(
            200, seed=11, folders=FOLDERS, malformed_ratio=0.1, attachment_ratio=0.1, max_attachment_bytes=60_000
        )
    )
    messages.append(
        SeedMessage(
            raw=b"Subject: keywords\r\nMessage-ID: <kw@example.com>\r\n\r\nk\r\n",
            internaldate=datetime(2022, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
            flags=("\\Flagged", "$Forwarded", "Custom_Label"),
            kind="plain",
        )
    )
    dovecot.add_user("alice", "wonderland")
    assert dovecot.seed("alice", messages) == len(messages)
    return dovecot, messages


# --- Dovecot -----------------------------------------------------------------


def test_install_hint_is_exact() -> None:
    assert "install with `apt-get install -y dovecot-imapd` (as root)" in str(DovecotNotInstalled())


@needs_dovecot
def test_find_dovecot_returns_executable() -> None:
    path = find_dovecot()
    assert os.access(path, os.X_OK)


@needs_dovecot
def test_seeded_folders_listed_with_special_use(seeded: tuple[DovecotServer, list[SeedMessage]]) -> None:
    server, _ = seeded
    client = _login(server, "alice", "wonderland")
    try:
        folders = _list_folders(client)
        typ, subscribed = client.lsub()
        assert typ == "OK"
    finally:
        client.logout()
    for name in FOLDERS:
        assert name in folders
    assert "\\Sent" in folders["Sent"]
    assert "\\Archive" in folders["Archive"]
    # auto=no: special-use folders that were never created stay invisible.
    assert "Trash" not in folders and "Drafts" not in folders
    assert any(b"Lists/Python" in line for line in subscribed if isinstance(line, bytes))


@needs_dovecot
def test_seeded_messages_come_back_byte_identical(seeded: tuple[DovecotServer, list[SeedMessage]]) -> None:
    server, messages = seeded
    assert {m.kind for m in messages} >= set(MALFORMED_KINDS)
    client = _login(server, "alice", "wonderland")
    try:
        for folder in FOLDERS:
            expected = [m for m in messages if m.folder == folder]
            fetched = _fetch_all(client, folder)
            assert collections.Counter(_sha(body) for body, _, _ in fetched) == collections.Counter(
                _sha(imap_wire_bytes(m.raw)) for m in expected
            ), folder
            assert collections.Counter(
                (_sha(body), flags, date) for body, flags, date in fetched
            ) == collections.Counter(
                (_sha(imap_wire_bytes(m.raw)), frozenset(m.flags), int(m.internaldate.timestamp())) for m in expected
            ), folder
    finally:
        client.logout()
    # Dovecot only rewrites bare LF and NUL; everything well-formed is served as stored.
    for message in messages:
        if message.kind not in ("bare_lf", "nul_bytes"):
            assert imap_wire_bytes(message.raw) == message.raw, message.kind


@needs_dovecot
def test_keywords_are_stored(seeded: tuple[DovecotServer, list[SeedMessage]]) -> None:
    server, _ = seeded
    client = _login(server, "alice", "wonderland")
    try:
        client.select("INBOX", readonly=True)
        typ, ids = client.search(None, "HEADER", "Message-ID", "<kw@example.com>")
        assert typ == "OK" and ids[0]
        typ, data = client.fetch(ids[0].decode(), "(FLAGS)")
    finally:
        client.logout()
    flags = set(_FLAGS.search(data[0]).group(1).decode().split())  # type: ignore[arg-type, union-attr]
    assert {"\\Flagged", "$Forwarded", "Custom_Label"} <= flags


@needs_dovecot
def test_seeding_while_selected_is_noticed(dovecot: DovecotServer) -> None:
    dovecot.add_user("dave", "pw")
    dovecot.seed("dave", generate_corpus(4, seed=98, folders=("INBOX",)))
    client = _login(dovecot, "dave", "pw")
    try:
        typ, count = client.select("INBOX")
        assert int(count[0]) == 4
        dovecot.seed("dave", generate_corpus(3, seed=99, folders=("INBOX",)))
        typ, _ = client.noop()
        assert typ == "OK"
        assert client.untagged_responses["EXISTS"][-1] == b"7"
        # A folder seeded now shows up in this already-open session too.
        dovecot.seed("dave", generate_corpus(2, seed=97, folders=("Projects/Zürich",)))
        assert "Projects/Z&APw-rich" in _list_folders(client)
        typ, status = client.status('"Projects/Z&APw-rich"', "(MESSAGES)")
        assert typ == "OK" and b"MESSAGES 2" in status[0]
    finally:
        client.logout()


@needs_dovecot
def test_users_and_passwords_change_while_running(dovecot: DovecotServer) -> None:
    dovecot.add_user("bob", "first")
    _login(dovecot, "BOB", "first").logout()  # usernames are case-insensitive
    started = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error):
        _login(dovecot, "bob", "wrong")
    with pytest.raises(imaplib.IMAP4.error):
        _login(dovecot, "bob", "wrong")
    assert time.monotonic() - started < 1.5, "failed logins should not be delayed"
    dovecot.set_password("bob", "secnd")  # same length: detected by mtime, not size
    with pytest.raises(imaplib.IMAP4.error):
        _login(dovecot, "bob", "first")
    _login(dovecot, "bob", "secnd").logout()
    with pytest.raises(ValueError):
        dovecot.add_user("bob", "again")


@needs_dovecot
def test_condstore_switch_and_parallel_servers(dovecot: DovecotServer) -> None:
    dovecot.add_user("carol", "pw")
    client = _login(dovecot, "carol", "pw")
    try:
        default_caps = _capabilities_after_login(client)
    finally:
        client.logout()
    assert {"IDLE", "CONDSTORE", "QRESYNC", "MOVE", "UIDPLUS", "SPECIAL-USE"} <= default_caps

    plain = start_dovecot(condstore=False)
    try:
        assert plain.port != dovecot.port and plain.base_dir != dovecot.base_dir
        plain.add_user("carol", "pw")
        client = _login(plain, "carol", "pw")
        try:
            caps = _capabilities_after_login(client)
        finally:
            client.logout()
        assert "CONDSTORE" not in caps and "QRESYNC" not in caps
        assert {"IDLE", "MOVE", "UIDPLUS", "SPECIAL-USE", "LITERAL+"} <= caps
        base_dir = plain.base_dir
    finally:
        plain.stop()
    plain.stop()  # idempotent
    assert not plain.running
    assert not base_dir.exists()
    with pytest.raises(OSError):
        socket.create_connection((plain.host, plain.port), timeout=1).close()
    assert "starting up" in plain.log_text()
    # The first server is unaffected by the second one's shutdown.
    _login(dovecot, "carol", "pw").logout()


# --- chaos proxy ---------------------------------------------------------------


@needs_dovecot
def test_proxy_cuts_fetch_then_forwards(seeded: tuple[DovecotServer, list[SeedMessage]]) -> None:
    server, messages = seeded
    inbox_count = sum(1 for m in messages if m.folder == "INBOX")
    with ChaosProxy(server.host, server.port) as proxy:
        client = _login(proxy, "alice", "wonderland")
        client.select("INBOX", readonly=True)
        proxy.cut_after_bytes(20_000)
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            client.fetch("1:*", "(BODY.PEEK[])")
        client.shutdown()
        assert proxy.cuts_done == 1

        client = _login(proxy, "alice", "wonderland")
        try:
            client.select("INBOX", readonly=True)
            typ, data = client.fetch("1:*", "(BODY.PEEK[])")
            assert typ == "OK"
            assert sum(isinstance(item, tuple) for item in data) == inbox_count
        finally:
            client.logout()
        assert proxy.connections == 2 and proxy.cuts_done == 1

        # The client receives exactly n bytes, then a reset.
        proxy.cut_after_bytes(1000)
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            sock.sendall(b"a LOGIN alice wonderland\r\nb SELECT INBOX\r\nc FETCH 1:* BODY.PEEK[]\r\n")
            received = 0
            with pytest.raises(ConnectionResetError):
                while chunk := sock.recv(65536):
                    received += len(chunk)
        assert received == 1000 and proxy.cuts_done == 2

        # drop_connections() resets whatever is open, e.g. an idle session.
        idle = _login(proxy, "alice", "wonderland")
        assert proxy.drop_connections() >= 1
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            idle.noop()
        idle.shutdown()
    assert proxy.active == 0


# --- corpus ----------------------------------------------------------------------


def test_corpus_is_deterministic() -> None:
    first = [_sha(m.raw) for m in generate_corpus(300, seed=5)]
    second = [_sha(m.raw) for m in generate_corpus(300, seed=5)]
    other = [_sha(m.raw) for m in generate_corpus(300, seed=6)]
    assert first == second
    assert first != other
    assert len(set(first)) == len(first)


def _header_block(raw: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        if separator in raw:
            return raw[: raw.index(separator)]
    return raw


def test_corpus_contains_every_malformed_kind() -> None:
    messages = list(generate_corpus(400, seed=1, malformed_ratio=0.1))
    by_kind: dict[str, list[bytes]] = collections.defaultdict(list)
    for message in messages:
        by_kind[message.kind].append(message.raw)
    assert set(by_kind) >= set(MALFORMED_KINDS) | set(NORMAL_KINDS)
    for raw in by_kind["no_date"]:
        assert not re.search(rb"(?m)^Date:", _header_block(raw))
    for raw in by_kind["no_from"]:
        assert not re.search(rb"(?m)^From:", _header_block(raw))
    for raw in by_kind["no_message_id"]:
        assert not re.search(rb"(?m)^Message-ID:", _header_block(raw))
    for raw in by_kind["nul_bytes"]:
        assert b"\x00" in raw
    for raw in by_kind["bare_lf"]:
        assert b"\r\n" not in raw and b"\n" in raw
    for raw in by_kind["header_only"]:
        assert b"\r\n\r\n" not in raw and raw.endswith(b"\r\n")
    for raw in by_kind["raw_8bit_header"]:
        assert not _header_block(raw).isascii()
    for raw in by_kind["broken_boundary"]:
        declared = re.search(rb'boundary="([^"]+)"', raw).group(1)  # type: ignore[union-attr]
        assert b"--" + declared + b"\r\n" not in raw and b"--" + declared + b"--" not in raw
    for kind in NORMAL_KINDS:
        for raw in by_kind[kind]:
            header = _header_block(raw)
            assert header.isascii() and b"\x00" not in raw
            assert re.sub(rb"\r\n", b"", raw).count(b"\n") == 0, "normal messages use CRLF only"
            for name in (rb"Date:", rb"From:", rb"Message-ID:"):
                assert re.search(rb"(?m)^" + name, header)


def test_corpus_looks_like_real_mail() -> None:
    messages = list(generate_corpus(1500, seed=2))
    raws = [m.raw for m in messages]
    assert any(b"=?UTF-8?B?" in r for r in raws) and any(b"=?UTF-8?Q?" in r for r in raws)
    assert any(b"multipart/alternative" in r for r in raws)
    assert any(b"Content-Transfer-Encoding: 8bit" in r for r in raws)
    assert any(b"Content-Disposition: attachment" in r for r in raws)
    assert {m.folder for m in messages} == set(FOLDERS)

    # Threads reach across folders.
    folder_of = {}
    for message in messages:
        match = re.search(rb"(?m)^Message-ID: (<[^>]+>)", message.raw)
        if match:
            folder_of[match.group(1)] = message.folder
    cross_folder = 0
    for message in messages:
        reply = re.search(rb"(?m)^In-Reply-To: (<[^>]+>)", message.raw)
        if reply and reply.group(1) in folder_of:
            cross_folder += folder_of[reply.group(1)] != message.folder
    assert cross_folder > 10

    parsed = email.message_from_bytes(
        next(m.raw for m in messages if m.kind == "alternative" and b"=?UTF-8?" in m.raw),
        policy=email.policy.default,
    )
    assert not (str(parsed["From"]) + str(parsed["To"]) + str(parsed["Subject"])).isascii()
    assert parsed.get_body(("html",)) is not None and parsed.get_body(("plain",)) is not None

    sizes = [len(r) for r in raws]
    assert 5_000 < sum(sizes) / len(sizes) < 60_000


def test_reply_chain_links_every_ancestor() -> None:
    chain = reply_chain(6, seed=3)
    assert chain == reply_chain(6, seed=3)
    ids: list[str] = []
    for index, raw in enumerate(chain):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        if index == 0:
            assert message["In-Reply-To"] is None and message["References"] is None
        else:
            assert message["In-Reply-To"] == ids[-1]
            assert message["References"].split() == ids
            assert str(message["Subject"]).startswith("Re: ")
        ids.append(message["Message-ID"])
    assert len(set(ids)) == 6


def test_sample_mailbox() -> None:
    sample = generate_sample_mailbox()
    assert 250 <= len(sample) <= 350
    assert len({m.folder for m in sample}) >= 4
    assert [_sha(m.raw) for m in sample] == [_sha(m.raw) for m in generate_sample_mailbox()]
