"""Running the gateway: `serve()` in the foreground (the CLI), `BackgroundServer` in a thread (tests, bench)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings


def _configure_logging(level: str) -> None:
    # uvicorn only configures its own loggers; without this the gateway's "unknown address" and
    # "-> 503" lines would go nowhere at INFO.
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(
    host: str | None = None, port: int | None = None, *, settings: GatewaySettings | None = None,
    log_level: str = "info", access_log: bool = True,
) -> None:
    """Run the gateway until SIGINT/SIGTERM. host/port override MAILSYNC_GATEWAY_HOST/PORT.

    Callers that exit the process afterwards should use os._exit (DESIGN: temporalio clients can
    abort at interpreter exit).
    """
    settings = settings or GatewaySettings()
    _configure_logging(log_level)
    uvicorn.run(
        create_app(settings), host=host or settings.host, port=settings.port if port is None else port,
        log_level=log_level, access_log=access_log, lifespan="on",
        # The gateway is a leaf service behind whatever terminates TLS; keep-alive helps Pub/Sub,
        # which reuses connections heavily.
        timeout_keep_alive=30,
    )


class BackgroundServer:
    """The real app on a real socket, served by uvicorn in a daemon thread with its own event loop.

        with BackgroundServer(settings) as server:
            httpx.post(server.url + "/webhooks/gmail", ...)
    """

    def __init__(self, settings: GatewaySettings, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", startup_timeout: float = 30.0) -> None:
        self.settings = settings
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bind before starting: the port is known (and ours) before the thread runs, no race.
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.app = create_app(settings)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=5,
        ))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                         name=f"gateway:{self.port}", daemon=True)
        self._startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("gateway failed to start (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("gateway did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
