"""Gmail quota: documented unit costs and a pluggable, adaptive token bucket.

Gmail limits each user to 250 quota units per second (a moving average) and
charges every call, including each part of a batch, its method's cost.
`GmailSession` calls `QuotaBucket.acquire(units)` before every request with
the request's cost (a batch: the sum of its parts), reports rate-limit
answers with `on_rate_limited(retry_after)` and clean answers with
`on_success()`.

`QuotaBucket` is the interface; `TokenBucket` is the in-process
implementation. A bucket shared by several workers (PostgreSQL-backed, say)
implements the same four members: `acquire`, `on_rate_limited`,
`on_success` and `burst`.

Choosing rate and burst. A token bucket admits at most `burst + rate * t`
units in any span of `t` seconds. Google's limit is a moving average that
tolerates short bursts, so `TokenBucket(250, burst=…)` is a fair client for
it. A strict sliding-window limiter (the local fake: never more than 250
units within any 1 s) is only guaranteed to be respected when
`burst + rate * window` stays below the limit, with a little headroom
because the server charges a batch's parts over the time it takes to
process them, not at the instant the client was granted the units:
`TokenBucket.for_quota(250)` does that split.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_UNITS_PER_SECOND", "METHOD_COSTS", "QuotaBucket", "TokenBucket", "batch_cost"]

DEFAULT_UNITS_PER_SECOND = 250.0

METHOD_COSTS: dict[str, int] = {
    # https://developers.google.com/gmail/api/reference/quota (the methods mailsync calls)
    "getProfile": 1,
    "history.list": 2,
    "labels.get": 1,
    "labels.list": 1,
    "messages.get": 5,
    "messages.list": 5,
    "stop": 50,
    "threads.get": 10,
    "threads.list": 10,
    "watch": 100,
}


def batch_cost(method: str, parts: int) -> int:
    """Units a batch of `parts` calls of `method` costs: Gmail charges each part as if made alone."""
    return METHOD_COSTS[method] * parts


class QuotaBucket(ABC):
    """What `GmailSession` needs from a rate limiter; one instance per Gmail user (account).

    `acquire` must return only when the caller may spend `units` now: the session sends its request
    right after it returns. The feedback hooks default to no-ops so a minimal implementation only
    writes `acquire`.
    """

    @property
    @abstractmethod
    def burst(self) -> float:
        """The most units one `acquire` may take at once; the session sizes its batches to fit."""

    @abstractmethod
    async def acquire(self, units: float) -> None:
        """Wait until `units` may be spent, and spend them."""

    async def on_rate_limited(self, retry_after: float | None = None) -> None:
        """The server answered 429/403-rate: slow down, and hold every caller for `retry_after` seconds."""
        return None

    async def on_success(self) -> None:
        """A request went through without a rate-limit answer."""
        return None


class TokenBucket(QuotaBucket):
    """In-process token bucket, adaptive: halves its rate on rate-limit answers, recovers on success.

    `rate` units/s refill a bucket of `burst` units (full at start). An `acquire` larger than `burst`
    waits for a full bucket and leaves it in debt, so a single big request is admitted but paid for.
    Waiters are served first come, first served (an asyncio.Lock is FIFO).

    Adaptation: `on_rate_limited` halves the current rate (never below `min_rate`, and at most once per
    `cut_interval` seconds, because one overshoot usually comes back as many 429 answers at once),
    empties the bucket and holds every acquire for `retry_after` seconds (no tokens accrue meanwhile).
    `on_success` then raises the rate linearly back to the configured rate, by the configured rate
    per `recovery_seconds` elapsed since the last pause ended.

    Bound to the event loop that first waits on it (asyncio.Lock); share it among the tasks of one loop.
    """

    def __init__(
        self,
        rate: float = DEFAULT_UNITS_PER_SECOND,
        burst: float | None = None,
        *,
        min_rate: float | None = None,
        recovery_seconds: float = 10.0,
        cut_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.configured_rate = float(rate)
        self._burst = float(burst if burst is not None else rate / 5)
        if self._burst <= 0:
            raise ValueError("burst must be positive")
        self.min_rate = float(min_rate if min_rate is not None else max(rate / 32, 1e-3))
        self.recovery_seconds = recovery_seconds
        self.cut_interval = cut_interval
        self._clock = clock
        self._sleep = sleep
        self._rate = self.configured_rate
        self._tokens = self._burst
        self._updated = clock()
        self._paused_until = 0.0
        self._last_cut = float("-inf")
        self._recovered_at = self._updated
        self._lock: asyncio.Lock | None = None
        # Counters for tests, progress and benchmarks.
        self.granted_units = 0.0
        self.rate_limited = 0
        self.waited_seconds = 0.0

    @classmethod
    def for_quota(
        cls,
        units_per_second: float = DEFAULT_UNITS_PER_SECOND,
        *,
        window: float = 1.0,
        burst: float | None = None,
        headroom: float = 0.2,
        **kwargs: object,
    ) -> TokenBucket:
        """A bucket that keeps a strict sliding window of `units_per_second * window` units unbroken.

        Of the window's budget, `headroom` is left unused, `burst` (default an eighth of the budget:
        small batches, a steadier flow) may go at once, and the rest refills at a steady rate. For
        250 units/s: rate 175 units/s, burst 25 units (batches of 5 messages.get), 35 messages/s.

        Why headroom: the server charges a request when it processes it, not when the client was
        granted the units. With several batches in flight, a server that falls behind and then
        drains its queue charges them closer together than they were granted; against the local fake
        (one process, one GIL) that compression reached ~0.1 s, i.e. up to 20-25 units above
        `burst + rate * window`. Google's own limit is a moving average that tolerates short bursts,
        so against Gmail a smaller headroom (or `TokenBucket(250, burst=…)`) is fine.
        """
        budget = units_per_second * window * (1.0 - headroom)
        burst = budget / 8 if burst is None else burst
        if not 0 < burst < budget:
            raise ValueError("burst must be positive and below the window's budget")
        return cls((budget - burst) / window, burst, **kwargs)  # type: ignore[arg-type]

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def rate(self) -> float:
        """The current (possibly reduced) refill rate in units/s."""
        return self._rate

    @property
    def tokens(self) -> float:
        self._refill(self._clock())
        return self._tokens

    def _refill(self, now: float) -> None:
        # Nothing accrues during a Retry-After pause: the server's window was full when it answered,
        # so the first requests after the pause go at the (reduced) rate, not as a saved-up burst.
        since = max(self._updated, self._paused_until)
        if now > since:
            self._tokens = min(self._burst, self._tokens + (now - since) * self._rate)
        self._updated = max(self._updated, now)

    async def acquire(self, units: float) -> None:
        if units <= 0:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                now = self._clock()
                self._refill(now)
                if now < self._paused_until:
                    wait = self._paused_until - now
                else:
                    need = min(units, self._burst)
                    if self._tokens >= need - 1e-9:
                        self._tokens -= units
                        self.granted_units += units
                        return
                    wait = (need - self._tokens) / self._rate
                self.waited_seconds += wait
                await self._sleep(wait)

    async def on_rate_limited(self, retry_after: float | None = None) -> None:
        now = self._clock()
        self._refill(now)
        self.rate_limited += 1
        if now - self._last_cut >= self.cut_interval:
            self._rate = max(self.min_rate, self._rate / 2)
            self._last_cut = now
        # The server's window is full: whatever we had saved up would only be refused too.
        self._tokens = min(self._tokens, 0.0)
        pause = max(0.0, retry_after or 0.0)
        self._paused_until = max(self._paused_until, now + pause)
        self._recovered_at = max(self._recovered_at, self._paused_until)

    async def on_success(self) -> None:
        if self._rate >= self.configured_rate:
            return
        now = self._clock()
        if now <= self._recovered_at:
            return
        self._refill(now)
        step = self.configured_rate * (now - self._recovered_at) / self.recovery_seconds
        self._rate = min(self.configured_rate, self._rate + step)
        self._recovered_at = now

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate={self._rate:.1f}/{self.configured_rate:.1f} units/s, burst={self._burst:.1f}, "
            f"tokens={self._tokens:.1f})"
        )
