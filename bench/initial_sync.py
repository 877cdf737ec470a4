"""Benchmark: full initial sync through a real worker vs. the raw aioimaplib fetch ceiling, one run.

Generates N messages into a private Dovecot, pulls them once with a bare batched `UID FETCH` loop
(the protocol ceiling), then runs AccountSyncWorkflow through a worker process against a private
Temporal dev server and PostgreSQL. Prints messages/s, MB/s and the worker's peak RSS; the last
line is one JSON object.

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

import aioimaplib
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devkit.corpus import generate_corpus  # noqa: E402
from devkit.dovecot import start_dovecot  # noqa: E402
from providers.imap.parse import parse_fetch, parse_list, parse_search  # noqa: E402


async def raw_fetch(host: str, port: int, user: str, password: str, batch: int = 500) -> tuple[int, int, float]:
    """The ceiling: one connection, every folder, `UID FETCH` of 500 UIDs at a time, nothing stored."""
    client = aioimaplib.IMAP4(host=host, port=port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(user, password)
    folders = parse_list((await client.list('""', "*")).lines)
    count = size = 0
    start = time.perf_counter()
    for f in folders:
        await client.select(f'"{f.name}"')
        uids = parse_search((await client.uid_search("ALL", charset=None)).lines)
        for i in range(0, len(uids), batch):
            chunk = uids[i : i + batch]
            resp = await client.uid("fetch", f"{chunk[0]}:{chunk[-1]}", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
            for m in parse_fetch(resp.lines):
                count += 1
                size += len(m.raw)
    elapsed = time.perf_counter() - start
    await client.logout()
    return count, size, elapsed


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                rss = sum(p.memory_info().rss for p in [self.proc, *self.proc.children(recursive=True)])
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            await asyncio.sleep(0.1)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()


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

        raw_count, raw_bytes, raw_s = await raw_fetch(dovecot.host, dovecot.port, "bench", "bench")
        print(f"raw aioimaplib UID FETCH: {raw_count} msgs, {raw_bytes / 1e6:.1f} MB in {raw_s:.2f} s "
              f"= {raw_count / raw_s:,.0f} msgs/s, {raw_bytes / 1e6 / raw_s:.1f} MB/s", flush=True)

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
        sampler = RssSampler(worker.pid)
        sampler.start()
        tuning = SyncTuning()  # production defaults: 500-UID pages, 2 connections
        start = time.perf_counter()
        result = await env.client.execute_workflow(
            AccountSyncWorkflow.run, AccountSyncInput(account_id="bench", tuning=tuning, live=False),
            id="account-sync/bench", task_queue="bench",
        )
        sync_s = time.perf_counter() - start
        sampler.stop()
        p = result.progress
        stored = await pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM messages WHERE account_id = 'bench'")
        locations = await pool.fetchval("SELECT count(*) FROM message_locations WHERE account_id = 'bench'")
        await pool.close()
        assert locations == raw_count, f"sync stored {locations} locations, server has {raw_count}"
        print(f"mailsync initial sync: {p.done} msgs, {p.bytes / 1e6:.1f} MB in {sync_s:.2f} s "
              f"= {p.done / sync_s:,.0f} msgs/s, {p.bytes / 1e6 / sync_s:.1f} MB/s "
              f"({stored['n']} distinct bodies stored)", flush=True)
        print(f"worker peak RSS: {sampler.peak / 2**20:.0f} MB", flush=True)
        sync_rate = p.done / sync_s
        raw_rate = raw_count / raw_s
        return {
            "messages": raw_count, "bytes": raw_bytes, "sync_msgs_per_s": round(sync_rate, 1),
            "raw_fetch_msgs_per_s": round(raw_rate, 1), "ratio": round(sync_rate / raw_rate, 3),
            "worker_peak_rss_mb": round(sampler.peak / 2**20, 1),
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
