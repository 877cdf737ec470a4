"""Connecting to Temporal: the configured address, else the one `mailsync dev up` recorded."""

from __future__ import annotations

from typing import Any

import json
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from config import Settings


class TemporalNotConfigured(RuntimeError):
    pass


class TemporalUnavailable(RuntimeError):
    pass


def dev_state_file(settings: Settings) -> Path:
    return settings.state_dir / "dev.json"


def read_dev_state(settings: Settings) -> dict[str, object] | None:
    path = dev_state_file(settings)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def temporal_address(settings: Settings) -> str:
    if settings.temporal_address:
        return settings.temporal_address
    state = read_dev_state(settings)
    if state and state.get("temporal_address"):
        return str(state["temporal_address"])
    raise TemporalNotConfigured(
        "Temporal is not configured: set TEMPORAL_ADDRESS, or run `mailsync dev up` for the embedded dev server"
    )


async def connect(settings: Settings) -> Client:
    address = temporal_address(settings)
    try:
        return await Client.connect(
            address, namespace=settings.temporal_namespace, data_converter=pydantic_data_converter
        )
    except RuntimeError as exc:
        raise TemporalUnavailable(f"cannot reach Temporal at {address}: {exc}") from exc


async def update_following_runs(handle: Any, update: Any, *, attempts: int = 10) -> Any:
    """Execute an update on the account's workflow, following it across continue-as-new.

    An update accepted by a run that then continues-as-new (a long Gmail listing does) fails with
    `AcceptedUpdateCompletedWorkflow`; the handle carries no run id, so sending it again reaches the
    new run, which carries the state the update waits on.
    """
    from temporalio.client import WorkflowUpdateFailedError

    for attempt in range(attempts):
        try:
            return await handle.execute_update(update)
        except WorkflowUpdateFailedError as exc:
            cause: BaseException | None = exc.cause
            kinds = []
            while cause is not None:
                kinds.append(f"{getattr(cause, 'type', '')} {cause}")
                cause = getattr(cause, "cause", None)
            if attempt + 1 == attempts or not any("AcceptedUpdateCompletedWorkflow" in k for k in kinds):
                raise
    raise AssertionError("unreachable")
