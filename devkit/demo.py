"""`make demo`: the whole system on the embedded defaults, driven through the real CLI.

Starts the Temporal dev server and PostgreSQL (`mailsync dev up`), a local Dovecot with a generated
sample mailbox, a worker; adds the account and syncs it with live progress bars; then prints where
the web UI is and what landed in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from config import get_settings
from devkit.corpus import generate_sample_mailbox
from devkit.dovecot import DovecotNotInstalled, start_dovecot
from runtime.dev import dev_up
from store.db import create_pool, resolve_database_url

DEMO_ADDRESS = "demo@mailsync.local"
REPO = Path(__file__).resolve().parent.parent
console = Console()


def mailsync(*args: str, env: dict[str, str] | None = None, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO, env=env or os.environ.copy(), text=True,
        capture_output=capture,
    )


async def forget_previous_demo(dsn: str) -> None:
    pool = await create_pool(dsn, size=1)
    await pool.execute("DELETE FROM accounts WHERE address = $1", DEMO_ADDRESS)
    await pool.close()


async def summary(dsn: str, account_id: str) -> None:
    pool = await create_pool(dsn, size=1)
    folders = await pool.fetch(
        """SELECT f.name, f.role, count(l.uid) AS n, f.uidvalidity FROM folders f
           LEFT JOIN message_locations l ON l.folder_id = f.id WHERE f.account_id = $1
           GROUP BY f.id ORDER BY n DESC""", account_id)
    totals = await pool.fetchrow(
        """SELECT count(*) AS messages, coalesce(sum(size), 0) AS bytes,
                  count(*) FILTER (WHERE parse_error IS NOT NULL) AS flagged,
                  (SELECT count(*) FROM threads WHERE account_id = $1) AS threads,
                  (SELECT count(*) FROM contacts WHERE account_id = $1) AS contacts
           FROM messages WHERE account_id = $1""", account_id)
    threads = await pool.fetch(
        "SELECT subject, message_count FROM threads WHERE account_id = $1 ORDER BY message_count DESC, id LIMIT 5",
        account_id)
    await pool.close()
    table = Table("folder", "role", "messages", "uidvalidity", title="What landed in PostgreSQL")
    for f in folders:
        table.add_row(f["name"], f["role"] or "", str(f["n"]), str(f["uidvalidity"]))
    console.print(table)
    console.print(
        f"{totals['messages']} distinct messages ({totals['bytes'] / 1e6:.1f} MB, byte-exact), "
        f"{totals['threads']} threads, {totals['contacts']} contacts, "
        f"{totals['flagged']} malformed messages stored raw and flagged"
    )
    longest = Table("thread subject", "messages", title="Longest threads")
    for t in threads:
        longest.add_row(t["subject"] or "(no subject)", str(t["message_count"]))
    console.print(longest)


def main() -> int:
    settings = get_settings()
    console.rule("[bold]mailsync demo")
    services = dev_up(settings)
    console.print(f"Temporal dev server {services.temporal_address}, web UI {services.web_ui}")
    dsn = resolve_database_url(settings)
    console.print(f"PostgreSQL {dsn}")

    demo_dir = settings.state_dir / "demo-dovecot"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    try:
        dovecot = start_dovecot(demo_dir)
    except DovecotNotInstalled as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    dovecot.add_user("demo", "demo")
    count = dovecot.seed("demo", generate_sample_mailbox(seed=0))
    console.print(f"Dovecot on {dovecot.host}:{dovecot.port} with a generated mailbox of {count} messages (demo/demo)")

    worker_log = settings.state_dir / "demo-worker.log"
    worker = subprocess.Popen(
        [sys.executable, str(REPO / "worker.py")], cwd=REPO, stdout=worker_log.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        asyncio.run(forget_previous_demo(dsn))
        env = os.environ.copy() | {"DEMO_PASSWORD": "demo"}
        added = mailsync(
            "account", "add", "imap", "--host", dovecot.host, "--port", str(dovecot.port), "--username", "demo",
            "--security", "none", "--password-env", "DEMO_PASSWORD", "--address", DEMO_ADDRESS, env=env, capture=True,
        )
        if added.returncode != 0:
            console.print(added.stderr)
            return 1
        account_id = added.stdout.strip().splitlines()[-1]
        console.print(f"account {account_id} added; starting its sync")
        started = time.monotonic()
        synced = mailsync("sync", "start", account_id, "--follow", "--wait")
        if synced.returncode != 0:
            console.print(f"[red]sync failed[/red]; worker log: {worker_log}")
            return 1
        console.print(f"initial sync finished in {time.monotonic() - started:.1f} s")
        mailsync("verify", account_id)
        asyncio.run(summary(dsn, account_id))
        wf = quote(f"account-sync/{account_id}", safe="")
        console.print(
            f"\nWeb UI: {services.web_ui}/namespaces/{settings.temporal_namespace}/workflows/{wf}\n"
            f"Query it yourself: psql '{dsn}' -c 'select subject, from_addr, sent_at from messages limit 10'\n"
            f"Temporal and PostgreSQL keep running for you to explore; stop them with `make down`."
        )
        return 0
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        dovecot.stop()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
