"""Timeouts and retry policies shared by the sync workflows (decisions only, no I/O)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

# Errors no retry can fix; the workflow decides what they mean (auth → account waits for credentials).
FATAL_TYPES = ["AuthError", "FolderGone", "UidValidityChanged", "AccountNotFound", "SecretKeyError"]

# Activities set their own jittered delay (activities/errors.py); these bound it and the attempt count,
# after which the workflow records the error, waits, and tries again: a sync never gives up silently.
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=30),
    maximum_attempts=8, non_retryable_error_types=FATAL_TYPES,
)
# A pass's own activities: a pass that cannot reach the server should say so within seconds (the next
# pass tries again), not after ACTIVITY_RETRY's ~90 s of backoff.
PASS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=4),
    maximum_attempts=3, non_retryable_error_types=FATAL_TYPES,
)
QUICK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
# Failure types that mean "these credentials no longer work": the account waits for new ones.
AUTH_TYPES = ("AuthError", "AuthExpired", "AccessDenied", "AccountNotFound", "SecretKeyError")


class AccountAuthFailed(Exception):
    """Raised inside an account workflow run when the provider refused the credentials."""


PAUSE_AFTER_EXHAUSTED = timedelta(seconds=60)
SHORT_TIMEOUT = timedelta(minutes=2)


def failure_type(err: BaseException) -> str | None:
    """The ApplicationError type at the root of an activity or child-workflow failure."""
    cause: BaseException | None = err
    while isinstance(cause, (ActivityError, ChildWorkflowError)):
        cause = cause.cause
    return cause.type if isinstance(cause, ApplicationError) else None


def failure_message(err: BaseException) -> str:
    cause: BaseException | None = err
    # ActivityError, ChildWorkflowError and the client's WorkflowFailureError all wrap the real reason
    while not isinstance(cause, ApplicationError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause  # type: ignore[union-attr]
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause)
