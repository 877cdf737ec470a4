"""The few account-table reads and writes the gateway needs, behind a lazily (re)created pool.

A webhook must be answered even while PostgreSQL is down (503, so the sender retries), and the
gateway must come up before the database does: the pool is created on first use, not required
at startup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from gateway.errors import ServiceUnavailable
from gateway.settings import GatewaySettings
from store.db import DatabaseUnavailable, create_pool, resolve_database_url

log = logging.getLogger("mailsync.gateway")
T = TypeVar("T")
SERVICE = "postgresql"
AUTH_EXPIRED = "auth_expired"
# Accounts whose credentials are known bad: a push may reach a running workflow, but must not
# start one that would only fail authentication again (one failed start per push otherwise).
NO_START_STATUSES = frozenset({AUTH_EXPIRED, "auth_failed"})

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable)


@dataclass(frozen=True)
class AccountRef:
    id: str
    provider: str
    address: str
    status: str

    @property
    def may_start(self) -> bool:
        return self.status not in NO_START_STATUSES


async def _default_pool(settings: GatewaySettings) -> asyncpg.Pool:
    # resolve_database_url may boot the embedded pgserver: blocking, so off the event loop.
    dsn = await asyncio.to_thread(resolve_database_url, settings)
    return await create_pool(dsn, size=settings.gateway_db_pool_size)


class AccountDirectory:
    def __init__(
        self, settings: GatewaySettings,
        pool_factory: Callable[[GatewaySettings], Awaitable[asyncpg.Pool]] = _default_pool,
    ) -> None:
        self.settings = settings
        self._pool_factory = pool_factory
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncio.wait_for(self._pool_factory(self.settings), self.settings.db_timeout)
                except _DB_ERRORS as exc:
                    raise ServiceUnavailable(SERVICE, str(exc)) from exc
                except asyncio.TimeoutError as exc:
                    raise ServiceUnavailable(SERVICE, "connect timed out") from exc
        return self._pool

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = await self.pool()

        async def attempt() -> T:
            async with pool.acquire() as conn:
                return await op(conn)

        try:
            return await asyncio.wait_for(attempt(), self.settings.db_timeout)
        except _DB_ERRORS as exc:
            raise ServiceUnavailable(SERVICE, str(exc) or type(exc).__name__) from exc
        except asyncio.TimeoutError as exc:
            raise ServiceUnavailable(SERVICE, f"no answer within {self.settings.db_timeout:g} s") from exc

    async def gmail_accounts(self, address: str) -> list[AccountRef]:
        """Gmail accounts with this address (case-insensitive, as Gmail addresses are)."""
        rows = await self._run(lambda conn: conn.fetch(
            "SELECT id, provider, address, status FROM accounts"
            " WHERE provider = 'gmail' AND lower(address) = lower($1) ORDER BY id",
            address.strip(),
        ))
        return [AccountRef(**dict(r)) for r in rows]

    async def account(self, account_id: str) -> AccountRef | None:
        row = await self._run(lambda conn: conn.fetchrow(
            "SELECT id, provider, address, status FROM accounts WHERE id = $1", account_id,
        ))
        return AccountRef(**dict(row)) if row else None

    async def mark_auth_expired(self, account_id: str, reason: str) -> bool:
        """Set the account's status to auth_expired (idempotent: a redelivered event changes nothing new)."""
        row = await self._run(lambda conn: conn.fetchrow(
            "UPDATE accounts SET status = $2, status_reason = $3, updated_at = now() WHERE id = $1 RETURNING id",
            account_id, AUTH_EXPIRED, reason,
        ))
        return row is not None

    async def ping(self) -> None:
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

    async def close(self) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        try:
            await asyncio.wait_for(pool.close(), self.settings.db_timeout)
        except (asyncio.TimeoutError, *_DB_ERRORS):
            pool.terminate()
