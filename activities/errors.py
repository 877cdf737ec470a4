"""Maps provider and database failures to Temporal errors: retry with jittered backoff, or stop for good."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from providers.errors import ProviderError
from store.accounts import AccountNotFound
from store.crypto import SecretKeyError

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0


def backoff_delay(attempt: int) -> timedelta:
    """1 s doubling to 30 s, with ±50 % jitter so a fleet of accounts does not retry in lockstep."""
    base = min(BACKOFF_CAP_S, BACKOFF_START_S * 2 ** max(0, attempt - 1))
    return timedelta(seconds=base * random.uniform(0.5, 1.5))


@asynccontextmanager
async def classified_errors() -> AsyncIterator[None]:
    try:
        yield
    except ProviderError as exc:
        if not exc.retryable:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
        raise ApplicationError(
            str(exc), type=type(exc).__name__, next_retry_delay=backoff_delay(activity.info().attempt)
        ) from exc
    except (AccountNotFound, SecretKeyError) as exc:
        raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError) as exc:
        raise ApplicationError(
            f"database unavailable: {exc}", type="DatabaseUnavailable",
            next_retry_delay=backoff_delay(activity.info().attempt),
        ) from exc
