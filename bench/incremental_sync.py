"""Benchmark: what one incremental pass of a live account costs, idle and with 10 or 1,000 server changes.

Seeds N messages into a private Dovecot, mirrors them with a live AccountSyncWorkflow run by a worker
process (private Temporal dev server, pgserver PostgreSQL), then measures `sync_now` passes: wall
time and the IMAP bytes that crossed a counting TCP proxy placed between the worker and Dovecot.
Between passes a second client (stdlib imaplib, straight to Dovecot, not counted) makes the changes:
a mix of APPENDed messages, flag changes (UID STORE) and expunges, spread over the folders. After
the largest change pass the mirror is checked against the server (UIDs and flags of every folder,
plus sha256 of every body with --full-verify). The idle pass is also measured on a second account of
N/10 messages: it must cost about the same (a LIST and a STATUS per folder, whatever the size).
Prints one line per measurement, with the pass's activities from the workflow history (count, time
from schedule to completion, hidden retries); the last line is one JSON object. `--bulk-flags N`
adds a pass after one `UID STORE` on N INBOX messages ("mark all as read").

    python bench/incremental_sync.py [--messages 20000] [--changes 0,10,1000] [--repeat 5] [--seed 0]
        [--full-verify] [--bulk-flags 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import imaplib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devkit.corpus import generate_corpus  # noqa: E402
from devkit.dovecot import DovecotServer, start_dovecot  # noqa: E402
from devkit.processes import stop_process  # noqa: E402

QUEUE = "bench-incremental"
FOLDERS = ("INBOX", "Sent", "Archive", "Lists/Python")


# ---- a TCP proxy that counts bytes ------------------------------------------------------------------


class CountingProxy:
    """Forward 127.0.0.1:`port` to a server and count the bytes each way (devkit's ChaosProxy has no counter).

    Runs its own asyncio loop in a daemon thread, like ChaosProxy. Bytes are counted as they are read
    from a side, before they are forwarded, so once the client has received them they are counted.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host, self.port = "127.0.0.1", 0
        self.down = self.up = self.connections = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="CountingProxy", daemon=True)

    def start(self) -> CountingProxy:
        ready = threading.Event()
        self._ready = ready
        self._thread.start()
        ready.wait(10)
        if not self.port:
            raise RuntimeError("counting proxy did not start")
        return self

    def stop(self) -> None:
        if self._server is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.down, self.up, self.connections

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            u_reader, u_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            c_writer.close()
            return
        pumps = [
            asyncio.ensure_future(self._pump(u_reader, c_writer, down=True)),
            asyncio.ensure_future(self._pump(c_reader, u_writer, down=False)),
        ]
        _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for writer in (c_writer, u_writer):
            if not writer.transport.is_closing():
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, down: bool) -> None:
        try:
            while data := await reader.read(256 * 1024):
                with self._lock:
                    if down:
                        self.down += len(data)
                    else:
                        self.up += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass


# ---- the second mail client: changes made on the server ---------------------------------------------


@dataclass
class Applied:
    new: int = 0
    flagged: int = 0
    expunged: int = 0


def _imap(server: DovecotServer, user: str) -> imaplib.IMAP4:
    conn = imaplib.IMAP4(server.host, server.port, timeout=120)
    conn.login(user, user)
    return conn


def _ok(typ: str, data: Any, what: str) -> Any:
    if typ != "OK":
        raise RuntimeError(f"{what}: {typ} {data!r}")
    return data


def _uid_set(uids: list[int]) -> str:
    return ",".join(str(u) for u in sorted(uids))


