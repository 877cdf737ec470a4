"""Inputs, outputs and state of the sync workflows and their activities (pydantic, no I/O).

These cross Temporal as JSON, so they hold ids, cursors and counts only: no message bodies, no secrets.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, Field


class SyncTuning(BaseModel):
    """Knobs an operator sets (config.Settings) that the workflows pass down to every folder."""

    page_size: int = 500
    chunk_size: int = 100
    connection_limit: int = 2
    pages_per_run: int = 100         # a folder workflow continues-as-new after this many pages
    page_timeout_seconds: float = 600.0
    heartbeat_seconds: float = 60.0


class FolderRef(BaseModel):
    folder_id: int
    name: str
    role: str | None = None


class UidRange(BaseModel):
    """A page: UIDs lo..hi inclusive, `count` of them existed when it was planned."""

    lo: int
    hi: int
    count: int


class DiscoverInput(BaseModel):
    account_id: str


class DiscoverResult(BaseModel):
    address: str
    folders: list[FolderRef]


class PlanPagesInput(BaseModel):
    account_id: str
    folder: FolderRef
    expected_uidvalidity: int | None = None
    below_uid: int | None = None     # plan only UIDs lower than this (None: from the top)
    page_size: int = 500
    max_pages: int = 200


class PlanPagesResult(BaseModel):
    uidvalidity: int
    uidnext: int | None
    highestmodseq: int | None
    exists: int
    pages: list[UidRange]
    more_below: int | None = None    # lowest UID planned, when older UIDs remain to plan
    stale_locations_removed: int = 0


class SyncPageInput(BaseModel):
    account_id: str
    folder: FolderRef
    uidvalidity: int
    page: UidRange
    chunk_size: int = 100


class PageSummary(BaseModel):
    fetched: int = 0
    new_messages: int = 0
    bytes: int = 0
    parse_errors: int = 0
    vanished: int = 0                # planned UIDs expunged before we fetched them
    resumed_from: int | None = None  # set when a retried attempt skipped work a previous one persisted


class SetStatusInput(BaseModel):
    account_id: str
    status: str
    reason: str | None = None


class FolderPhase(str, Enum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


class FolderProgress(BaseModel):
    name: str
    role: str | None = None
    phase: FolderPhase = FolderPhase.pending
    total: int = 0
    done: int = 0
    failed: int = 0                  # messages stored raw but flagged unparseable
    bytes: int = 0
    error: str | None = None
    updated_at: datetime | None = None


class FolderState(BaseModel):
    """Everything a folder sync needs to resume: carried across continue-as-new."""

    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    pending: list[UidRange] = Field(default_factory=list)
    more_below: int | None = None
    planned: bool = False
    progress: FolderProgress
    pages_done: int = 0
    restarts: int = 0                # UIDVALIDITY changes seen during this sync


class FolderSyncInput(BaseModel):
    account_id: str
    folder: FolderRef
    parent_workflow_id: str
    tuning: SyncTuning = Field(default_factory=SyncTuning)
    state: FolderState | None = None


class FolderSyncResult(BaseModel):
    folder: FolderRef
    progress: FolderProgress
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None


class AccountPhase(str, Enum):
    starting = "starting"
    discovering = "discovering"
    initial = "initial"
    completed = "completed"
    failed = "failed"
    auth_failed = "auth_failed"


class AccountSyncInput(BaseModel):
    account_id: str
    tuning: SyncTuning = Field(default_factory=SyncTuning)


class AccountProgress(BaseModel):
    account_id: str
    address: str | None = None
    phase: AccountPhase
    folders: list[FolderProgress] = Field(default_factory=list)
    total: int = 0
    done: int = 0
    failed: int = 0
    bytes: int = 0
    messages_per_second: float = 0.0
    eta_seconds: float | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    last_error: str | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else (100.0 if self.phase == AccountPhase.completed else 0.0)


class AccountSyncResult(BaseModel):
    account_id: str
    phase: AccountPhase
    progress: AccountProgress
