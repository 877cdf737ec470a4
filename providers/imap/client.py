"""An IMAP session on aioimaplib with the timeouts, security modes and error classes mailsync needs.

Every failure leaves here as a `providers.errors` class: callers never see aioimaplib's exceptions.
Misuse (e.g. `changes_since` before `select`) raises RuntimeError.

Besides the initial-sync operations (LIST, SELECT, UID SEARCH, UID FETCH of bodies) the session
offers what incremental sync needs: STATUS as a cheap change probe, CONDSTORE/QRESYNC (RFC 7162)
flag changes and expunges since a mod-sequence, plain flag ranges for servers without CONDSTORE,
and IDLE (RFC 2177) with NOOP polling as fallback.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Awaitable
from typing import TypeVar

import aioimaplib
from aioimaplib.aioimaplib import Command, IdleCommand

from mail.model import FetchedMessage
from providers.errors import AuthError, FolderGone, MessagesNotServed, NetworkError, ServerError
from providers.imap import wire
from providers.imap.parse import (
    FolderInfo,
    FolderStatus,
    MailboxChanges,
    MailboxEvents,
    MessageFlags,
    change_lines,
    parse_changes,
    parse_fetch,
    parse_flag_fetch,
    parse_list,
    parse_search,
    parse_select,
    parse_status,
    view_was_stale,
)
from providers.imap.settings import ImapSettings, Security

wire.install()  # aioimaplib's recursive line splitter fails on large answers (see wire.py)

T = TypeVar("T")

FETCH_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"
HEADER_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER])"
# RFC 2177: servers may drop a client idle for 30 minutes, so IDLE is re-issued at least every 29.
IDLE_MAX_SECONDS = 29 * 60.0
_NETWORK_ERRORS = (OSError, asyncio.TimeoutError, ssl.SSLError, aioimaplib.CommandTimeout, aioimaplib.Abort)
# A login refused for a reason other than the credentials (RFC 5530 response codes; Gmail's and
# Exchange's wording for connection and bandwidth limits): retried with backoff, the account not parked.
_LOGIN_REFUSED_FOR_NOW = (
    "unavailable", "serverbug", "[limit]", "[inuse]", "too many simultaneous connections",
    "too many connections", "bandwidth limit", "try again later", "temporarily unavailable",
)
_CREDENTIALS_REFUSED = ("[AUTHENTICATIONFAILED]", "[AUTHORIZATIONFAILED]", "[EXPIRED]", "[PRIVACYREQUIRED]")
# NUL, CR and LF would end or split a command line on the wire (RFC 3501 section 9).
_CONTROL_CHARS = re.compile(r"[\x00\r\n]")


def quote_mailbox(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: list[int]) -> str:
    """Compact `1:5,9,12:14` form so a page of UIDs stays a short command line."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)


class _RawCommand(Command):
    """A command line sent as written that collects every untagged response until its completion.

    aioimaplib hands untagged responses to a pending *async* command only if they carry its name,
    so a `* VANISHED` line during `UID FETCH` or an `* ENABLED` would be dropped; the one pending
    *sync* command receives them all. This command therefore poses as the sync command `like`
    (whose valid states aioimaplib checks locally) and renders its own wire text.
    """

    def __init__(
        self, protocol: aioimaplib.IMAP4ClientProtocol, text: str, *, like: str = "SELECT",
        timeout: float | None = None,
    ) -> None:
        if _CONTROL_CHARS.search(text):
            raise ValueError(f"NUL, CR and LF are not allowed in an IMAP command line: {text!r}")
        super().__init__(like, protocol.new_tag(), loop=protocol.loop, timeout=timeout)
        self.text = text

    def __repr__(self) -> str:  # aioimaplib sends str(command)
        return f"{self.tag} {self.text}"


