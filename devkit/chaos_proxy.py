"""A TCP proxy for tests that cuts connections on demand.

`ChaosProxy` sits between a client under test and a real server (usually a
devkit Dovecot) and, when armed with `cut_after_bytes(n)`, resets a
connection once `n` bytes have gone from server to client: both sockets are
closed with SO_LINGER 0, so each side sees a TCP RST mid-response, the way a
crashed NAT box or server does. After the configured number of cuts it
forwards normally again, which is what lets tests check that a sync resumes.

It runs its own asyncio loop in a daemon thread, so the code under test can
use any loop, thread or process.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field

__all__ = ["ChaosProxy"]

_CHUNK = 64 * 1024


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            # Linger 0 turns close() into an RST instead of an orderly FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed by the peer
    writer.transport.abort()


class ChaosProxy:
    """Forward 127.0.0.1:`port` to (`target_host`, `target_port`), cutting on demand.

    Use as a context manager or call `start()`/`stop()`. Counters:
    `connections` (accepted so far) and `cuts_done` (connections reset by a cut).
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port
        self.connections = 0
        self.cuts_done = 0
        self._cut_after: int | None = None
        self._cuts_left = 0
        self._answer_delay = 0.0
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._start_error: BaseException | None = None

    # Control (any thread) -------------------------------------------------

    def cut_after_bytes(self, n: int, *, cuts: int = 1) -> None:
        """Reset the next `cuts` connections once each has sent `n` bytes server→client.

        A connection is cut when its own server→client byte count reaches `n`
        (counting from its start, greeting included) while cuts remain;
        `n=0` cuts before the first server byte is forwarded.
        """
        if n < 0 or cuts < 0:
            raise ValueError("n and cuts must be >= 0")
        with self._lock:
            self._cut_after = n if cuts else None
            self._cuts_left = cuts

    def delay_answers(self, seconds: float) -> None:
        """Hold each new connection's first server bytes (an IMAP greeting) back `seconds`: a slow server."""
        with self._lock:
            self._answer_delay = max(0.0, seconds)

    def disarm(self) -> None:
        """Forget any pending cuts; traffic flows normally."""
        with self._lock:
            self._cut_after = None
            self._cuts_left = 0

    @property
    def active(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._links)

    def drop_connections(self) -> int:
        """Reset every open connection now; returns how many there were."""
        loop = self._require_loop()
        return asyncio.run_coroutine_threadsafe(self._drop_all(), loop).result(timeout=5)

    # Lifecycle -------------------------------------------------------------

    def start(self) -> ChaosProxy:
        if self._thread is not None:
            raise RuntimeError("ChaosProxy already started")
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"ChaosProxy->{self.target_host}:{self.target_port}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        return self

    def stop(self) -> None:
        """Close the listener and reset open connections; safe to call repeatedly."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._thread = None
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Event loop side ---------------------------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._thread is None:
            raise RuntimeError("ChaosProxy is not running")
        return self._loop

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port))
            self.port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as exc:  # reported to start()'s caller
            self._start_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()

    async def _drop_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.reset()
            for task in link.tasks:
                task.cancel()
        return len(links)

    def _take_cut(self) -> bool:
        with self._lock:
            if self._cuts_left <= 0:
                return False
            self._cuts_left -= 1
            if self._cuts_left == 0:
                self._cut_after = None
            return True

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        link = _Link(client_writer)
        self._links.add(link)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                link.reset()
                return
            link.upstream = upstream_writer
            if self._answer_delay:
                await asyncio.sleep(self._answer_delay)
            link.tasks = [
                asyncio.ensure_future(self._pump(client_reader, upstream_writer, link, downstream=False)),
                asyncio.ensure_future(self._pump(upstream_reader, client_writer, link, downstream=True)),
            ]
            # Either side finishing ends the session: IMAP has no use for half-open links.
            _, pending = await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for writer in (client_writer, upstream_writer):
                if not writer.transport.is_closing():
                    writer.close()
        finally:
            self._links.discard(link)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, downstream: bool
    ) -> None:
        sent = 0
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                threshold = self._cut_after if downstream else None
                if threshold is not None and sent + len(data) >= threshold and self._take_cut():
                    head = data[: max(0, threshold - sent)]
                    if head:
                        writer.write(head)
                        # Flush fully to the kernel so the client really gets n bytes before the RST.
                        writer.transport.set_write_buffer_limits(high=0)
                        await writer.drain()
                    link.reset()
                    with self._lock:
                        self.cuts_done += 1
                    return
                writer.write(data)
                await writer.drain()
                sent += len(data)
        except (ConnectionError, OSError):
            link.reset()
