"""Thread grouping: messages sharing any Message-ID (own, In-Reply-To, References) are one thread.

Threads are connected components, so the result does not depend on the order messages arrive in.
This module only decides; store/ applies the decisions to the database.
"""

from __future__ import annotations

from dataclasses import dataclass


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class ThreadGroup:
    """One component of a page: its messages, every ref they mention, and threads already holding those refs."""

    message_keys: list[int]
    refs: list[str]
    existing_threads: list[int]


def group_page(refs_by_message: dict[int, list[str]], known: dict[str, int]) -> list[ThreadGroup]:
    """Group a page's messages (key → refs) with the thread ids the database already has for those refs."""
    uf = _UnionFind()
    for key, refs in refs_by_message.items():
        node = f"m:{key}"
        uf.find(node)
        for ref in refs:
            uf.union(node, f"r:{ref}")
            if ref in known:
                uf.union(f"r:{ref}", f"t:{known[ref]}")
    groups: dict[str, ThreadGroup] = {}
    for key, refs in refs_by_message.items():
        g = groups.setdefault(uf.find(f"m:{key}"), ThreadGroup([], [], []))
        g.message_keys.append(key)
        g.refs.extend(refs)
    for g in groups.values():
        g.refs = list(dict.fromkeys(g.refs))
        g.existing_threads = sorted({known[r] for r in g.refs if r in known})
    return list(groups.values())
