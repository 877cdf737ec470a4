"""Maps provider and database failures to Temporal errors: retry with jittered backoff, or stop for good."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from providers.errors import ProviderError
from store.accounts import AccountNotFound
from store.crypto import SecretKeyError

log = logging.getLogger("mailsync.activities")

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0


# Attempts an activity retries a message the server lists but does not serve before it records the
# message as not stored and goes on (at most PASS_RETRY's attempts: a pass's last attempt gives up).
UNSERVED_AFTER_ATTEMPTS = 3


def backoff_delay(attempt: int) -> timedelta:
    """1 s doubling to 30 s, with ±50 % jitter so a fleet of accounts does not retry in lockstep."""
    base = min(BACKOFF_CAP_S, BACKOFF_START_S * 2 ** max(0, attempt - 1))
    return timedelta(seconds=base * random.uniform(0.5, 1.5))


def _expected(exc: BaseException, retryable: bool, what_failed: str | None = None) -> None:
    """One log line for a failure the sync expects (a dropped connection, a refused grant, an expired
    history): the SDK's own WARNING with a traceback is for bugs, so these are marked BENIGN."""
    info = activity.info()
    level = logging.WARNING if retryable else logging.INFO
    what = "retrying" if retryable else "handed to the workflow"
    log.log(level, "%s (attempt %d) %s: %s: %s", info.activity_type, info.attempt, what,
            what_failed or type(exc).__name__, exc)


@asynccontextmanager
async def classified_errors() -> AsyncIterator[None]:
    try:
        yield
    except ProviderError as exc:
        _expected(exc, exc.retryable)
        if not exc.retryable:
            raise ApplicationError(
                str(exc), type=type(exc).__name__, non_retryable=True, category=ApplicationErrorCategory.BENIGN,
            ) from exc
        raise ApplicationError(
            str(exc), type=type(exc).__name__, next_retry_delay=backoff_delay(activity.info().attempt),
            category=ApplicationErrorCategory.BENIGN,
        ) from exc
    except (AccountNotFound, SecretKeyError) as exc:
        _expected(exc, False)
        raise ApplicationError(
            str(exc), type=type(exc).__name__, non_retryable=True, category=ApplicationErrorCategory.BENIGN,
        ) from exc
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError) as exc:
        _expected(exc, True, "database unavailable")
        raise ApplicationError(
            f"database unavailable: {exc}", type="DatabaseUnavailable",
            next_retry_delay=backoff_delay(activity.info().attempt), category=ApplicationErrorCategory.BENIGN,
        ) from exc