class ImapSession:
    """One authenticated connection. Use `async with ImapSession(...) as s:`."""

    def __init__(
        self, settings: ImapSettings, password: str, *, auth_timeout: float = 5.0, timeout: float = 30.0
    ) -> None:
        self.settings = settings
        self._password = password
        self._auth_timeout = auth_timeout
        self._timeout = timeout
        self._client: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self.selected: str | None = None
        self.capabilities: set[str] = set()
        self.qresync_enabled = False
        # The last IDLE command's task, referenced so that an IDLE ended in the background (after a
        # cancellation) is not garbage-collected before its tagged answer arrives.
        self._idle_task: asyncio.Future[aioimaplib.Response] | None = None

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.effective_port}"

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost_reason = str(exc) if exc else "closed by server"
        self._lost.set()

    async def _guard(self, aw: Awaitable[T], timeout: float | None, what: str) -> T:
        """Await an IMAP call, failing fast when the connection drops instead of waiting for the timeout.

        `timeout` None: no overall bound; the command's own inactivity timer (reset by every piece of
        data) ends a stalled transfer, and a slow but moving one may take as long as it needs."""
        task = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if task in done:
            try:
                return task.result()
            except _NETWORK_ERRORS as exc:
                if isinstance(exc, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(exc):
                    raise NetworkError(
                        f"{self.where} does not speak TLS on this port (try --security starttls --port 143, "
                        "or the server's TLS port, usually 993)"
                    ) from exc
                raise NetworkError(f"{what} on {self.where}: {type(exc).__name__}: {exc}") from exc
        task.cancel()
        if lost in done:
            raise NetworkError(f"{what} on {self.where}: connection lost ({self._lost_reason})")
        raise NetworkError(f"{what} on {self.where}: no answer within {timeout:g} s")

    async def connect(self) -> None:
        s = self.settings
        ctx = ssl.create_default_context() if s.security is not Security.none else None
        try:
            if s.security is Security.tls:
                client = aioimaplib.IMAP4_SSL(host=s.host, port=s.effective_port, timeout=self._timeout, ssl_context=ctx)
                client.protocol.conn_lost_cb = self._connection_lost
            else:
                client = aioimaplib.IMAP4(
                    host=s.host, port=s.effective_port, timeout=self._timeout, conn_lost_cb=self._connection_lost
                )
        except socket.gaierror as exc:  # pragma: no cover - aioimaplib resolves lazily
            raise NetworkError(f"cannot resolve {s.host}: {exc}") from exc
        self._client = client
        try:
            await self._guard(client.wait_hello_from_server(), self._auth_timeout, "connect")
        except NetworkError as exc:
            cause = exc.__cause__
            if isinstance(cause, socket.gaierror):
                raise NetworkError(f"unknown host {s.host!r}: {cause.strerror}") from cause
            if isinstance(cause, ConnectionRefusedError):
                raise NetworkError(f"connection refused by {self.where}") from cause
            raise
        if s.security is Security.starttls:
            await self._starttls(ctx)
        response = await self._guard(client.login(s.username, self._password), self._auth_timeout, "login")
        if response.result != "OK":
            text = b" ".join(bytes(l) for l in response.lines).decode("utf-8", "replace")
            # the credentials' own codes first: "[AUTHENTICATIONFAILED] … try again later" is still a refusal
            refused = any(code in text.upper() for code in _CREDENTIALS_REFUSED)
            if not refused and any(marker in text.lower() for marker in _LOGIN_REFUSED_FOR_NOW):
                raise ServerError(f"login on {self.where} refused temporarily: {text}")
            raise AuthError(f"login failed for {s.username} on {self.where}: {text}")
        if any(b"initialization failed" in bytes(l) for l in response.lines):
            raise ServerError(f"{self.where} accepted the login but could not open the mailbox")
        if not client.protocol.capabilities - {"AUTH=PLAIN"} or "IMAP4rev1" not in client.protocol.capabilities:
            await self._guard(client.protocol.capability(), self._timeout, "CAPABILITY")
        self.capabilities = {c.upper() for c in client.protocol.capabilities}

    async def _starttls(self, ctx: ssl.SSLContext | None) -> None:
        client = self._client
        assert client is not None and ctx is not None
        proto = client.protocol
        if "STARTTLS" not in {c.upper() for c in proto.capabilities}:
            raise NetworkError(f"{self.where} does not offer STARTTLS; refusing to send the password in clear")
        response = await self._guard(
            proto.execute(Command("STARTTLS", proto.new_tag(), loop=proto.loop)), self._auth_timeout, "STARTTLS"
        )
        if response.result != "OK":
            raise NetworkError(f"STARTTLS refused by {self.where}")
        loop = asyncio.get_running_loop()
        transport = await self._guard(
            loop.start_tls(proto.transport, proto, ctx, server_hostname=self.settings.host),
            self._auth_timeout, "TLS handshake",
        )
        proto.transport = transport
        # Capabilities announced before TLS are not to be trusted (RFC 3501 6.2.1).
        proto.capabilities = set()
        await self._guard(proto.capability(), self._timeout, "CAPABILITY")

    async def __aenter__(self) -> ImapSession:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if not self._lost.is_set() and client.protocol.transport is not None:
            try:
                await asyncio.wait_for(client.logout(), 2)
            except Exception:  # closing anyway; a failed LOGOUT loses nothing
                pass
        transport = client.protocol.transport
        if transport is not None:
            transport.close()

    @property
    def client(self) -> aioimaplib.IMAP4:
        if self._client is None:
            raise NetworkError("not connected")
        return self._client

    def _check(self, response: aioimaplib.Response, what: str) -> aioimaplib.Response:
        if response.result != "OK":
            text = b" ".join(bytes(l) for l in response.lines).decode("utf-8", "replace")
            if "NONEXISTENT" in text or "doesn't exist" in text.lower() or "does not exist" in text.lower():
                raise FolderGone(f"{what}: {text}")
            raise ServerError(f"{what} on {self.where}: {response.result} {text}")
        return response

    async def list_folders(self) -> list[FolderInfo]:
        pattern = '""'
        if "SPECIAL-USE" in self.capabilities and "LIST-EXTENDED" in self.capabilities:
            response = await self._guard(
                self.client.protocol.execute(
                    Command("LIST", self.client.protocol.new_tag(), '""', '"*"', "RETURN (SPECIAL-USE)",
                            loop=self.client.protocol.loop)
                ),
                self._timeout, "LIST",
            )
        else:
            response = await self._guard(self.client.list(pattern, "*"), self._timeout, "LIST")
        return parse_list(self._check(response, "LIST").lines)

    async def select(self, name: str) -> FolderStatus:
        args = quote_mailbox(name)
        self.selected = None  # a failed SELECT leaves no folder selected (RFC 3501 6.3.1)
        if "CONDSTORE" in self.capabilities:
            args += " (CONDSTORE)"  # makes SELECT report HIGHESTMODSEQ
        response = await self._guard(self.client.select(args), self._timeout, f"SELECT {name}")
        status = parse_select(self._check(response, f"SELECT {name}").lines)
        self.selected = name
        return status

    async def uid_search(self, criteria: str) -> list[int]:
        """UIDs matching an IMAP SEARCH criteria string, e.g. `SINCE 1-Feb-2024 BEFORE 1-Mar-2024`."""
        response = await self._guard(self.client.uid_search(criteria, charset=None), self._timeout, "UID SEARCH")
        return parse_search(self._check(response, "UID SEARCH").lines)

    async def uid_search_all(self) -> list[int]:
        response = await self._guard(self.client.uid_search("ALL", charset=None), self._timeout, "UID SEARCH")
        return parse_search(self._check(response, "UID SEARCH").lines)

    async def fetch(self, uids: list[int]) -> list[FetchedMessage]:
        if not uids:
            return []
        fetched = await self._fetch_bodies(uids)
        if not set(uids) <= {m.uid for m in fetched}:
            fetched += await self._fetch_missing(uids, fetched)
        return fetched

    async def fetch_served(self, uids: list[int], *, give_up: bool) -> tuple[list[FetchedMessage], list[int]]:
        """`fetch`, and the UIDs left out: with `give_up`, messages the server still does not serve are
        returned as left out instead of raising MessagesNotServed (the caller records them)."""
        try:
            return await self.fetch(uids), []
        except MessagesNotServed as exc:
            if not give_up:
                raise
            return exc.served, exc.uids

    async def _fetch_bodies(self, uids: list[int]) -> list[FetchedMessage]:
        # A chunk of large messages on a slow link can take minutes: only inactivity ends it.
        response = await self._guard(self.client.uid("fetch", uid_set(uids), FETCH_ITEMS), None, "UID FETCH")
        return parse_fetch(self._check(response, "UID FETCH").lines)

    async def _fetch_missing(self, uids: list[int], fetched: list[FetchedMessage]) -> list[FetchedMessage]:
        """The requested messages a FETCH answered OK without: expunged meanwhile (fine: nothing to
        store), else asked for once more. One the server still leaves out is an error, not a skip: the
        caller's resume point must not move past a message that exists but was never stored."""
        missing = sorted(set(uids) - {m.uid for m in fetched})
        existing = await self.uid_search(f"UID {uid_set(missing)}")
        if not existing:
            return []
        again = await self._fetch_bodies(existing)
        left = sorted(set(existing) - {m.uid for m in again})
        if left:
            shown = ",".join(map(str, left[:10])) + ("…" if len(left) > 10 else "")
            raise MessagesNotServed(
                f"{self.where}: FETCH answered OK without {len(left)} existing message(s): UID {shown}",
                uids=left, served=[*fetched, *again],
            )
        return again

    async def fetch_headers(self, uids: list[int]) -> list[FetchedMessage]:
        """Header blocks only (`raw` holds them), with flags, INTERNALDATE and the full size."""
        if not uids:
            return []
        response = await self._guard(self.client.uid("fetch", uid_set(uids), HEADER_ITEMS), None, "UID FETCH")
        return parse_fetch(self._check(response, "UID FETCH").lines)

    async def fetch_uids(self, lo: int, hi: int) -> list[int]:
        """The UIDs that exist now in lo..hi (some planned ones may have been expunged since)."""
        response = await self._guard(
            self.client.uid_search(f"UID {lo}:{hi}", charset=None), self._timeout, "UID SEARCH"
        )
        return [u for u in parse_search(self._check(response, "UID SEARCH").lines) if lo <= u <= hi]

    # Incremental sync ----------------------------------------------------------------------------

    @property
    def has_condstore(self) -> bool:
        """HIGHESTMODSEQ and CHANGEDSINCE are available (QRESYNC implies CONDSTORE, RFC 7162 3.2)."""
        return "CONDSTORE" in self.capabilities or "QRESYNC" in self.capabilities

    @property
    def has_qresync(self) -> bool:
        """QRESYNC can be enabled; `enable_qresync()` must run before the first SELECT."""
        return "QRESYNC" in self.capabilities and "ENABLE" in self.capabilities

    @property
    def has_idle(self) -> bool:
        return "IDLE" in self.capabilities

    async def _raw(
        self, text: str, what: str, *, like: str = "SELECT", timeout: float | None = None,
        inactivity: float | None = None,
    ) -> aioimaplib.Response:
        """Send `text` as one command; NO/BAD become ServerError (FolderGone for a missing folder)."""
        proto = self.client.protocol
        command = _RawCommand(proto, text, like=like, timeout=inactivity)
        response = await self._guard(proto.execute(command), timeout or self._timeout, what)
        return self._check(response, what)

    async def status(self, name: str) -> FolderStatus:
        """MESSAGES, UIDNEXT, UIDVALIDITY (and HIGHESTMODSEQ with CONDSTORE) of a folder, without SELECT.

        The cheap "did anything change" probe: compare with the stored cursors and sync only the
        folders that moved. Works on the selected folder too (Dovecot answers with [CLIENTBUG]).
        """
        items = "MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ" if self.has_condstore else "")
        response = await self._raw(f"STATUS {quote_mailbox(name)} ({items})", f"STATUS {name}")
        return parse_status(response.lines)

    async def enable_qresync(self) -> bool:
        """ENABLE QRESYNC if the server offers it; returns whether it is on for this connection.

        Must precede the first SELECT (RFC 5161: ENABLE is valid in the authenticated state only).
        Once on, the server reports expunges as `VANISHED` with UIDs and `changes_since` reports them.
        """
        if self.qresync_enabled:
            return True
        if not self.has_qresync:
            return False
        if self.selected is not None or self.client.get_state() != aioimaplib.AUTH:
            raise RuntimeError("enable_qresync() must be called before the first select()")
        response = await self._raw("ENABLE QRESYNC", "ENABLE QRESYNC", like="ENABLE")
        self.qresync_enabled = any(
            not isinstance(line, bytearray) and line.upper().startswith(b"ENABLED")
            and b"QRESYNC" in line.upper().split()
            for line in response.lines[:-1]
        )
        return self.qresync_enabled

    async def select_since(
        self, name: str, uidvalidity: int, modseq: int
    ) -> tuple[FolderStatus, MailboxChanges | None]:
        """SELECT with QRESYNC parameters: the folder's status and its changes since `modseq`, in one round trip.

        The changes are None when the folder's UIDVALIDITY is no longer `uidvalidity` (the server
        then ignores the parameters and the folder must be re-mirrored), when the folder has no
        mod-sequences ([NOMODSEQ]), or when QRESYNC is not enabled (then this is a plain `select()`).
        Their cursor is the HIGHESTMODSEQ the SELECT reports.
        """
        if not self.qresync_enabled:
            return await self.select(name), None
        args = f"{quote_mailbox(name)} (QRESYNC ({uidvalidity} {modseq}))"
        self.selected = None
        response = await self._guard(self.client.select(args), self._timeout * 10, f"SELECT {name}")
        lines = self._check(response, f"SELECT {name}").lines
        status = parse_select(lines)
        self.selected = name
        if status.uidvalidity != uidvalidity or status.highestmodseq is None:
            return status, None
        changes = parse_changes(lines, modseq, qresync=True)
        changes.highestmodseq = max(changes.highestmodseq, status.highestmodseq)
        return status, changes

    async def changes_since(self, modseq: int, *, max_uid: int | None = None) -> MailboxChanges:
        """Flag changes (and, with QRESYNC, expunges) in the selected folder since `modseq`.

        `UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE modseq VANISHED)` when QRESYNC is enabled, without
        VANISHED under CONDSTORE alone: `vanished` is then empty and the caller finds expunges by
        diffing `uid_search_all()` (or `flags_range` pages) against the UIDs it holds. `max_uid`
        limits the question to UIDs the caller already has (new mail comes by UIDNEXT anyway) and
        bounds how many vanished UIDs an old mod-sequence can produce. Store the returned
        `highestmodseq` as the next cursor.
        """
        if self.selected is None:
            raise RuntimeError("changes_since() needs a selected folder")
        if not self.has_condstore:
            raise RuntimeError(f"{self.where} does not offer CONDSTORE; use flags_range() instead")
        if max_uid is not None and max_uid < 1:
            return MailboxChanges(changed=[], vanished=[], highestmodseq=modseq)
        uids = f"1:{max_uid}" if max_uid is not None else "1:*"
        modifiers = f"CHANGEDSINCE {modseq}" + (" VANISHED" if self.qresync_enabled else "")
        for _ in range(3):
            response = await self._raw(
                f"UID FETCH {uids} (UID FLAGS) ({modifiers})", "UID FETCH CHANGEDSINCE",
                timeout=self._timeout * 10, inactivity=self._timeout,
            )
            changes = parse_changes(response.lines, modseq, qresync=self.qresync_enabled)
            # Dovecot answers from the session's view as of the command's start and only then
            # announces other sessions' changes, without UIDs unless QRESYNC is on. The view is
            # current now, so asking again places them (a busy folder may need one more round).
            if not changes.partial:
                break
        return changes

    async def flags_range(self, lo: int, hi: int) -> list[MessageFlags]:
        """Current flags of the messages with UIDs lo..hi in the selected folder, in UID order.

        The diff fallback without CONDSTORE, paged by the caller: a UID it holds in lo..hi that is
        missing from the answer has been expunged. The answer is current as of the call (it is
        asked again, up to twice, while the server announces changes the first answer predates).
        """
        if self.selected is None:
            raise RuntimeError("flags_range() needs a selected folder")
        if lo < 1 or hi < lo:
            raise ValueError(f"bad UID range {lo}:{hi}")
        for _ in range(3):
            response = await self._raw(
                f"UID FETCH {lo}:{hi} (UID FLAGS)", "UID FETCH FLAGS",
                timeout=self._timeout * 10, inactivity=self._timeout,
            )
            # An answer from a stale view still lists messages other sessions expunged and their
            # old flags; the updates announced after it bring the view up to date, so ask again.
            if not view_was_stale(response.lines):
                break
        # Unsolicited FETCHes for other UIDs can ride along (QRESYNC sends UIDs with them).
        return [m for m in parse_flag_fetch(response.lines) if lo <= m.uid <= hi]

    async def noop(self) -> MailboxEvents:
        """NOOP: the changes the server reports for the selected folder since the last command."""
        response = await self._raw("NOOP", "NOOP")
        return MailboxEvents(change_lines(response.lines[:-1]))

    async def idle(self, timeout: float, *, poll_interval: float = 5.0) -> MailboxEvents:
        """Wait until the server reports a change in the selected folder, or `timeout` seconds.

        Returns as soon as a push (EXISTS, EXPUNGE, FETCH, VANISHED) arrives, with every change line
        received until IDLE ended, or with no lines after a quiet `timeout` (capped at 29 min, RFC
        2177). Either way IDLE is over and the session usable. Without IDLE, polls with NOOP every
        `poll_interval` seconds. A dropped connection raises NetworkError at once.
        """
        if self.selected is None:
            raise RuntimeError("idle() needs a selected folder")
        timeout = max(0.0, min(timeout, IDLE_MAX_SECONDS))
        if not self.has_idle:
            return await self._poll(timeout, poll_interval)
        proto = self.client.protocol
        pushes: asyncio.Queue[list[bytes]] = asyncio.Queue()
        command = IdleCommand(proto.new_tag(), pushes, loop=proto.loop)
        running = asyncio.ensure_future(proto.execute(command))
        self._idle_task = running
        try:
            # DONE is only meaningful once the server has answered "+ idling".
            started = asyncio.ensure_future(proto.wait_for_idle_response())
            try:
                await self._guard(
                    asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED), self._timeout, "IDLE"
                )
            finally:
                started.cancel()
            seen: list[bytes] = []
            if not running.done():
                seen = await self._wait_for_push(pushes, running, timeout)
            if not running.done():
                proto.idle_done()
            response = await self._guard(running, self._timeout, "IDLE DONE")
            self._check(response, "IDLE")
        finally:
            if not running.done():
                if self._lost.is_set():
                    running.cancel()  # its answer will never come
                else:
                    # Interrupted (cancelled, timed out): end IDLE anyway so the connection can
                    # still LOGOUT; the tagged answer completes `running` in the background.
                    try:
                        proto.idle_done()
                    except Exception:  # the transport is going away; close() copes
                        pass
        # Pushes that arrived after the first one: flushed batches in the queue, and what came in
        # the same read as the tagged answer, which aioimaplib leaves in the command's buffer.
        while not pushes.empty():
            seen.extend(pushes.get_nowait())
        seen.extend(command.buffer)
        return MailboxEvents(change_lines(seen))

    async def _wait_for_push(
        self, pushes: asyncio.Queue[list[bytes]], running: asyncio.Future[aioimaplib.Response], timeout: float
    ) -> list[bytes]:
        """Untagged lines received in IDLE up to the first change line, or until `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: list[bytes] = []
        while not running.done():  # a tagged answer (or BYE) ends IDLE from the server side
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            get = asyncio.ensure_future(pushes.get())
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                done, _ = await asyncio.wait(
                    {get, lost, running}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                get.cancel()
                lost.cancel()
            if get in done:
                batch = get.result()
                seen.extend(batch)
                if change_lines(batch):  # keepalives like "OK Still here" do not count
                    break
            if lost in done:
                raise NetworkError(f"IDLE on {self.where}: connection lost ({self._lost_reason})")
        return seen

    async def _poll(self, timeout: float, interval: float) -> MailboxEvents:
        """IDLE's stand-in: NOOP every `interval` s until a change is reported or `timeout` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            events = await self.noop()
            remaining = deadline - loop.time()
            if events.changed or remaining <= 0:
                return events
            try:
                # Sleep, but notice a dropped connection at once rather than at the next NOOP.
                await asyncio.wait_for(self._lost.wait(), min(interval, remaining))
            except asyncio.TimeoutError:
                continue
            raise NetworkError(f"NOOP polling on {self.where}: connection lost ({self._lost_reason})")