def apply_changes(server: DovecotServer, user: str, count: int, *, seed: int, max_attachment: int) -> Applied:
    """`count` changes, about a third each: APPEND, flag toggle (\\Flagged), expunge; round-robin over folders."""
    rng = random.Random(f"bench-changes-{seed}")
    n_new = count // 3 + (1 if count % 3 > 0 else 0)
    n_flag = count // 3 + (1 if count % 3 > 1 else 0)
    n_exp = count - n_new - n_flag
    applied = Applied()
    conn = _imap(server, user)
    try:
        per_flag = _spread(n_flag, FOLDERS)
        per_exp = _spread(n_exp, FOLDERS)
        for folder in FOLDERS:
            if not (per_flag[folder] or per_exp[folder]):
                continue
            _ok(*conn.select(f'"{folder}"'), f"SELECT {folder}")
            uids = [int(u) for u in _ok(*conn.uid("SEARCH", None, "ALL"), "UID SEARCH")[0].split()]
            picked = rng.sample(uids, min(len(uids), per_flag[folder] + per_exp[folder]))
            to_flag, to_expunge = picked[: per_flag[folder]], picked[per_flag[folder] :]
            if to_flag:
                data = _ok(*conn.uid("FETCH", _uid_set(to_flag), "(FLAGS)"), "UID FETCH FLAGS")
                flagged, unflagged = [], []
                for line in data:
                    text = (line[0] if isinstance(line, tuple) else line).decode()
                    m = re.search(r"UID (\d+)", text)
                    if m:
                        (flagged if "\\Flagged" in text else unflagged).append(int(m.group(1)))
                if flagged:
                    _ok(*conn.uid("STORE", _uid_set(flagged), "-FLAGS.SILENT", r"(\Flagged)"), "UID STORE")
                if unflagged:
                    _ok(*conn.uid("STORE", _uid_set(unflagged), "+FLAGS.SILENT", r"(\Flagged)"), "UID STORE")
                applied.flagged += len(flagged) + len(unflagged)
            if to_expunge:
                _ok(*conn.uid("STORE", _uid_set(to_expunge), "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE")
                _ok(*conn.uid("EXPUNGE", _uid_set(to_expunge)), "UID EXPUNGE")
                applied.expunged += len(to_expunge)
        fresh = generate_corpus(n_new, seed=10_000 + seed, folders=FOLDERS, max_attachment_bytes=max_attachment)
        for message in fresh:
            flags = "(" + " ".join(message.flags) + ")" if message.flags else None
            _ok(*conn.append(f'"{message.folder}"', flags, message.internaldate, message.raw), "APPEND")
            applied.new += 1
    finally:
        conn.logout()
    return applied


def bulk_flag(server: DovecotServer, user: str, count: int, folder: str = "INBOX") -> int:
    """One `UID STORE` setting a keyword on the first `count` messages of a folder ("mark all as read")."""
    conn = _imap(server, user)
    try:
        _ok(*conn.select(f'"{folder}"'), f"SELECT {folder}")
        uids = [int(u) for u in _ok(*conn.uid("SEARCH", None, "ALL"), "UID SEARCH")[0].split()][:count]
        if uids:
            _ok(*conn.uid("STORE", f"{uids[0]}:{uids[-1]}", "+FLAGS.SILENT", "($BenchBulk)"), "UID STORE")
        return len(uids)
    finally:
        conn.logout()


def _spread(n: int, folders: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(folders, 0)
    for i in range(n):
        out[folders[i % len(folders)]] += 1
    return out


def server_state(server: DovecotServer, user: str) -> dict[str, dict[int, frozenset[str]]]:
    """Every folder's UID → flags, as the server has them now."""
    conn = _imap(server, user)
    state: dict[str, dict[int, frozenset[str]]] = {}
    try:
        for line in _ok(*conn.list(), "LIST"):
            name = line.decode().rsplit(' "/" ', 1)[-1].strip().strip('"')
            if "\\Noselect" in line.decode() or conn.select(f'"{name}"', readonly=True)[0] != "OK":
                continue
            folder: dict[int, frozenset[str]] = {}
            for item in _ok(*conn.uid("FETCH", "1:*", "(UID FLAGS)"), "UID FETCH"):
                if not item:
                    continue
                text = (item[0] if isinstance(item, tuple) else item).decode()
                uid, flags = re.search(r"UID (\d+)", text), re.search(r"FLAGS \(([^)]*)\)", text)
                if uid is None or flags is None:
                    continue
                folder[int(uid.group(1))] = frozenset(f for f in flags.group(1).split() if f != "\\Recent")
            state[name] = folder
    finally:
        conn.logout()
    return state


# ---- Temporal: where a pass's time went -------------------------------------------------------------


async def last_event_id(handle: Any) -> int:
    last = 0
    async for event in handle.fetch_history_events():
        last = event.event_id
    return last


async def activity_breakdown(handle: Any, after: int) -> tuple[str, int]:
    """Activities of the events after `after`: 'name n×total s' per type (schedule → completion)."""
    from temporalio.api.enums.v1 import EventType

    scheduled: dict[int, tuple[str, float]] = {}
    totals: dict[str, list[float]] = defaultdict(list)
    retries: dict[str, int] = defaultdict(int)  # attempts beyond the first: hidden retries inside a pass
    last = after
    async for event in handle.fetch_history_events():
        last = event.event_id
        if event.event_id <= after:
            continue
        when = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = (event.activity_task_scheduled_event_attributes.activity_type.name, when)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            begun = scheduled.get(event.activity_task_started_event_attributes.scheduled_event_id)
            if begun is not None:
                retries[begun[0]] += max(0, event.activity_task_started_event_attributes.attempt - 1)
        elif event.event_type in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
        ):
            attrs = (event.activity_task_completed_event_attributes
                     if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                     else event.activity_task_failed_event_attributes)
            begun = scheduled.get(attrs.scheduled_event_id)
            if begun is not None:  # (one scheduled before the window, e.g. the initial sync's status write)
                totals[begun[0]].append(when - begun[1])
    text = ", ".join(
        f"{name} {len(t)}x {sum(t):.3f}s" + (f" ({retries[name]} retries)" if retries[name] else "")
        for name, t in totals.items()
    )
    return text or "no activities", last


# ---- the benchmark ----------------------------------------------------------------------------------


@dataclass
class Account:
    id: str
    user: str
    messages: int
    proxy: CountingProxy
    handle: Any = None
    events: int = 0


async def run_pass(acct: Account, label: str, changes: int) -> dict[str, Any]:
    from workflows.account_sync import AccountSyncWorkflow

    down0, up0, conns0 = acct.proxy.snapshot()
    start = time.perf_counter()
    result = await asyncio.wait_for(acct.handle.execute_update(AccountSyncWorkflow.sync_now), 600)
    wall = time.perf_counter() - start
    down1, up1, conns1 = acct.proxy.snapshot()
    breakdown, acct.events = await activity_breakdown(acct.handle, acct.events)
    in_wf = (result.finished_at - result.started_at).total_seconds() if result.finished_at else float("nan")
    row = {
        "changes": changes, "wall_s": round(wall, 3), "imap_bytes": down1 - down0, "imap_bytes_up": up1 - up0,
        "imap_connections": conns1 - conns0, "new": result.new, "updated": result.updated,
        "expunged": result.expunged, "folders_synced": len(result.folders),
    }
    errors = [f"{f.folder}: {f.error}" for f in result.folders if f.error]
    if errors:
        row["errors"] = errors
    print(f"{label:<28} changes={changes:<5} wall {wall:7.3f} s (in workflow {in_wf:.3f} s)  "
          f"IMAP {(down1 - down0) / 1024:9.1f} KB down {(up1 - up0) / 1024:7.1f} KB up "
          f"{conns1 - conns0} conn  new/updated/expunged {result.new}/{result.updated}/{result.expunged}  "
          f"[{breakdown}]", flush=True)
    for error in errors:
        print(f"  !! folder error: {error}", flush=True)
    return row


async def verify_mirror(pool: Any, server: DovecotServer, acct: Account, full: bool) -> None:
    """Counts, UIDs and flags of every folder against the server (and every body's sha256 with `full`)."""
    state = await asyncio.to_thread(server_state, server, acct.user)
    rows = await pool.fetch(
        """SELECT f.name, l.uid, l.flags FROM message_locations l JOIN folders f ON f.id = l.folder_id
           WHERE l.account_id = $1 AND l.uidvalidity = f.uidvalidity""", acct.id)
    db: dict[str, dict[int, frozenset[str]]] = defaultdict(dict)
    for r in rows:
        db[r["name"]][r["uid"]] = frozenset(r["flags"])
    total_locations = await pool.fetchval("SELECT count(*) FROM message_locations WHERE account_id = $1", acct.id)
    server_total = sum(len(f) for f in state.values())
    problems = []
    for name in sorted(set(state) | set(db)):
        s, d = state.get(name, {}), db.get(name, {})
        missing, extra = len(s.keys() - d.keys()), len(d.keys() - s.keys())
        flags = sum(1 for u in s.keys() & d.keys() if s[u] != d[u])
        if missing or extra or flags:
            problems.append(f"{name}: server {len(s)} db {len(d)} missing {missing} extra {extra} flags {flags}")
    if total_locations != server_total:
        problems.append(f"message_locations {total_locations} != server messages {server_total}")
    if full:
        from ops.verify import verify_account
        from providers.imap.client import ImapSession
        from providers.imap.settings import ImapSettings

        settings = ImapSettings(host=server.host, port=server.port, username=acct.user, security="none")
        async with pool.acquire() as conn, ImapSession(settings, acct.user) as session:
            report = await verify_account(conn, session, acct.id)
        if not report.identical:
            problems.append(f"verify_account: {report.totals()}")
    if problems:
        raise AssertionError(f"mirror of {acct.id} differs from the server: " + "; ".join(problems))
    print(f"verified {acct.id}: {server_total} messages in {len(state)} folders, "
          f"message_locations {total_locations}, UIDs and flags identical"
          + (", bodies identical (sha256)" if full else ""), flush=True)


async def bench(n: int, change_counts: list[int], repeat: int, seed: int, max_attachment: int,
                small_n: int, full_verify: bool, bulk_flags: int = 0) -> dict[str, Any]:
    import pgserver
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from runtime.dev import temporal_binary
    from store.accounts import create_account
    from store.crypto import CredentialBox
    from store.db import create_pool
    from store.migrate import migrate
    from workflows.account_sync import AccountSyncWorkflow, account_workflow_id
    from workflows.models import AccountSyncInput, SyncTuning

    root = Path(tempfile.mkdtemp(prefix="mailsync-bench-inc-"))
    os.chmod(root, 0o755)
    pg = pgserver.get_server(root / "pg", cleanup_mode="delete")
    dsn = pg.get_uri()
    dovecot = start_dovecot()  # in /dev/shm when available: seeding is file-creation bound
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), data_converter=pydantic_data_converter
    )
    worker = None
    accounts: list[Account] = []
    pool = None
    try:
        key = base64.b64encode(os.urandom(32)).decode()
        box = CredentialBox(base64.b64decode(key))
        pool = await create_pool(dsn, size=2)
        async with pool.acquire() as conn:
            await migrate(conn)
        for account_id, count, corpus_seed in (("large", n, seed), ("small", small_n, seed + 1)):
            dovecot.add_user(account_id, account_id)
            t0 = time.perf_counter()
            seeded = dovecot.seed(account_id, generate_corpus(
                count, seed=corpus_seed, folders=FOLDERS, max_attachment_bytes=max_attachment))
            print(f"seeded {seeded} messages for {account_id!r} in {time.perf_counter() - t0:.1f} s", flush=True)
            proxy = CountingProxy(dovecot.host, dovecot.port).start()
            accounts.append(Account(account_id, account_id, seeded, proxy))
            async with pool.acquire() as conn:
                await create_account(
                    conn, account_id=account_id, provider="imap", address=f"{account_id}@example.test",
                    settings={"host": proxy.host, "port": proxy.port, "username": account_id, "security": "none"},
                    credentials=box.seal(account_id.encode(), account_id),
                )
        large, small = accounts

        worker_env = os.environ.copy() | {
            "DATABASE_URL": dsn, "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "MAILSYNC_SECRET_KEY": key, "MAILSYNC_STATE_DIR": str(root / "state"), "MAILSYNC_TASK_QUEUE": QUEUE,
            "MAILSYNC_SEARCH_ATTRIBUTES": "false",  # the bench dev server has none registered
        }
        worker = subprocess.Popen(
            [sys.executable, str(REPO / "worker.py")], cwd=REPO, env=worker_env,
            stdout=(root / "worker.log").open("wb"), stderr=subprocess.STDOUT,
        )
        # production defaults except: no IDLE watcher (its connection would blur the byte counts) and
        # no timed poll (every pass is a sync_now)
        tuning = SyncTuning(poll_seconds=3600, watch=False)
        client = env.client
        t0 = time.perf_counter()
        for acct in accounts:
            await client.start_workflow(
                AccountSyncWorkflow.run, AccountSyncInput(account_id=acct.id, tuning=tuning),
                id=account_workflow_id(acct.id), task_queue=QUEUE,
            )
            acct.handle = client.get_workflow_handle(account_workflow_id(acct.id))

        async def initial(acct: Account) -> None:
            start = time.perf_counter()
            p = await asyncio.wait_for(acct.handle.execute_update(AccountSyncWorkflow.wait_initial), 1800)
            down, up, conns = acct.proxy.snapshot()
            print(f"initial sync {acct.id!r}: {p.done} msgs, {p.bytes / 1e6:.1f} MB in "
                  f"{time.perf_counter() - start:.1f} s; IMAP {down / 1e6:.1f} MB down over {conns} connections",
                  flush=True)
            acct.events = await last_event_id(acct.handle)

        await asyncio.gather(*(initial(a) for a in accounts))
        print(f"both initial syncs done in {time.perf_counter() - t0:.1f} s", flush=True)

        # the first pass after the initial sync (cursors just handed over) is reported, not counted
        for acct in accounts:
            await run_pass(acct, f"{acct.id} ({acct.messages}) warm-up", 0)

        passes: list[dict[str, Any]] = []
        idle: dict[str, list[float]] = {"large": [], "small": []}
        largest = max(change_counts) if change_counts else 0
        for i, changes in enumerate(change_counts):
            rows = []
            for r in range(repeat if changes == 0 else 1):
                if changes:
                    applied = await asyncio.to_thread(
                        apply_changes, dovecot, large.user, changes, seed=seed * 1000 + i * 10 + r,
                        max_attachment=max_attachment,
                    )
                    print(f"applied {changes} changes: {applied.new} APPENDed, {applied.flagged} flag changes, "
                          f"{applied.expunged} expunged", flush=True)
                row = await run_pass(large, f"large ({large.messages})", changes)
                if not changes:  # the small account's idle pass, interleaved: same conditions
                    idle["small"].append((await run_pass(small, f"small ({small.messages})", 0))["wall_s"])
                if changes:
                    got = (row["new"], row["updated"], row["expunged"])
                    want = (applied.new, applied.flagged, applied.expunged)
                    if got != want:
                        print(f"  !! pass reported new/updated/expunged {got}, expected {want}", flush=True)
                rows.append(row)
            if changes == 0:
                idle["large"] += [row["wall_s"] for row in rows]
            best = dict(rows[0])
            if len(rows) > 1:  # repeated idle passes: the median wall time, the rest from the first
                best["wall_s"] = round(statistics.median(x["wall_s"] for x in rows), 3)
                best["wall_s_all"] = [x["wall_s"] for x in rows]
            passes.append(best)
            if changes == largest and changes:
                await verify_mirror(pool, dovecot, large, full_verify)

        if not idle["large"]:  # 0 was not among --changes: measure the idle passes anyway
            for _ in range(repeat):
                idle["large"].append((await run_pass(large, f"large ({large.messages})", 0))["wall_s"])
                idle["small"].append((await run_pass(small, f"small ({small.messages})", 0))["wall_s"])
        bulk = None
        if bulk_flags:
            flagged = await asyncio.to_thread(bulk_flag, dovecot, large.user, bulk_flags)
            print(f"applied one bulk flag change: keyword set on {flagged} INBOX messages", flush=True)
            bulk = await run_pass(large, f"large ({large.messages}) bulk", flagged)
            if bulk["updated"] != flagged:
                print(f"  !! pass reported {bulk['updated']} updated, expected {flagged}", flush=True)

        # where a changed folder's time goes besides IMAP: its stored flags are read whole (store.changes.stored_flags)
        from store.changes import stored_flags
        async with pool.acquire() as conn:
            for r in await conn.fetch(
                "SELECT id, name, uidvalidity FROM folders WHERE account_id = $1 AND deleted_at IS NULL ORDER BY name",
                large.id,
            ):
                start = time.perf_counter()
                rows = await stored_flags(conn, r["id"], r["uidvalidity"], 1, None)
                print(f"  stored_flags({r['name']}): {len(rows)} rows in {(time.perf_counter() - start) * 1e3:.1f} ms",
                      flush=True)
        # a quiet pass after the churn: still near-constant?
        after = await run_pass(large, f"large ({large.messages}) after churn", 0)

        idle_small = statistics.median(idle["small"])
        idle_large = statistics.median(idle["large"])
        print(f"idle pass median: {idle_large:.3f} s at {large.messages} msgs, {idle_small:.3f} s at "
              f"{small.messages} msgs (ratio {idle_large / idle_small:.2f} for {large.messages / small.messages:.0f}x "
              f"the messages)", flush=True)
        return {
            "messages": large.messages, "small_messages": small.messages, "passes": passes,
            "idle_pass_small_s": round(idle_small, 3), "idle_pass_large_s": round(idle_large, 3),
            "idle_after_churn_s": after["wall_s"],
        } | ({"bulk_flag_pass": bulk} if bulk is not None else {})
    finally:
        stop_process(worker)
        if pool is not None:
            await pool.close()
        for acct in accounts:
            acct.proxy.stop()
        await env.shutdown()
        dovecot.stop()
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--changes", default="0,10,1000", help="comma-separated change counts, one pass each")
    parser.add_argument("--small", type=int, default=None, help="size of the second account (default N/10)")
    parser.add_argument("--repeat", type=int, default=5, help="idle passes per measurement (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-attachment", type=int, default=200_000)
    parser.add_argument("--full-verify", action="store_true", help="also compare every body's sha256")
    parser.add_argument("--bulk-flags", type=int, default=0,
                        help="then one more pass after a single UID STORE flagging this many INBOX messages")
    args = parser.parse_args()
    changes = [int(c) for c in args.changes.split(",") if c.strip()]
    small = args.small if args.small is not None else max(1, args.messages // 10)
    numbers = asyncio.run(bench(args.messages, changes, max(1, args.repeat), args.seed, args.max_attachment,
                                small, args.full_verify, args.bulk_flags))
    print(json.dumps(numbers), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
