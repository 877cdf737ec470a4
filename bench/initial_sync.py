"""Benchmark: full initial sync through a real worker vs. the raw aioimaplib fetch ceiling, one run.

Generates N messages into a private Dovecot, pulls them with a bare batched `UID FETCH` loop (the
protocol ceiling, bench/raw_fetch.py) in batches of 500: once with aioimaplib as published (in a
process of its own) and once with the fixes mailsync applies to it (providers/imap/wire.py, which
make aioimaplib itself several times faster), and in batches of 100 (a chunk: what the sync fetches
per command). Then runs AccountSyncWorkflow through `worker.py` (as many worker processes as its
defaults start) against a private Temporal dev server and PostgreSQL. Prints messages/s, MB/s, the
peak RSS of the worker's whole process tree, and the CPU time each party spent per message; the
last line is one JSON object. `ratio` is against the published aioimaplib's 500-UID loop,
`ratio_vs_patched` against the same loop on the patched client, `ratio_vs_best_raw` against the
fastest loop.

    python bench/initial_sync.py [--messages 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import providers.imap.client  # noqa: E402,F401  (the aioimaplib adjustments the worker runs with)
from devkit.corpus import generate_corpus  # noqa: E402
from devkit.dovecot import start_dovecot  # noqa: E402
from bench.raw_fetch import raw_fetch  # noqa: E402

CHUNK = 100  # SyncTuning().chunk_size: UIDs per UID FETCH in the sync


class ProcessSampler:
    """Peak RSS of the worker's process tree, CPU seconds of each party's process tree (10 Hz)."""

    def __init__(self, roots: dict[str, int], rss_of: str) -> None:
        self.roots = {name: psutil.Process(pid) for name, pid in roots.items()}
        self.rss_of = rss_of
        self.peak = 0
        self.processes = 0
        self._start: dict[int, float] = {}
        self._last: dict[tuple[str, int], float] = {}
        self._task: asyncio.Task[None] | None = None

    def _sample(self, first: bool) -> None:
        for name, root in self.roots.items():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            rss = 0
            for p in tree:
                try:
                    t = p.cpu_times()
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue
                cpu = t.user + t.system
                if first:
                    self._start[p.pid] = cpu
                self._last[(name, p.pid)] = cpu
            if name == self.rss_of:
                self.peak = max(self.peak, rss)
                self.processes = max(self.processes, len(tree))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self._sample(first=False)

    def start(self) -> None:
        self._sample(first=True)
        self._task = asyncio.create_task(self._run())

    def stop(self) -> dict[str, float]:
        if self._task:
            self._task.cancel()
        self._sample(first=False)
        cpu: dict[str, float] = {}
        for (name, pid), value in self._last.items():
            cpu[name] = cpu.get(name, 0.0) + value - self._start.get(pid, 0.0)
        return cpu


async def _worker_ready(pid: int, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        processes = 1 + len(psutil.Process(pid).children(recursive=True))
        if log.read_text(errors="replace").count("worker polling task queue") >= processes:
            return
    raise RuntimeError(f"the worker did not start within {timeout:g} s: see {log}")


def _busy_cores():  # type: ignore[no-untyped-def]
    """A clock on the whole machine's CPU: call the result for the busy cores (average) since then."""
    start, t0 = psutil.cpu_times(), time.perf_counter()

    def busy() -> float:
        now = psutil.cpu_times()
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (start.idle + getattr(start, "iowait", 0.0))
        return max(0.0, (time.perf_counter() - t0) * (psutil.cpu_count() or 1) - idle) / (time.perf_counter() - t0)

    return busy


def _temporal_pid(env) -> int:  # type: ignore[no-untyped-def]
    port = env.client.service_client.config.target_host.rsplit(":", 1)[1]
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "start-dev" in cmd and port in cmd:
            return p.pid
    raise RuntimeError("temporal dev server process not found")


