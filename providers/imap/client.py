"""An IMAP session on aioimaplib with the timeouts, security modes and error classes mailsync needs.

Every failure leaves here as a `providers.errors` class: callers never see aioimaplib's exceptions.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable
from typing import TypeVar

import aioimaplib
from aioimaplib.aioimaplib import Command

from mail.model import FetchedMessage
from providers.errors import AuthError, FolderGone, NetworkError, ServerError
from providers.imap.parse import FolderInfo, FolderStatus, parse_fetch, parse_list, parse_search, parse_select
from providers.imap.settings import ImapSettings, Security

T = TypeVar("T")

FETCH_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"
_NETWORK_ERRORS = (OSError, asyncio.TimeoutError, ssl.SSLError, aioimaplib.CommandTimeout, aioimaplib.Abort)


def quote_mailbox(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: list[int]) -> str:
    """Compact `1:5,9,12:14` form so a 500-UID page stays a short command line."""
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

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.effective_port}"

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost_reason = str(exc) if exc else "closed by server"
        self._lost.set()

    async def _guard(self, aw: Awaitable[T], timeout: float, what: str) -> T:
        """Await an IMAP call, failing fast when the connection drops instead of waiting for the timeout."""
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
            if "UNAVAILABLE" in text or "SERVERBUG" in text:
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
        if "CONDSTORE" in self.capabilities:
            args += " (CONDSTORE)"  # makes SELECT report HIGHESTMODSEQ
        response = await self._guard(self.client.select(args), self._timeout, f"SELECT {name}")
        status = parse_select(self._check(response, f"SELECT {name}").lines)
        self.selected = name
        return status

    async def uid_search_all(self) -> list[int]:
        response = await self._guard(self.client.uid_search("ALL", charset=None), self._timeout, "UID SEARCH")
        return parse_search(self._check(response, "UID SEARCH").lines)

    async def fetch(self, uids: list[int]) -> list[FetchedMessage]:
        if not uids:
            return []
        # aioimaplib's own timeout is per command; ours bounds the wait for the connection to drop.
        response = await self._guard(
            self.client.uid("fetch", uid_set(uids), FETCH_ITEMS), self._timeout * 10, "UID FETCH"
        )
        return parse_fetch(self._check(response, "UID FETCH").lines)

    async def fetch_uids(self, lo: int, hi: int) -> list[int]:
        """The UIDs that exist now in lo..hi (some planned ones may have been expunged since)."""
        response = await self._guard(
            self.client.uid_search(f"UID {lo}:{hi}", charset=None), self._timeout, "UID SEARCH"
        )
        return [u for u in parse_search(self._check(response, "UID SEARCH").lines) if lo <= u <= hi]
