"""Per-user quota accounting with Gmail's documented unit costs, plus injected failures.

Each call (a batch's inner calls included, each as if made alone) is
charged its method's cost against a per-user budget of `limit` units per
`window` seconds, measured over a sliding window: a call that would push
the last second's total over the limit is refused with 429 and a
Retry-After telling when enough units will have aged out. Refused calls
cost nothing. With `enforce=False` nothing is refused, and the counters
show how hard a client pushed (the benchmark's view).

Counters (see `QuotaStats`): units charged, the most units charged within
any one window, calls per method, rate-limit answers served, raw bytes
served, HTTP requests and batches.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from devkit.gmail_fake.errors import GmailApiError, rate_limited

__all__ = ["METHOD_COSTS", "QuotaLedger", "QuotaStats"]

METHOD_COSTS: dict[str, int] = {
    # https://developers.google.com/gmail/api/reference/quota (per-method quota usage)
    "drafts.create": 10,
    "drafts.delete": 10,
    "drafts.get": 5,
    "drafts.list": 5,
    "drafts.send": 100,
    "drafts.update": 15,
    "getProfile": 1,
    "history.list": 2,
    "labels.create": 5,
    "labels.delete": 5,
    "labels.get": 1,
    "labels.list": 1,
    "labels.update": 5,
    "messages.attachments.get": 5,
    "messages.batchDelete": 50,
    "messages.batchModify": 50,
    "messages.delete": 10,
    "messages.get": 5,
    "messages.import": 25,
    "messages.insert": 25,
    "messages.list": 5,
    "messages.modify": 5,
    "messages.send": 100,
    "messages.trash": 5,
    "messages.untrash": 5,
    "stop": 50,
    "threads.delete": 20,
    "threads.get": 10,
    "threads.list": 10,
    "threads.modify": 10,
    "threads.trash": 10,
    "threads.untrash": 10,
    "watch": 100,
}


@dataclass(frozen=True)
class QuotaStats:
    """A snapshot of the counters, for one user or summed over all users."""

    total_units: int
    max_units_in_window: int
    rate_limited: int
    calls: dict[str, int]
    raw_bytes_served: int
    http_requests: int
    batch_requests: int
    forced_errors: int

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


@dataclass
class _Forced:
    remaining: int
    status: int
    user: str | None
    retry_after: int


@dataclass
class _UserLedger:
    window: deque[tuple[float, int]] = field(default_factory=deque)
    window_units: int = 0
    total_units: int = 0
    max_units_in_window: int = 0
    rate_limited: int = 0
    forced_errors: int = 0
    raw_bytes: int = 0
    calls: Counter[str] = field(default_factory=Counter)


class QuotaLedger:
    """Charges calls to users; thread-safe."""

    def __init__(
        self,
        *,
        limit: int = 250,
        window: float = 1.0,
        enforce: bool = True,
        rate_limit_status: int = 429,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.enforce = enforce
        self.rate_limit_status = rate_limit_status
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, _UserLedger] = {}
        self._forced: deque[_Forced] = deque()
        self.http_requests = 0
        self.batch_requests = 0

    def _ledger(self, user: str) -> _UserLedger:
        return self._users.setdefault(user.lower(), _UserLedger())

    def _age_out(self, ledger: _UserLedger, now: float) -> None:
        while ledger.window and ledger.window[0][0] <= now - self.window:
            _, units = ledger.window.popleft()
            ledger.window_units -= units

    def charge(self, user: str, method: str) -> None:
        """Admit one call of `method` for `user`, or raise the rate-limit error (nothing charged)."""
        cost = METHOD_COSTS.get(method, 1)
        with self._lock:
            ledger = self._ledger(user)
            forced = self._take_forced(user)
            if forced is not None:
                ledger.forced_errors += 1
                if forced.status in (403, 429):
                    ledger.rate_limited += 1
                    raise rate_limited(forced.retry_after, _rfc3339_in(forced.retry_after), status_code=forced.status)
                raise GmailApiError(forced.status, "Backend Error", reason="backendError")
            now = self._clock()
            self._age_out(ledger, now)
            if self.enforce and ledger.window_units + cost > self.limit:
                ledger.rate_limited += 1
                retry_after = self._retry_after(ledger, cost, now)
                raise rate_limited(retry_after, _rfc3339_in(retry_after), status_code=self.rate_limit_status)
            ledger.window.append((now, cost))
            ledger.window_units += cost
            ledger.total_units += cost
            ledger.max_units_in_window = max(ledger.max_units_in_window, ledger.window_units)
            ledger.calls[method] += 1

    def _retry_after(self, ledger: _UserLedger, cost: int, now: float) -> int:
        # Seconds (whole, as the header carries) until enough charged units leave the window.
        need = ledger.window_units + cost - self.limit
        freed = 0
        for when, units in ledger.window:
            freed += units
            if freed >= need:
                return max(1, math.ceil(when + self.window - now))
        return max(1, math.ceil(self.window))

    def _take_forced(self, user: str) -> _Forced | None:
        for forced in self._forced:
            if forced.user is None or forced.user == user.lower():
                forced.remaining -= 1
                if forced.remaining <= 0:
                    self._forced.remove(forced)
                return forced
        return None

    def force_errors(self, n_requests: int, *, status: int = 429, user: str | None = None, retry_after: int = 1) -> None:
        """Fail the next `n_requests` calls (of `user`, or anyone's) with `status`, whatever the quota."""
        if n_requests > 0:
            with self._lock:
                self._forced.append(_Forced(n_requests, status, user.lower() if user else None, retry_after))

    def count_raw_bytes(self, user: str, n: int) -> None:
        with self._lock:
            self._ledger(user).raw_bytes += n

    def count_http_request(self, *, batch: bool) -> None:
        with self._lock:
            self.http_requests += 1
            self.batch_requests += int(batch)

    def stats(self, user: str | None = None) -> QuotaStats:
        with self._lock:
            ledgers = [self._users.get(user.lower(), _UserLedger())] if user else list(self._users.values())
            calls: Counter[str] = Counter()
            for ledger in ledgers:
                calls.update(ledger.calls)
            return QuotaStats(
                total_units=sum(ledger.total_units for ledger in ledgers),
                max_units_in_window=max((ledger.max_units_in_window for ledger in ledgers), default=0),
                rate_limited=sum(ledger.rate_limited for ledger in ledgers),
                calls=dict(calls),
                raw_bytes_served=sum(ledger.raw_bytes for ledger in ledgers),
                http_requests=self.http_requests,
                batch_requests=self.batch_requests,
                forced_errors=sum(ledger.forced_errors for ledger in ledgers),
            )

    def reset(self) -> None:
        """Zero every counter and forget the windows and forced failures."""
        with self._lock:
            self._users.clear()
            self._forced.clear()
            self.http_requests = 0
            self.batch_requests = 0


def _rfc3339_in(seconds: int) -> str:
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
