"""Run the Gmail fake as a process: `python -m devkit.gmail_fake --port 8085 --seed-messages 300`.

Prints one JSON line with the endpoint, token URI, batch URI and each
user's refresh token (what a client's config needs), then serves until
interrupted (SIGINT / SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from devkit.corpus import OWNER_ADDRESS
from devkit.gmail_fake.server import GmailFake


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devkit.gmail_fake", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--user", action="append", default=None, help=f"mailbox address (repeatable; default {OWNER_ADDRESS})")
    parser.add_argument("--refresh-token", default=None, help="refresh token of the first user (default: generated)")
    parser.add_argument("--seed-messages", type=int, default=0, help="corpus messages per user")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--quota-limit", type=int, default=250, help="units per user per second")
    parser.add_argument("--no-enforce-quota", action="store_true", help="count quota but never answer 429")
    parser.add_argument("--history-retention", type=int, default=None, help="history records kept per user")
    parser.add_argument("--push-url", default=None, help="deliver watch notifications to this URL (Pub/Sub push format)")
    parser.add_argument("--credentials-dir", default=None,
                        help="write an authorized_user credentials file per user here (for `account add gmail`)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    fake = GmailFake.start(
        host=args.host,
        port=args.port,
        quota_limit=args.quota_limit,
        enforce_quota=not args.no_enforce_quota,
        history_retention=args.history_retention,
        push_url=args.push_url,
    )
    users = args.user or [OWNER_ADDRESS]
    tokens: dict[str, str] = {}
    for index, user in enumerate(users):
        tokens[user] = fake.add_user(user, args.refresh_token if index == 0 else None)
        if args.seed_messages:
            fake.seed(user, args.seed_messages, seed=args.seed + index)
    files: dict[str, str] = {}
    if args.credentials_dir:
        folder = Path(args.credentials_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for user, token in tokens.items():
            path = folder / f"{user}.json"
            path.write_text(json.dumps({
                "type": "authorized_user", "client_id": "mailsync-dev", "client_secret": "dev-secret",
                "refresh_token": token, "token_uri": fake.token_uri,
            }, indent=2))
            path.chmod(0o600)
            files[user] = str(path)
    print(
        json.dumps(
            {
                "endpoint": fake.endpoint,
                "token_uri": fake.token_uri,
                "batch_uri": fake.batch_uri,
                "users": [
                    {"address": u, "refresh_token": t, "history_id": fake.history_id(u), "credentials_file": files.get(u)}
                    for u, t in tokens.items()
                ],
            }
        ),
        flush=True,
    )
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    done.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
