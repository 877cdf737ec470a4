"""The raw-fetch ceiling: one aioimaplib connection, every folder, batched `UID FETCH`, nothing stored.

Imported by the benchmarks (in their process it runs on the aioimaplib that mailsync patches, see
providers/imap/wire.py), and run as a script it measures aioimaplib as published, unpatched:

    python bench/raw_fetch.py HOST PORT USER PASSWORD [BATCH]   # prints {"count", "bytes", "seconds"}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aioimaplib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers.imap.parse import parse_fetch, parse_list, parse_search  # noqa: E402  (no client: no patches)


async def raw_fetch(host: str, port: int, user: str, password: str, batch: int = 500) -> tuple[int, int, float]:
    """The ceiling: one connection, every folder, `UID FETCH` of `batch` UIDs at a time, nothing stored."""
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


def main() -> None:
    host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 500
    assert "providers.imap.wire" not in sys.modules, "the stock measurement must not load mailsync's patches"
    count, size, seconds = asyncio.run(raw_fetch(host, port, user, password, batch))
    print(json.dumps({"count": count, "bytes": size, "seconds": seconds}))


if __name__ == "__main__":
    main()
