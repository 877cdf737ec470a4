"""Benchmark: initial sync of a Gmail account through a real worker, against the local Gmail API fake.

Seeds N corpus messages into `devkit.gmail_fake` (in this process, enforcing `--quota` units per user
per second over a sliding window, as Gmail does), then runs AccountSyncWorkflow (live=False) through
`worker.py` against a private Temporal dev server and PostgreSQL, with `SyncTuning(gmail_quota=--quota)`.
Measures the sync's wall time, messages/s and MB/s (raw bytes served), the quota units it actually
consumed (total, per second, the fullest 1 s window against the limit, 429s), the time until the first
1,000 messages are in PostgreSQL (and how many of those are the 1,000 newest: the listing is newest
first), the peak RSS of the worker's process tree and the ceiling the quota implies: a raw
`messages.get` costs 5 units and each share's bucket keeps a fifth of its window as headroom, so at
most quota * 0.8 / 5 messages/s. The mirror is checked cheaply at the end (row count, set of sha256
against the fake's). Seeding time is printed on its own, outside the sync time. The last line is one
JSON object.

At Google's 250 units/s a 20k mailbox takes 10-15 minutes (at most 40 msgs/s, and less as the workflow
splits the quota between its children and the listing): the quota sets the pace.
`--messages 2000 --quota 2500` is a quick check.

    python bench/gmail_sync.py [--messages 20000] [--quota 250] [--children 2] [--thread-batch 100]
        [--seed 0] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from initial_sync import ProcessSampler, _busy_cores, _temporal_pid, _worker_ready  # noqa: E402

from devkit.gmail_fake import GmailFake  # noqa: E402
from devkit.processes import stop_process  # noqa: E402

QUEUE = "bench-gmail"
USER = "bench@example.com"
FOLDERS = ("INBOX", "Sent", "Archive", "Lists/Python", "Spam", "Trash")
GET_COST = 5        # units of one messages.get (each part of a batch is charged alone)
HEADROOM = 0.2      # TokenBucket.for_quota leaves a fifth of every window unused
BURST_SHARE = 1 / 8  # ... and lets an eighth of the rest go at once: the steady refill is 0.8 * 7/8 of the quota
FIRST = 1000        # "time to first 1,000 recent messages"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


@dataclass
class Watch:
    """What the poller saw: (seconds since start, rows, units charged) every ~0.2 s, and the first-N mark."""

    target: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    first_s: float | None = None
    first_ids: set[str] = field(default_factory=set)


async def poll(pool: Any, fake: GmailFake, account_id: str, start: float, watch: Watch, every: float = 0.2) -> None:
    async with pool.acquire() as conn:
        while True:
            n = await conn.fetchval("SELECT count(*) FROM gmail_messages WHERE account_id = $1", account_id)
            now = time.perf_counter() - start
            watch.samples.append((now, n, fake.stats(USER).total_units))
            if watch.first_s is None and n >= watch.target:
                watch.first_s = now
                rows = await conn.fetch("SELECT gmail_id FROM gmail_messages WHERE account_id = $1", account_id)
                watch.first_ids = {r["gmail_id"] for r in rows}
            await asyncio.sleep(every)


async def child_share(client: Any, workflow_id: str) -> float | None:
    """Units/s the account workflow gave its first ThreadSyncWorkflow child (its input, from the history)."""
    from temporalio.api.enums.v1 import EventType

    from workflows.models import ThreadSyncInput

    history = await client.get_workflow_handle(workflow_id).fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            payloads = event.start_child_workflow_execution_initiated_event_attributes.input.payloads
            [inp] = await client.data_converter.decode(payloads, [ThreadSyncInput])
            return float(inp.units_per_second)
    return None


def steady_rates(samples: list[tuple[float, int, int]], n: int) -> tuple[float | None, float | None]:
    """Messages/s and units/s between 10 % and 90 % of the mailbox stored (no ramp-up, no tail)."""
    lo = next((s for s in samples if s[1] >= n * 0.1), None)
    hi = next((s for s in samples if s[1] >= n * 0.9), None)
    if lo is None or hi is None or hi[0] - lo[0] < 1.0:
        return None, None
    dt = hi[0] - lo[0]
    return (hi[1] - lo[1]) / dt, (hi[2] - lo[2]) / dt


async def bench(n: int, quota: int, children: int, thread_batch: int, seed: int, max_attachment: int,
                keep: bool, timeout: float) -> dict[str, Any]:
    import pgserver
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from providers.gmail import GmailCredentials
    from runtime.dev import temporal_binary
    from store.accounts import create_account
    from store.crypto import CredentialBox
    from store.db import create_pool
    from store.migrate import migrate
    from workflows.account_sync import AccountSyncWorkflow, account_workflow_id
    from workflows.models import AccountSyncInput, SyncTuning

    load_before = _load()
    print(f"load average before: {load_before} ({os.cpu_count()} cores)", flush=True)
    root = Path(tempfile.mkdtemp(prefix="mailsync-bench-gmail-"))
    os.chmod(root, 0o755)
    pg = pgserver.get_server(root / "pg", cleanup_mode="stop" if keep else "delete")
    dsn = pg.get_uri()
    fake = GmailFake.start(quota_limit=quota)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), data_converter=pydantic_data_converter
    )
    worker = None
    poller: asyncio.Task[None] | None = None
    pool = None
    try:
        fake.add_user(USER)
        t0 = time.perf_counter()
        fake.seed(USER, n, seed=seed, folders=FOLDERS, max_attachment_bytes=max_attachment)
        seed_s = time.perf_counter() - t0
        newest = fake.message_ids(USER)  # newest first, as messages.list serves them
        assert len(newest) == n, (len(newest), n)
        print(f"seeded {n} messages into the Gmail fake in {seed_s:.1f} s ({n / seed_s:,.0f} msgs/s; "
              f"not part of the sync time)", flush=True)

        key = base64.b64encode(os.urandom(32)).decode()
        box = CredentialBox(base64.b64decode(key))
        account_id = "gm_bench"
        creds = GmailCredentials.oauth("mailsync-bench", "bench-secret", fake.refresh_token(USER),
                                       token_uri=fake.token_uri)
        pool = await create_pool(dsn, size=3)
        async with pool.acquire() as conn:
            await migrate(conn)
            await create_account(
                conn, account_id=account_id, provider="gmail", address=USER,
                settings={"api_endpoint": fake.endpoint},
                credentials=box.seal(creds.model_dump_json().encode(), account_id),
            )
        worker_env = os.environ.copy() | {
            "DATABASE_URL": dsn, "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "MAILSYNC_SECRET_KEY": key, "MAILSYNC_STATE_DIR": str(root / "state"), "MAILSYNC_TASK_QUEUE": QUEUE,
            "MAILSYNC_SEARCH_ATTRIBUTES": "false",  # the bench dev server has none registered
            "MAILSYNC_GMAIL_QUOTA": str(quota), "MAILSYNC_GMAIL_CHILDREN": str(children),
            "MAILSYNC_GMAIL_THREAD_BATCH": str(thread_batch),
        }
        worker = subprocess.Popen(
            [sys.executable, str(REPO / "worker.py")], cwd=REPO, env=worker_env,
            stdout=(root / "worker.log").open("wb"), stderr=subprocess.STDOUT,
        )
        await _worker_ready(worker.pid, root / "worker.log")  # the clock starts once every worker process polls
        sampler = ProcessSampler(
            {"worker": worker.pid, "postgres": pg.get_pid(), "temporal": _temporal_pid(env),
             "gmail_fake+bench": os.getpid()},  # the fake serves from a thread of this process
            rss_of="worker",
        )
        tuning = SyncTuning(gmail_quota=quota, gmail_children=children, gmail_thread_batch=thread_batch)
        fake.reset_stats()  # seeding charges nothing, but start from zero anyway
        watch = Watch(target=min(FIRST, n))
        sampler.start()
        machine = _busy_cores()
        start = time.perf_counter()
        poller = asyncio.create_task(poll(pool, fake, account_id, start, watch))
        result = await asyncio.wait_for(env.client.execute_workflow(
            AccountSyncWorkflow.run, AccountSyncInput(account_id=account_id, tuning=tuning, live=False),
            id=account_workflow_id(account_id), task_queue=QUEUE,
        ), timeout)
        sync_s = time.perf_counter() - start
        cpu = sampler.stop()
        busy = machine()
        poller.cancel()
        stats = fake.stats(USER)
        load_after = _load()
        p = result.progress

        # the mirror, cheaply: every message once, the same set of bodies (sha256) as the fake serves
        stored = await pool.fetchval("SELECT count(*) FROM gmail_messages WHERE account_id = $1", account_id)
        live = await pool.fetchval(
            "SELECT count(*) FROM gmail_messages WHERE account_id = $1 AND deleted_at IS NULL", account_id)
        shas = {bytes(r["sha256"]) for r in await pool.fetch(
            """SELECT DISTINCT m.sha256 FROM gmail_messages g JOIN messages m ON m.id = g.message_pk
               WHERE g.account_id = $1""", account_id)}
        fake_shas = {hashlib.sha256(fake.message(USER, mid).raw).digest() for mid in newest}
        fake_bytes = sum(len(fake.message(USER, mid).raw) for mid in newest)
        mirror_ok = stored == n and live == n and shas == fake_shas

        first_target = watch.target
        overlap = len(watch.first_ids & set(newest[:first_target]))
        steady_msgs, steady_units = steady_rates(watch.samples, n)
        raw_mb = stats.raw_bytes_served / 1e6
        ceiling = quota * (1 - HEADROOM) / GET_COST
        # what the workflow actually gave each child (the rest of the quota is the listing's share)
        share = await child_share(env.client, account_workflow_id(account_id)) or quota / children
        share_ceiling = children * share * (1 - HEADROOM) / GET_COST
        # sustained: each bucket refills at (1 - headroom) * (1 - 1/8) of its share; only its burst comes on top
        refill_ceiling = share_ceiling * (1 - BURST_SHARE)
        per_batch = stats.calls.get("messages.get", 0) / max(1, stats.batch_requests)
        rate = p.done / sync_s

        print(f"status {result.phase.value}: {p.done} msgs, {raw_mb:.1f} MB raw in {sync_s:.2f} s "
              f"= {rate:,.1f} msgs/s, {raw_mb / sync_s:.2f} MB/s", flush=True)
        if steady_msgs is not None:
            print(f"steady state (10 %..90 % stored): {steady_msgs:,.1f} msgs/s, {steady_units:,.1f} units/s", flush=True)
        print(f"quota: {stats.total_units:,} units = {stats.total_units / sync_s:,.1f} units/s of {quota} "
              f"({stats.total_units / sync_s / quota:.0%}); fullest 1 s window {stats.max_units_in_window} "
              f"(limit {quota}); {stats.rate_limited} rate-limited answers (429); calls {dict(sorted(stats.calls.items()))}; "
              f"{stats.http_requests} HTTP requests, {stats.batch_requests} batches", flush=True)
        print(f"ceiling at {quota} units/s: {ceiling:,.1f} msgs/s (quota x 0.8 / 5); sync at {rate / ceiling:.2f} of it "
              f"({children} children at {share:,.1f} units/s each: {share_ceiling:,.1f} msgs/s, "
              f"{rate / share_ceiling:.2f} of that; their buckets' steady refill "
              f"{refill_ceiling:,.1f} msgs/s: {rate / refill_ceiling:.2f})", flush=True)
        print(f"{per_batch:.1f} messages.get per batch request on average", flush=True)
        if watch.first_s is not None:
            print(f"first {first_target:,} messages in PostgreSQL after {watch.first_s:.2f} s; "
                  f"{overlap} of the {first_target:,} newest among the {len(watch.first_ids):,} stored then", flush=True)
        print(f"worker peak RSS: {sampler.peak / 2**20:.0f} MB ({sampler.processes} processes)", flush=True)
        print("CPU per message: " + ", ".join(f"{k} {v / max(p.done, 1) * 1e3:.3f} ms" for k, v in cpu.items())
              + f" (machine {busy:.2f} cores busy of {os.cpu_count()}; load average after: {load_after})", flush=True)
        print(f"mirror: {stored} gmail_messages ({live} live) for {n} in the fake; {len(shas)} distinct sha256 "
              f"stored, {len(fake_shas)} in the fake, sets {'equal' if shas == fake_shas else 'DIFFER'}: "
              f"{'OK' if mirror_ok else 'MISMATCH'}", flush=True)

        def r(x: float | None, d: int = 1) -> float | None:
            return None if x is None else round(x, d)

        return {
            "messages": n, "quota": quota, "children": children, "thread_batch": thread_batch,
            "phase": result.phase.value, "synced": p.done,
            "seed_s": round(seed_s, 1), "sync_s": round(sync_s, 2),
            "sync_msgs_per_s": round(rate, 1), "sync_mb_per_s": round(raw_mb / sync_s, 2),
            "raw_bytes": stats.raw_bytes_served, "fake_bytes": fake_bytes,
            "steady_msgs_per_s": r(steady_msgs), "steady_units_per_s": r(steady_units),
            "quota_units": stats.total_units, "quota_units_per_s": round(stats.total_units / sync_s, 1),
            "quota_max_units_in_window": stats.max_units_in_window, "rate_limited_429": stats.rate_limited,
            "calls": dict(sorted(stats.calls.items())), "http_requests": stats.http_requests,
            "batch_requests": stats.batch_requests,
            "ceiling_msgs_per_s": round(ceiling, 1), "ratio_to_ceiling": round(rate / ceiling, 3),
            "child_units_per_s": round(share, 2), "children_share_ceiling_msgs_per_s": round(share_ceiling, 1),
            "ratio_to_children_share_ceiling": round(rate / share_ceiling, 3),
            "children_refill_ceiling_msgs_per_s": round(refill_ceiling, 1),
            "ratio_to_children_refill_ceiling": round(rate / refill_ceiling, 3),
            "gets_per_batch": round(per_batch, 1),
            "first_1000_s": r(watch.first_s, 2), "first_1000_target": first_target,
            "first_1000_newest_overlap": overlap, "first_1000_stored_at_mark": len(watch.first_ids),
            "worker_peak_rss_mb": round(sampler.peak / 2**20, 1), "worker_processes": sampler.processes,
            "cpu_ms_per_msg": {k: round(v / max(p.done, 1) * 1e3, 3) for k, v in cpu.items()},
            "machine_busy_cores": round(busy, 2), "load_before": load_before, "load_after": load_after,
            "mirror": {"gmail_messages": stored, "live": live, "distinct_sha256": len(shas),
                       "fake_distinct_sha256": len(fake_shas), "sha256_sets_equal": shas == fake_shas,
                       "ok": mirror_ok},
        }
    finally:
        if poller is not None:
            poller.cancel()
        if pool is not None:
            await pool.close()
        stop_process(worker)
        await env.shutdown()
        fake.stop()
        pg.cleanup()
        if keep:
            print(f"kept {root} (worker.log, PostgreSQL data: pgserver.get_server('{root / 'pg'}'))", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--quota", type=int, default=250,
                        help="units/s per user: the fake enforces it and the sync's gmail_quota is set to it "
                             "(Google's per-user limit: 250)")
    parser.add_argument("--children", type=int, default=2, help="ThreadSyncWorkflow children in flight")
    parser.add_argument("--thread-batch", type=int, default=100, help="threads per child")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-attachment", type=int, default=2_000_000)
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up on the sync after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (worker log, database)")
    args = parser.parse_args()
    numbers = asyncio.run(bench(args.messages, args.quota, args.children, args.thread_batch, args.seed,
                                args.max_attachment, args.keep, args.timeout))
    print(json.dumps(numbers), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
