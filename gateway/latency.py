"""Gateway latency benchmark: `python -m gateway.latency [-n 500] [--concurrency 8]`.

Starts its own Temporal dev server and PostgreSQL (pgserver) in a temp dir, runs the gateway as a
separate process (`python -m gateway`, so client and server do not share a GIL), and times real
HTTP requests end to end as a webhook sender sees them: signal-with-start for Gmail pushes and
signed events (the workflows exist after the first push; no worker runs, as the gateway never
waits for one), an unknown address (one indexed SELECT, no Temporal), health and readiness.
Prints p50/p90/p99/max in milliseconds per endpoint, then a concurrent run's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

TOKEN = "bench-token"
SECRET = "bench-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _push(address: str, history_id: int) -> dict[str, object]:
    data = base64.b64encode(json.dumps({"emailAddress": address, "historyId": history_id}).encode()).decode()
    return {"message": {"data": data, "messageId": uuid.uuid4().hex}, "subscription": "projects/p/subscriptions/s"}


def _event(account_id: str) -> tuple[bytes, dict[str, str]]:
    from gateway.auth import sign

    body = json.dumps({"type": "message.created", "id": uuid.uuid4().hex,
                       "data": {"object": {"grant_id": account_id, "folders": ["INBOX"]}}}).encode()
    return body, {"X-Mailsync-Signature": sign(SECRET, body), "Content-Type": "application/json"}


def _summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return (f"{name:<34} n={len(ms):<5} p50={q[49]:6.2f}  p90={q[89]:6.2f}  p99={q[98]:6.2f}  "
            f"max={ms[-1]:6.2f} ms")


async def _timed(n: int, call: Callable[[int], Awaitable[httpx.Response]], expect: int) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        r = await call(i)
        samples.append(time.perf_counter() - t0)
        if r.status_code != expect:
            raise RuntimeError(f"unexpected {r.status_code}: {r.text}")
    return samples


async def bench(n: int, concurrency: int, accounts: int) -> None:
    import pgserver
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from runtime.dev import temporal_binary
    from store.accounts import create_account
    from store.db import create_pool
    from store.migrate import migrate

    root = Path(tempfile.mkdtemp(prefix="mailsync-gw-bench-"))
    os.chmod(root, 0o755)  # pgserver runs PostgreSQL unprivileged when we are root
    pg = pgserver.get_server(root / "pg", cleanup_mode="delete")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), data_converter=pydantic_data_converter,
    )
    proc: subprocess.Popen[bytes] | None = None
    try:
        dsn = pg.get_uri()
        pool = await create_pool(dsn, size=2)
        ids = [f"acc_bench{i:03d}" for i in range(accounts)]
        async with pool.acquire() as conn:
            await migrate(conn)
            for account_id in ids:
                await create_account(conn, account_id=account_id, provider="gmail",
                                     address=f"{account_id}@bench.test", settings={}, credentials=b"x")
        await pool.close()

        port = _free_port()
        gw_env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSYNC_", "DATABASE_URL", "TEMPORAL_"))}
        gw_env.update({
            "DATABASE_URL": dsn, "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "MAILSYNC_STATE_DIR": str(root / "state"), "MAILSYNC_TASK_QUEUE": "gateway-bench",
            "MAILSYNC_PUBSUB_TOKEN": TOKEN, "MAILSYNC_WEBHOOK_SECRET": SECRET,
        })
        repo = Path(__file__).resolve().parent.parent
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"],
            cwd=repo, env=gw_env,
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("gateway did not become ready")
                await asyncio.sleep(0.1)

            gmail = lambda i: http.post(  # noqa: E731
                "/webhooks/gmail", params={"token": TOKEN}, json=_push(f"{ids[i % accounts]}@bench.test", 1000 + i))

            async def event(i: int) -> httpx.Response:
                body, headers = _event(ids[i % accounts])
                return await http.post("/webhooks/events", content=body, headers=headers)

            unknown = lambda i: http.post(  # noqa: E731
                "/webhooks/gmail", params={"token": TOKEN}, json=_push(f"nobody{i}@bench.test", 5))

            # Warm-up: starts every account's workflow (the first push is a start, later ones signal).
            await _timed(max(accounts, 20), gmail, 202)
            print(f"gateway latency, sequential, one keep-alive connection ({n} requests each):")
            print(_summary("POST /webhooks/gmail (signal)", await _timed(n, gmail, 202)))
            print(_summary("POST /webhooks/events (signal)", await _timed(n, event, 202)))
            print(_summary("POST /webhooks/gmail (unknown addr)", await _timed(n, unknown, 202)))
            print(_summary("GET /healthz", await _timed(n, lambda i: http.get("/healthz"), 200)))
            print(_summary("GET /readyz", await _timed(n, lambda i: http.get("/readyz"), 200)))

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, limits=limits) as http:
            per_worker = max(1, n // concurrency)
            gmail = lambda i: http.post(  # noqa: E731
                "/webhooks/gmail", params={"token": TOKEN}, json=_push(f"{ids[i % accounts]}@bench.test", 5000 + i))
            t0 = time.perf_counter()
            results = await asyncio.gather(*(_timed(per_worker, gmail, 202) for _ in range(concurrency)))
            wall = time.perf_counter() - t0
            samples = [s for r in results for s in r]
            print(f"\nconcurrent: {concurrency} senders x {per_worker} Gmail pushes, "
                  f"{len(samples) / wall:.0f} requests/s")
            print(_summary("POST /webhooks/gmail (signal)", samples))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await env.shutdown()
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="requests per endpoint (default 500)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent senders (default 8)")
    parser.add_argument("--accounts", type=int, default=10, help="gmail accounts to spread pushes over")
    args = parser.parse_args()
    asyncio.run(bench(args.n, args.concurrency, args.accounts))
    sys.stdout.flush()
    os._exit(0)  # temporalio clients can abort the interpreter at exit (sdk-python #300)


if __name__ == "__main__":
    main()
