"""`python -m gateway [--host H] [--port P]`: run the webhook gateway without the CLI."""

from __future__ import annotations

import argparse
import os
import sys

from gateway.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", help="bind address (default MAILSYNC_GATEWAY_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default MAILSYNC_GATEWAY_PORT or 8080)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    serve(args.host, args.port, log_level=args.log_level)
    sys.stdout.flush()
    sys.stderr.flush()
    # temporalio clients can abort the interpreter at exit (sdk-python #300): leave directly.
    os._exit(0)


if __name__ == "__main__":
    main()
