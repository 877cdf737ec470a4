"""`make demo`: the whole system on the embedded defaults, driven through the real CLI.

Starts the Temporal dev server and PostgreSQL (`mailsync dev up`), a local Dovecot with a generated
sample mailbox, a worker; adds the account and syncs it with live progress bars; verifies the mirror
against the server; then prints where the web UI is and what landed in PostgreSQL.

On success everything is left running so the CLI can be tried against it (the demo says so, with
pids); `make down` (`mailsync dev down`) stops all of it. `python -m devkit.demo deliver [N]` then
APPENDs N new messages to the demo mailbox, for watching the account's sync pick them up. On failure the worker and Dovecot are stopped
again, Temporal and PostgreSQL stay up (also stopped by `make down`).
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

from config import Settings, get_settings
from devkit.corpus import generate_sample_mailbox
from devkit.dovecot import DovecotNotInstalled, DovecotServer, find_dovecot, start_dovecot
from runtime.dev import DevServices, dev_up, register_process, registered_processes, stop_registered
from store.db import create_pool, resolve_database_url
from store.migrate import migrate

DEMO_ADDRESS = "demo@mailsync.local"
DEMO_HELPERS = {"demo worker", "demo Dovecot"}
REPO = Path(__file__).resolve().parent.parent
# soft_wrap: long lines (URLs, DSNs, commands) stay on one line so they can be copied.
console = Console(soft_wrap=True, highlight=False)


def mailsync(*args: str, env: dict[str, str] | None = None, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO, env=env or os.environ.copy(), text=True,
        capture_output=capture,
    )


def shown(path: Path) -> str:
    """A path as the user can type it from where they ran `make demo`."""
    try:
        absolute = Path(os.path.abspath(path))
        return os.path.relpath(absolute) if absolute.is_relative_to(Path.cwd()) else str(absolute)
    except ValueError:
        return str(path)


def psql_binary() -> str:
    found = shutil.which("psql")
    if found:
        return "psql"
    import pgserver  # its wheel ships psql beside postgres

    return shown(Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql")


async def prepare_database(dsn: str, settings: Settings) -> None:
    """Apply the schema (a fresh database has none yet) and forget the account of a previous demo run,
    stopping its workflow first so that it does not wake up for an account that no longer exists."""
    pool = await create_pool(dsn, size=1)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            old = [r["id"] for r in await conn.fetch("SELECT id FROM accounts WHERE address = $1", DEMO_ADDRESS)]
        if old:
            from temporalio.service import RPCError

            from runtime.temporal import connect
            from workflows.account_sync import account_workflow_id

            client = await connect(settings)
            for account_id in old:
                try:
                    await client.get_workflow_handle(account_workflow_id(account_id)).terminate("demo restarted")
                except RPCError:
                    pass  # already closed
            async with pool.acquire() as conn:
                await conn.execute("DELETE FROM accounts WHERE id = ANY($1::text[])", old)
    finally:
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


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def detach(dovecot: DovecotServer) -> int:
    """Let the demo's Dovecot outlive this process; returns the pid leading its process group.

    devkit.dovecot ties a server to its creator (a watchdog kills it when the creator exits); the demo
    hands it over to `mailsync dev down` instead.
    """
    from devkit import dovecot as dovecot_module

    process, watchdog = dovecot._process, dovecot._watchdog
    assert process is not None
    dovecot._watchdog = None
    if watchdog is not None:
        watchdog.kill()  # killed, not closed: closing its stdin is what makes it stop Dovecot
        watchdog.wait()
    dovecot_module._LIVE.discard(dovecot)
    return process.pid


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


# What the SDK logs when a workflow task fails (a bug or a server-side refusal): Temporal retries it
# forever, so the progress bars would just stand still.
_WORKFLOW_TASK_FAILURES = ("Failed activation on workflow", "Error while completing workflow activation")
STALL_GRACE_S = 45.0


def sync_with_progress(account_id: str, worker: subprocess.Popen[bytes], worker_log: Path) -> bool:
    """`mailsync sync start --follow --wait`, giving up (with the worker's log) if the worker dies or its
    workflow tasks keep failing."""
    sync = subprocess.Popen([sys.executable, "-m", "cli", "sync", "start", account_id, "--follow", "--wait"], cwd=REPO)
    first_failure: float | None = None
    while sync.poll() is None:
        problem = None
        if worker.poll() is not None:
            problem = f"the worker exited (code {worker.returncode})"
        elif first_failure is None:
            try:
                text = worker_log.read_text(errors="replace")
            except OSError:
                text = ""
            if any(marker in text for marker in _WORKFLOW_TASK_FAILURES):
                first_failure = time.monotonic()
        elif time.monotonic() - first_failure > STALL_GRACE_S:
            problem = f"workflow tasks have been failing for {STALL_GRACE_S:.0f} s"
        if problem:
            sync.terminate()
            sync.wait()
            console.print(f"[red]{problem}[/red]; end of {shown(worker_log)}:")
            console.print(tail(worker_log), markup=False)
            return False
        time.sleep(0.2)
    if sync.returncode != 0:
        console.print(f"[red]sync failed[/red]; worker log: {shown(worker_log)}")
        console.print(tail(worker_log), markup=False)
        return False
    return True


def print_next_steps(settings: Settings, services: DevServices, dsn: str, dovecot: DovecotServer, dovecot_pid: int,
                     worker: subprocess.Popen[bytes], worker_log: Path, account_id: str) -> None:
    cli = shown(Path(sys.executable).parent / "mailsync")
    wf = quote(f"account-sync/{account_id}", safe="")
    console.print(
        "\n[bold]Left running for you[/bold] (stop all of it with `make down`):\n"
        f"  Temporal dev server  {services.temporal_address} (pid {services.temporal_pid}), web UI {services.web_ui}\n"
        f"  PostgreSQL           {dsn}\n"
        f"  Dovecot              {dovecot.host}:{dovecot.port}, user demo, password demo (pid {dovecot_pid})\n"
        f"  mailsync worker      pid {worker.pid}, log {shown(worker_log)}"
    )
    console.print(
        f"\nThis account's workflow in the web UI:\n  {services.web_ui}/namespaces/{settings.temporal_namespace}"
        f"/workflows/{wf}\n"
        f"\nTry the CLI on it:\n"
        f"  {cli} account list\n"
        f"  {cli} sync status {account_id}\n"
        f"  {cli} verify {account_id}\n"
        f"  {cli} export {account_id} --folder INBOX --maildir /tmp/demo-inbox\n"
        f"  {psql_binary()} '{dsn}' -c 'select subject, from_addr, sent_at from messages order by sent_at desc nulls last limit 10'\n"
        f"\nThe sync keeps running: deliver new mail to the demo server and see it arrive:\n"
        f"  {shown(Path(sys.executable))} -m devkit.demo deliver 3 && sleep 2 && {cli} sync status {account_id}\n"
        f"\nStop everything: make down   (or {cli} dev down)"
    )


def main() -> int:
    settings = get_settings()
    console.rule("[bold]mailsync demo")
    try:  # checked first, so that nothing is started for a demo that cannot run
        find_dovecot()
        if os.geteuid() != 0:
            raise PermissionError("the demo's private Dovecot runs as root: run `make demo` as root")
    except (DovecotNotInstalled, PermissionError) as exc:
        console.print(f"[red]cannot run the demo:[/red] {exc}")
        return 1
    previous = stop_registered(settings, DEMO_HELPERS)
    if previous:
        console.print(f"stopped the previous demo's {', '.join(previous)}")
    try:
        services = dev_up(settings)
    except (RuntimeError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    console.print(f"Temporal dev server {services.temporal_address}, web UI {services.web_ui}")
    dsn = resolve_database_url(settings)
    console.print(f"PostgreSQL {dsn}")
    asyncio.run(prepare_database(dsn, settings))

    demo_dir = settings.state_dir / "demo-dovecot"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    try:
        dovecot = start_dovecot(demo_dir)
    except (DovecotNotInstalled, PermissionError) as exc:
        console.print(f"[red]cannot start the demo's private Dovecot:[/red] {exc}")
        console.print("Temporal and PostgreSQL are running; `make down` stops them.")
        return 1
    dovecot.add_user("demo", "demo")
    count = dovecot.seed("demo", generate_sample_mailbox(seed=0))
    console.print(f"Dovecot on {dovecot.host}:{dovecot.port} with a generated mailbox of {count} messages (demo/demo)")

    worker_log = settings.state_dir / "demo-worker.log"
    worker = subprocess.Popen(
        [sys.executable, str(REPO / "worker.py")], cwd=REPO, stdin=subprocess.DEVNULL,
        stdout=worker_log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives the demo; `mailsync dev down` stops it
    )
    register_process(settings, "demo worker", worker.pid, str(worker_log))
    ok = False
    account_id: str | None = None
    try:
        env = os.environ.copy() | {"DEMO_PASSWORD": "demo"}
        added = mailsync(
            "account", "add", "imap", "--host", dovecot.host, "--port", str(dovecot.port), "--username", "demo",
            "--security", "none", "--password-env", "DEMO_PASSWORD", "--address", DEMO_ADDRESS, env=env, capture=True,
        )
        if added.returncode != 0:
            console.print(added.stderr.strip(), markup=False)
            return 1
        account_id = added.stdout.strip().splitlines()[-1]
        console.print(f"account {account_id} added; starting its sync (worker log: {shown(worker_log)})")
        started = time.monotonic()
        if not sync_with_progress(account_id, worker, worker_log):
            return 1
        took = time.monotonic() - started
        console.print(f"initial sync of {count} messages finished in {took:.1f} s; checking it against the server")
        if mailsync("verify", account_id).returncode != 0:
            console.print("[red]verify found differences between the server and PostgreSQL[/red]")
        asyncio.run(summary(dsn, account_id))
        dovecot_pid = detach(dovecot)
        register_process(settings, "demo Dovecot", dovecot_pid, f"{dovecot.host}:{dovecot.port}")
        print_next_steps(settings, services, dsn, dovecot, dovecot_pid, worker, worker_log, account_id)
        ok = True
        return 0
    finally:
        if not ok:
            if account_id is not None:  # it points at the demo's Dovecot, stopped below: not worth keeping
                mailsync("account", "remove", account_id, "--yes", capture=True)
            stop_worker(worker)
            dovecot.stop()
            stop_registered(settings, DEMO_HELPERS)
            console.print("The worker and Dovecot were stopped; Temporal and PostgreSQL are still running "
                          "(`make down` stops them).")


def deliver(count: int = 1) -> int:
    """`python -m devkit.demo deliver [N]`: APPEND N new messages to the running demo Dovecot's INBOX,
    so that the account's live sync can be watched picking them up."""
    import email.utils
    import imaplib
    import uuid

    settings = get_settings()
    found = [e for e in registered_processes(settings) if e.get("name") == "demo Dovecot"]
    if not found:
        console.print("the demo's Dovecot is not running: run `make demo` first")
        return 1
    host, _, port = str(found[0]["detail"]).rpartition(":")
    client = imaplib.IMAP4(host, int(port), timeout=10)
    client.login("demo", "demo")
    for n in range(1, count + 1):
        raw = (
            "From: Ada Lovelace <ada@example.com>\r\nTo: demo@mailsync.local\r\n"
            f"Subject: Live delivery {n} of {count}\r\nDate: {email.utils.formatdate(localtime=True)}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Delivered by `python -m devkit.demo deliver` while the sync is running.\r\n"
        ).encode()
        client.append("INBOX", None, None, raw)
    client.logout()
    console.print(f"delivered {count} message(s) to INBOX on {host}:{port}")
    return 0


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["deliver"]:
            code = deliver(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
        else:
            code = main()
    except KeyboardInterrupt:  # the finally blocks above have cleaned up; no traceback for a Ctrl-C
        console.print("demo interrupted")
        code = 130
    sys.stdout.flush()
    os._exit(code)