async def bench(n: int, seed: int, max_attachment: int) -> dict[str, float | int]:
    import pgserver
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from runtime.dev import temporal_binary
    from store.accounts import create_account
    from store.crypto import CredentialBox
    from store.db import create_pool
    from store.migrate import migrate
    from workflows.account_sync import AccountSyncWorkflow
    from workflows.models import AccountSyncInput, SyncTuning

    root = Path(tempfile.mkdtemp(prefix="mailsync-bench-"))
    os.chmod(root, 0o755)
    pg = pgserver.get_server(root / "pg", cleanup_mode="delete")
    dsn = pg.get_uri()
    dovecot = start_dovecot(root / "dovecot")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), data_converter=pydantic_data_converter
    )
    worker = None
    try:
        dovecot.add_user("bench", "bench")
        t0 = time.perf_counter()
        seeded = dovecot.seed("bench", generate_corpus(n, seed=seed, max_attachment_bytes=max_attachment))
        print(f"seeded {seeded} messages in {time.perf_counter() - t0:.1f} s", flush=True)

        machine = _busy_cores()
        stock = json.loads(subprocess.run(  # aioimaplib as published: a process without mailsync's patches
            [sys.executable, str(REPO / "bench" / "raw_fetch.py"), dovecot.host, str(dovecot.port), "bench", "bench"],
            check=True, capture_output=True, text=True,
        ).stdout)
        raw_busy = machine()
        raw_count, raw_bytes, raw_s = stock["count"], stock["bytes"], stock["seconds"]
        print(f"raw aioimaplib (as published) UID FETCH, 500 per command: {raw_count} msgs, {raw_bytes / 1e6:.1f} MB "
              f"in {raw_s:.2f} s = {raw_count / raw_s:,.0f} msgs/s, {raw_bytes / 1e6 / raw_s:.1f} MB/s", flush=True)
        patched_count, _, patched_s = await raw_fetch(dovecot.host, dovecot.port, "bench", "bench")
        assert patched_count == raw_count
        print(f"raw aioimaplib with mailsync's fixes (providers/imap/wire.py), 500 per command: "
              f"{raw_count / patched_s:,.0f} msgs/s", flush=True)
        _, _, chunk_s = await raw_fetch(dovecot.host, dovecot.port, "bench", "bench", batch=CHUNK)
        print(f"raw aioimaplib with mailsync's fixes, {CHUNK} per command: {raw_count / chunk_s:,.0f} msgs/s", flush=True)

        key = base64.b64encode(os.urandom(32)).decode()
        pool = await create_pool(dsn, size=2)
        async with pool.acquire() as conn:
            await migrate(conn)
            await create_account(
                conn, account_id="bench", provider="imap", address="bench@example.test",
                settings={"host": dovecot.host, "port": dovecot.port, "username": "bench", "security": "none"},
                credentials=CredentialBox(base64.b64decode(key)).seal(b"bench", "bench"),
            )
        worker_env = os.environ.copy() | {
            "DATABASE_URL": dsn, "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "MAILSYNC_SECRET_KEY": key, "MAILSYNC_STATE_DIR": str(root / "state"), "MAILSYNC_TASK_QUEUE": "bench",
            "MAILSYNC_SEARCH_ATTRIBUTES": "false",  # the bench dev server has none registered
        }
        worker = subprocess.Popen(
            [sys.executable, str(REPO / "worker.py")], cwd=REPO, env=worker_env,
            stdout=(root / "worker.log").open("wb"), stderr=subprocess.STDOUT,
        )
        await _worker_ready(worker.pid, root / "worker.log")  # the clock starts once every worker process polls
        sampler = ProcessSampler(
            {"worker": worker.pid, "postgres": pg.get_pid(), "dovecot": dovecot._process.pid,  # type: ignore[union-attr]
             "temporal": _temporal_pid(env)},
            rss_of="worker",
        )
        sampler.start()
        machine = _busy_cores()
        tuning = SyncTuning()  # production defaults (page size, chunk size, 2 connections)
        start, started_at = time.perf_counter(), time.time()
        result = await env.client.execute_workflow(
            AccountSyncWorkflow.run, AccountSyncInput(account_id="bench", tuning=tuning, live=False),
            id="account-sync/bench", task_queue="bench",
        )
        sync_s = time.perf_counter() - start
        cpu = sampler.stop()
        sync_busy = machine()
        await _print_pages(env.client, started_at)  # after the CPU sampling: reading histories costs too
        p = result.progress
        stored = await pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM messages WHERE account_id = 'bench'")
        locations = await pool.fetchval("SELECT count(*) FROM message_locations WHERE account_id = 'bench'")
        await pool.close()
        assert locations == raw_count, f"sync stored {locations} locations, server has {raw_count}"
        print(f"mailsync initial sync: {p.done} msgs, {p.bytes / 1e6:.1f} MB in {sync_s:.2f} s "
              f"= {p.done / sync_s:,.0f} msgs/s, {p.bytes / 1e6 / sync_s:.1f} MB/s "
              f"({stored['n']} distinct bodies stored)", flush=True)
        print(f"worker peak RSS: {sampler.peak / 2**20:.0f} MB ({sampler.processes} processes)", flush=True)
        print("CPU per message: " + ", ".join(f"{k} {v / p.done * 1e3:.3f} ms" for k, v in cpu.items())
              + f" (total {sum(cpu.values()) / sync_s:.2f} cores busy of {os.cpu_count()}; the whole machine "
              f"{sync_busy:.2f}: other processes and the kernel take the rest)", flush=True)
        sync_rate = p.done / sync_s
        raw_rate = raw_count / raw_s
        patched_rate = raw_count / patched_s
        best_raw = max(raw_rate, patched_rate, raw_count / chunk_s)
        return {
            "messages": raw_count, "bytes": raw_bytes, "sync_msgs_per_s": round(sync_rate, 1),
            "raw_fetch_msgs_per_s": round(raw_rate, 1), "ratio": round(sync_rate / raw_rate, 3),
            "worker_peak_rss_mb": round(sampler.peak / 2**20, 1),
            "raw_fetch_patched_msgs_per_s": round(patched_rate, 1), "ratio_vs_patched": round(sync_rate / patched_rate, 3),
            "raw_fetch_chunk_msgs_per_s": round(raw_count / chunk_s, 1), "ratio_vs_best_raw": round(sync_rate / best_raw, 3),
            "worker_processes": sampler.processes,
            # whole-machine busy cores while the 500-UID raw loop and the sync ran (others' load shows here)
            "machine_busy_cores": {"raw_fetch": round(raw_busy, 2), "sync": round(sync_busy, 2)},
            "cpu_ms_per_msg": {k: round(v / p.done * 1e3, 3) for k, v in cpu.items()},
        }
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        await env.shutdown()
        dovecot.stop()
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def _print_pages(client, started_at: float) -> None:  # type: ignore[no-untyped-def]
    """Per folder child, from its history: when its first activity started and its last one ended
    (seconds after the sync started: the critical path), each activity's seconds and the worker process
    (pid) that ran it, and the idle time between one activity's end and the next one's start
    (negative: two pages in flight at once, on a lent connection)."""
    async for wf in client.list_workflows("WorkflowId STARTS_WITH 'account-sync/bench/folder/'"):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        started: dict[int, tuple[float, str]] = {}
        spans: list[tuple[float, float, str]] = []
        for e in history.events:
            at = e.event_time.ToDatetime().timestamp()
            if e.HasField("activity_task_started_event_attributes"):
                a = e.activity_task_started_event_attributes
                started[a.scheduled_event_id] = (at, a.identity.split("@")[0])
            elif e.HasField("activity_task_completed_event_attributes"):
                begun, pid = started[e.activity_task_completed_event_attributes.scheduled_event_id]
                spans.append((begun, at, pid))
        if not spans:
            continue
        spans.sort()
        window = f"{spans[0][0] - started_at:.1f}..{max(b for _, b, _ in spans) - started_at:.1f} s"
        print(f"  {wf.id} (run {wf.run_id[-6:]}, {window}): " + " ".join(f"{b - a:.2f}s@{pid}" for a, b, pid in spans)
              + " | gaps " + " ".join(f"{n[0] - p[1]:.3f}" for p, n in zip(spans, spans[1:])), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-attachment", type=int, default=2_000_000)
    args = parser.parse_args()
    numbers = asyncio.run(bench(args.messages, args.seed, args.max_attachment))
    print(json.dumps(numbers), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
