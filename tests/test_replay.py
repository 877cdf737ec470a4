"""Workflow histories recorded with the previous release replay with today's workflow code.

Account workflows run for months: a change that makes today's code issue other commands than a
running workflow's history holds fails that workflow's next replay (a worker restart is enough).
tests/histories/ holds histories of a live account recorded with the release before the
`workflows/patches.py` markers: the initial sync (the INBOX child continues-as-new), a pass with new
mail, a pass refused after a password change, parked, new credentials, then passes through two
continue-as-new of the account (its later runs start from the old release's state). Replaying them
must raise no non-determinism error; without the refused-pass or the size-recount patch it does.
"""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.account_sync import AccountSyncWorkflow
from workflows.folder_sync import FolderSyncWorkflow
from workflows.thread_sync import ThreadSyncWorkflow

HISTORIES = Path(__file__).parent / "histories"


async def test_histories_of_the_previous_release_replay() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    assert len(files) >= 7
    replayer = Replayer(
        workflows=[AccountSyncWorkflow, FolderSyncWorkflow, ThreadSyncWorkflow], data_converter=pydantic_data_converter,
    )
    kinds = set()
    for path in files:
        recorded = json.loads(path.read_text())
        history = WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])
        kinds.add(path.stem.split("-", 1)[1])
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
    assert kinds == {"AccountSyncWorkflow", "FolderSyncWorkflow"}
