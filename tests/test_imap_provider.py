"""The IMAP provider's incremental-sync operations against a real Dovecot.

STATUS probes, CONDSTORE/QRESYNC change queries (RFC 7162), plain flag ranges for servers without
CONDSTORE, and IDLE (RFC 2177) with its NOOP-polling fallback. Another client, the stdlib's
imaplib, makes the changes a second mail program would make; a ChaosProxy cuts connections.
Only Dovecot is needed: no Temporal, no PostgreSQL.
"""

from __future__ import annotations

import asyncio
import imaplib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit.chaos_proxy import ChaosProxy
from devkit.dovecot import DovecotServer, start_dovecot
from providers.errors import FolderGone, NetworkError
from providers.imap.client import ImapSession
from providers.imap.parse import (
    MailboxEvents,
    change_lines,
    expand_uid_set,
    parse_changes,
    parse_status,
    view_was_stale,
)
from providers.imap.settings import ImapSettings


MESSAGE = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: test\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def plain_dovecot() -> Iterator[DovecotServer]:
    """A Dovecot that hides CONDSTORE and QRESYNC, like many smaller IMAP servers."""
    server = start_dovecot(Path(tempfile.mkdtemp(prefix="mailsync-test-plain-")), condstore=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chatty_dovecot() -> Iterator[DovecotServer]:
    """A Dovecot that sends IDLE keepalives (`* OK Still here`) every second instead of every 2 min."""
    server = start_dovecot(
        Path(tempfile.mkdtemp(prefix="mailsync-test-chatty-")), extra_config="imap_idle_notify_interval = 1 secs\n"
    )
    yield server
    server.stop()


@dataclass
class Mailbox:
    """A fresh IMAP user on some Dovecot, plus a second client ("another mail program") for it."""

    host: str
    port: int
    username: str
    password: str

    def other(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        conn.login(self.username, self.password)
        return conn

    def append(self, count: int = 1, flags: str | None = None, folder: str = "INBOX") -> None:
        conn = self.other()
        try:
            for _ in range(count):
                typ, _ = conn.append(folder, flags, None, MESSAGE)
                assert typ == "OK"
        finally:
            conn.logout()

    def store(self, uid: int, op: str, flags: str) -> None:
        conn = self.other()
        try:
            conn.select("INBOX")
            typ, _ = conn.uid("STORE", str(uid), op, flags)
            assert typ == "OK"
        finally:
            conn.logout()

    def expunge(self, *uids: int) -> None:
        conn = self.other()
        try:
            conn.select("INBOX")
            for uid in uids:
                conn.uid("STORE", str(uid), "+FLAGS", r"(\Deleted)")
            typ, _ = conn.expunge()
            assert typ == "OK"
        finally:
            conn.logout()

    def session(self, *, port: int | None = None) -> ImapSession:
        settings = ImapSettings(host=self.host, port=port or self.port, username=self.username, security="none")
        return ImapSession(settings, self.password, auth_timeout=5, timeout=5)


def _mailbox(server: DovecotServer) -> Mailbox:
    username = "p" + uuid.uuid4().hex[:10]
    server.add_user(username, "pw-" + username)
    return Mailbox(server.host, server.port, username, "pw-" + username)


@pytest.fixture
def mbox(dovecot: DovecotServer) -> Mailbox:
    return _mailbox(dovecot)


@pytest.fixture
def plain_mbox(plain_dovecot: DovecotServer) -> Mailbox:
    return _mailbox(plain_dovecot)


@pytest.fixture
async def qresync(mbox: Mailbox) -> AsyncIterator[ImapSession]:
    """A session with QRESYNC on, INBOX (5 messages) not yet selected."""
    mbox.append(5)
    async with mbox.session() as session:
        assert await session.enable_qresync()
        yield session


# Pure parsing -----------------------------------------------------------------------------------


def test_expand_uid_set() -> None:
    assert expand_uid_set("1:3,7") == [1, 2, 3, 7]
    assert expand_uid_set(b"9:7,2") == [2, 7, 8, 9]
    assert expand_uid_set("5") == [5]


def test_parse_changes_caps_cursor_below_unplaceable_fetch() -> None:
    # Without QRESYNC an unsolicited FETCH has no UID: its change cannot be placed, so the cursor
    # must stay below its MODSEQ and the next query reports it again.
    lines = [
        b"1 FETCH (UID 4 FLAGS (\\Seen \\Recent) MODSEQ (12))",
        b"2 FETCH (FLAGS (\\Flagged) MODSEQ (10))",
        b"VANISHED 8",  # ignored without QRESYNC
        b"[HIGHESTMODSEQ 15] Fetch completed",
    ]
    changes = parse_changes(lines, 5, qresync=False)
    assert [(c.uid, c.flags, c.modseq) for c in changes.changed] == [(4, ["\\Seen"], 12)]
    assert changes.vanished == [] and changes.highestmodseq == 9 and changes.partial
    # With QRESYNC the tagged HIGHESTMODSEQ counts, and a vanished UID is not also "changed".
    lines = [b"1 FETCH (UID 8 FLAGS (\\Deleted) MODSEQ (7))", b"VANISHED (EARLIER) 8:9", lines[-1]]
    changes = parse_changes(lines, 5, qresync=True)
    assert changes.changed == [] and changes.vanished == [8, 9] and changes.highestmodseq == 15
    assert not changes.partial


def test_view_was_stale() -> None:
    assert view_was_stale([b"1 FETCH (UID 1 FLAGS ())", b"3 EXPUNGE", b"done"])
    assert view_was_stale([b"1 FETCH (UID 1 FLAGS ())", b"2 FETCH (FLAGS (\\Seen))", b"done"])
    assert not view_was_stale([b"1 FETCH (UID 1 FLAGS ())", b"VANISHED 3", b"4 EXISTS", b"done"])


def test_parse_status_and_events() -> None:
    status = parse_status([b'STATUS "A (b)" (MESSAGES 2 UIDNEXT 9 UIDVALIDITY 77 HIGHESTMODSEQ 4)', b"done"])
    assert (status.messages, status.uidnext, status.uidvalidity, status.highestmodseq) == (2, 9, 77, 4)
    events = MailboxEvents(change_lines([b"OK Still here", b"3 EXISTS", b"1 RECENT", b"VANISHED 2"]))
    assert events.lines == ["3 EXISTS", "VANISHED 2"]
    assert events.exists == 3 and events.expunged and not events.flags_changed


# STATUS -----------------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_status_follows_appends_without_select(mbox: Mailbox) -> None:
    mbox.append(3)
    async with mbox.session() as session:
        assert session.has_condstore and session.has_qresync and session.has_idle
        first = await session.status("INBOX")
        assert session.selected is None
        assert (first.messages, first.uidnext) == (3, 4)
        assert first.highestmodseq is not None and first.uidvalidity > 0

        mbox.append(2)
        second = await session.status("INBOX")
        assert (second.messages, second.uidnext, second.uidvalidity) == (5, 6, first.uidvalidity)
        assert second.highestmodseq is not None and second.highestmodseq > first.highestmodseq

        # A flag change moves only HIGHESTMODSEQ: the probe still notices it.
        mbox.store(1, "+FLAGS", r"(\Flagged)")
        third = await session.status("INBOX")
        assert (third.messages, third.uidnext) == (5, 6)
        assert third.highestmodseq is not None and third.highestmodseq > second.highestmodseq

        # Works for the selected folder too, and for another folder while INBOX stays selected.
        selected = await session.select("INBOX")
        assert (await session.status("INBOX")).uidnext == selected.uidnext == 6
        conn = mbox.other()
        assert conn.create("Archive")[0] == "OK"
        conn.logout()
        mbox.append(2, folder="Archive")
        archive = await session.status("Archive")
        assert (archive.messages, archive.uidnext) == (2, 3) and archive.uidvalidity != 0
        assert session.selected == "INBOX" and await session.uid_search_all() == [1, 2, 3, 4, 5]
        with pytest.raises(FolderGone):
            await session.status("No such folder")


# CONDSTORE / QRESYNC ----------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_changes_since_with_qresync_reports_flags_and_vanished(mbox: Mailbox, qresync: ImapSession) -> None:
    status = await qresync.select("INBOX")
    assert status.highestmodseq is not None and status.uidnext == 6
    start = status.highestmodseq
    assert (await qresync.changes_since(start)).changed == []

    mbox.store(2, "+FLAGS", r"(\Flagged $Important)")
    mbox.store(3, "+FLAGS", r"(\Seen)")
    mbox.store(3, "-FLAGS", r"(\Seen)")  # changed and changed back: still reported, flags as now
    mbox.expunge(5)

    changes = await qresync.changes_since(start)
    by_uid = {c.uid: c for c in changes.changed}
    assert set(by_uid) == {2, 3}, changes
    assert by_uid[2].flags == ["$Important", "\\Flagged"] and by_uid[3].flags == []
    assert all(c.modseq is not None and c.modseq > start for c in changes.changed)
    assert changes.vanished == [5]
    assert changes.highestmodseq > start

    # The returned cursor is complete: asking again from it yields nothing until something changes.
    again = await qresync.changes_since(changes.highestmodseq)
    assert again.changed == [] and again.vanished == []
    mbox.store(1, "+FLAGS", r"(\Answered)")
    later = await qresync.changes_since(again.highestmodseq)
    assert [(c.uid, c.flags) for c in later.changed] == [(1, ["\\Answered"])]

    # max_uid leaves out UIDs the caller does not hold yet.
    mbox.append(1)
    await qresync.noop()
    assert [c.uid for c in (await qresync.changes_since(start)).changed] == [1, 2, 3, 6]
    assert [c.uid for c in (await qresync.changes_since(start, max_uid=5)).changed] == [1, 2, 3]


@pytest.mark.asyncio(loop_scope="session")
async def test_vanished_earlier_in_a_new_session(mbox: Mailbox) -> None:
    mbox.append(8)
    async with mbox.session() as session:
        # SELECT (CONDSTORE), as the initial sync does: Dovecot records per-message mod-sequences
        # only from the first CONDSTORE use of a mailbox on, and before that reports every
        # message as changed (harmless, but it would blur this test).
        before = await session.select("INBOX")
    assert before.highestmodseq is not None
    mbox.expunge(1, 2, 3, 7)
    mbox.store(8, "+FLAGS", r"(\Seen)")

    async with mbox.session() as session:
        assert await session.enable_qresync()
        await session.select("INBOX")
        changes = await session.changes_since(before.highestmodseq)
        assert changes.vanished == [1, 2, 3, 7]  # from `VANISHED (EARLIER) 1:3,7`
        assert [(c.uid, c.flags) for c in changes.changed] == [(8, ["\\Seen"])]

    # The same in one round trip: SELECT … (QRESYNC (uidvalidity modseq)).
    async with mbox.session() as session:
        assert await session.enable_qresync()
        status, changes = await session.select_since("INBOX", before.uidvalidity, before.highestmodseq)
        assert session.selected == "INBOX" and status.messages == 4
        assert changes is not None and changes.vanished == [1, 2, 3, 7]
        assert [(c.uid, c.flags) for c in changes.changed] == [(8, ["\\Seen"])]
        assert changes.highestmodseq == status.highestmodseq
        # The session is selected and usable for the usual calls afterwards.
        assert await session.uid_search_all() == [4, 5, 6, 8]
        # A stale UIDVALIDITY gets no changes: the folder must be re-mirrored.
        _, stale = await session.select_since("INBOX", before.uidvalidity + 1, before.highestmodseq)
        assert stale is None


@pytest.mark.asyncio(loop_scope="session")
async def test_enable_qresync_must_precede_select(mbox: Mailbox) -> None:
    async with mbox.session() as session:
        await session.select("INBOX")
        with pytest.raises(RuntimeError):
            await session.enable_qresync()


@pytest.mark.asyncio(loop_scope="session")
async def test_changes_since_with_condstore_only(mbox: Mailbox) -> None:
    mbox.append(4)
    async with mbox.session() as session:  # QRESYNC deliberately not enabled
        status = await session.select("INBOX")
        assert status.highestmodseq is not None and not session.qresync_enabled
        start = status.highestmodseq
        mbox.store(2, "+FLAGS", r"(\Seen)")
        mbox.expunge(3)
        # Dovecot first answers from the session's stale view (nothing changed) and then announces
        # the change without a UID; changes_since asks again and gets it placed.
        changes = await session.changes_since(start)
        assert [(c.uid, c.flags) for c in changes.changed] == [(2, ["\\Seen"])]
        assert not changes.partial and changes.highestmodseq > start
        # No VANISHED without QRESYNC: the caller diffs UIDs to find expunges.
        assert changes.vanished == []
        assert await session.uid_search_all() == [1, 2, 4]
        assert (await session.changes_since(changes.highestmodseq)).changed == []
        mbox.store(4, "+FLAGS", r"(\Draft)")
        later = await session.changes_since(changes.highestmodseq)
        assert [(c.uid, c.flags) for c in later.changed] == [(4, ["\\Draft"])]


# Flag ranges and the CONDSTORE-less server ------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_flags_range(mbox: Mailbox) -> None:
    mbox.append(3)
    mbox.append(1, flags=r"(\Seen \Flagged)")
    mbox.append(2, flags="($Label1)")
    async with mbox.session() as session:
        await session.select("INBOX")
        got = await session.flags_range(2, 5)
        assert [(m.uid, m.flags) for m in got] == [(2, []), (3, []), (4, ["\\Flagged", "\\Seen"]), (5, ["$Label1"])]
        # No NOOP in between: Dovecot's first answer still lists UID 3, flags_range asks again.
        mbox.expunge(3)
        assert [m.uid for m in await session.flags_range(1, 6)] == [1, 2, 4, 5, 6]
        assert await session.flags_range(100, 200) == []
        with pytest.raises(ValueError):
            await session.flags_range(5, 4)


@pytest.mark.asyncio(loop_scope="session")
async def test_server_without_condstore(plain_mbox: Mailbox) -> None:
    plain_mbox.append(3)
    async with plain_mbox.session() as session:
        assert not session.has_condstore and not session.has_qresync and session.has_idle
        assert await session.enable_qresync() is False
        status = await session.status("INBOX")
        assert (status.messages, status.uidnext, status.highestmodseq) == (3, 4, None)
        selected = await session.select("INBOX")
        assert selected.highestmodseq is None and selected.uidvalidity == status.uidvalidity
        with pytest.raises(RuntimeError):
            await session.changes_since(1)
        # The diff fallback: flags by UID range, expunges as UIDs missing from the range.
        plain_mbox.store(2, "+FLAGS", r"(\Seen)")
        plain_mbox.expunge(1)
        assert [(m.uid, m.flags) for m in await session.flags_range(1, 3)] == [(2, ["\\Seen"]), (3, [])]


# IDLE -------------------------------------------------------------------------------------------


async def _idle_until(
    session: ImapSession, timeout: float, action: Callable[[], None] | None = None, *, delay: float = 0.3,
    poll_interval: float = 5.0,
) -> tuple[MailboxEvents, float]:
    """Run idle(); after `delay` s run `action` (blocking) in a thread. Returns the events and seconds taken."""
    started = time.monotonic()
    task = asyncio.ensure_future(session.idle(timeout, poll_interval=poll_interval))
    if action is not None:
        await asyncio.sleep(delay)
        assert not task.done(), "idle() returned before anything happened"
        await asyncio.to_thread(action)
    events = await asyncio.wait_for(task, timeout + 5)
    return events, time.monotonic() - started


@pytest.mark.asyncio(loop_scope="session")
async def test_idle_returns_on_new_mail(mbox: Mailbox) -> None:
    mbox.append(1)
    async with mbox.session() as session:
        await session.select("INBOX")
        events, took = await _idle_until(session, 20, lambda: mbox.append(1))
        assert took < 1.5, f"IDLE took {took:.2f} s to report an APPEND"
        assert events.changed and events.exists == 2, events
        # IDLE is over: ordinary commands work on the same connection.
        assert await session.uid_search_all() == [1, 2]
        assert [m.uid for m in await session.fetch([2])] == [2]


@pytest.mark.asyncio(loop_scope="session")
async def test_idle_times_out_quietly_and_can_be_repeated(mbox: Mailbox) -> None:
    mbox.append(1)
    async with mbox.session() as session:
        await session.select("INBOX")
        events, took = await _idle_until(session, 0.6)
        assert not events.changed and events.lines == []
        assert 0.6 <= took < 1.5
        assert (await session.status("INBOX")).messages == 1
        # A second IDLE on the same connection still sees changes: flags and (QRESYNC-less) expunges.
        events, took = await _idle_until(session, 20, lambda: mbox.store(1, "+FLAGS", r"(\Flagged)"))
        assert events.flags_changed and took < 1.5, events
        mbox.append(1)
        await session.noop()
        events, _ = await _idle_until(session, 20, lambda: mbox.expunge(1))
        assert events.expunged and any(line.endswith("EXPUNGE") for line in events.lines), events
        assert await session.uid_search_all() == [2]


@pytest.mark.asyncio(loop_scope="session")
async def test_idle_sleeps_through_keepalives(chatty_dovecot: DovecotServer) -> None:
    mbox = _mailbox(chatty_dovecot)
    mbox.append(1)
    async with mbox.session() as session:
        await session.select("INBOX")
        # Two `* OK Still here` arrive before the APPEND: they must not end the wait.
        events, took = await _idle_until(session, 20, lambda: mbox.append(1), delay=2.3)
        assert 2.3 <= took < 3.5 and events.exists == 2, events
        assert await session.uid_search_all() == [1, 2]


@pytest.mark.asyncio(loop_scope="session")
async def test_idle_reports_vanished_with_qresync(mbox: Mailbox, qresync: ImapSession) -> None:
    await qresync.select("INBOX")
    events, took = await _idle_until(qresync, 20, lambda: mbox.expunge(2, 3))
    assert events.expunged and took < 1.5, events
    assert any(line.startswith("VANISHED") for line in events.lines), events
    assert await qresync.uid_search_all() == [1, 4, 5]


@pytest.mark.asyncio(loop_scope="session")
async def test_polling_fallback_without_idle(mbox: Mailbox) -> None:
    mbox.append(1)
    async with mbox.session() as session:
        session.capabilities.discard("IDLE")  # as on a server that does not offer it
        await session.select("INBOX")
        events, took = await _idle_until(session, 0.5, poll_interval=0.2)
        assert not events.changed and 0.5 <= took < 1.5
        events, took = await _idle_until(session, 20, lambda: mbox.append(1), poll_interval=0.2)
        assert events.exists == 2 and took < 1.5, events
        assert await session.uid_search_all() == [1, 2]


@pytest.mark.parametrize("with_idle", [True, False], ids=["idle", "polling"])
@pytest.mark.asyncio(loop_scope="session")
async def test_idle_raises_network_error_when_the_connection_drops(
    mbox: Mailbox, dovecot: DovecotServer, with_idle: bool
) -> None:
    mbox.append(1)
    with ChaosProxy(dovecot.host, dovecot.port) as proxy:
        async with mbox.session(port=proxy.port) as session:
            if not with_idle:
                session.capabilities.discard("IDLE")
            await session.select("INBOX")
            task = asyncio.ensure_future(session.idle(60, poll_interval=10))
            await asyncio.sleep(0.3)
            assert not task.done()
            dropped = time.monotonic()
            assert await asyncio.to_thread(proxy.drop_connections) == 1
            with pytest.raises(NetworkError, match="connection lost"):
                await asyncio.wait_for(task, 5)
            assert time.monotonic() - dropped < 1.0


async def test_login_refused_for_the_connection_limit_is_retryable_not_an_auth_failure() -> None:
    """Dovecot answers a login over `mail_max_userip_connections` with `NO [LIMIT]`: the credentials are
    fine, so the account must not be parked as auth_failed (a wrong password still is)."""
    from providers.errors import AuthError, ServerError

    server = start_dovecot(
        Path(tempfile.mkdtemp(prefix="mailsync-test-limit-")),
        extra_config="protocol imap {\n  mail_max_userip_connections = 1\n}\n",
    )
    try:
        box = _mailbox(server)
        async with box.session():
            with pytest.raises(ServerError, match=r"refused temporarily.*\[LIMIT\]") as refused:
                async with box.session():
                    pass
            assert not isinstance(refused.value, AuthError)
        async with box.session():  # the first one has logged out: the limit has room again
            pass
        with pytest.raises(AuthError):
            async with Mailbox(box.host, box.port, box.username, "wrong").session():
                pass
    finally:
        server.stop()


@pytest.mark.asyncio(loop_scope="session")
async def test_fetch_never_silently_leaves_out_a_message_that_exists(
    mbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UID expunged since the SEARCH is no error; one the FETCH answer lacks but the server still holds
    (a server bug, or a response shape the parser drops) is asked for again, and raises if still lacking."""
    import providers.imap.client as client
    from providers.errors import ServerError

    mbox.append(4)
    real_parse = client.parse_fetch
    async with mbox.session() as session:
        await session.select("INBOX")
        mbox.expunge(2)
        assert [m.uid for m in await session.fetch([1, 2, 3])] == [1, 3]

        dropped: list[int] = []

        def drop_uid_3_once(lines):  # type: ignore[no-untyped-def]
            got = real_parse(lines)
            if not dropped and any(m.uid == 3 for m in got):
                dropped.append(3)
                return [m for m in got if m.uid != 3]
            return got

        monkeypatch.setattr(client, "parse_fetch", drop_uid_3_once)
        assert sorted(m.uid for m in await session.fetch([1, 3, 4])) == [1, 3, 4] and dropped == [3]

        monkeypatch.setattr(client, "parse_fetch", lambda lines: [m for m in real_parse(lines) if m.uid != 4])
        with pytest.raises(ServerError, match="without 1 existing message.*UID 4"):
            await session.fetch([1, 3, 4])
