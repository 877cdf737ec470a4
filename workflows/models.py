"""Inputs, outputs and state of the sync workflows and their activities (pydantic, no I/O).

These cross Temporal as JSON, so they hold ids, cursors and counts only: no message bodies, no secrets.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import Enum

from pydantic import BaseModel, Field


class SyncTuning(BaseModel):
    """Knobs an operator sets (config.Settings) that the workflows pass down to every folder."""

    page_size: int = 1000
    chunk_size: int = 100
    connection_limit: int = 2
    pages_per_run: int = 100         # a folder workflow continues-as-new after this many pages
    page_timeout_seconds: float = 600.0
    heartbeat_seconds: float = 60.0
    poll_seconds: float = 300.0      # incremental pass at least this often, even without a push
    passes_per_run: int = 200        # the account workflow continues-as-new after this many passes
    watch: bool = True               # hold IDLE (or NOOP-poll) on the INBOX between passes
    idle_seconds: float = 25 * 60    # re-issue IDLE this often (RFC 2177: at most 29 min)
    search_attributes: bool = False  # set Mailsync* search attributes (they must exist on the server)
    gmail_quota: float = 250.0       # Gmail API units/s per account, shared by its activities
    gmail_children: int = 2          # ThreadSyncWorkflow children in flight per Gmail account
    gmail_thread_batch: int = 100    # threads per ThreadSyncWorkflow child
    gmail_watch_topic: str | None = None  # users.watch topic, renewed daily; None: poll only
    gmail_watch_renew_seconds: float = 86_400.0  # Gmail drops a watch after 7 days; renew well before


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
    page_size: int = 1000
    max_pages: int = 200
    since: date | None = None        # window on INTERNALDATE: on or after this day
    before: date | None = None       # and before this day


class PlanPagesResult(BaseModel):
    uidvalidity: int
    uidnext: int | None
    highestmodseq: int | None
    exists: int
    matching: int = 0                # UIDs in the window (all of them without one)
    pages: list[UidRange]
    more_below: int | None = None    # lowest UID planned, when older UIDs remain to plan
    stale_locations_removed: int = 0


class SyncPageInput(BaseModel):
    account_id: str
    folder: FolderRef
    uidvalidity: int
    page: UidRange
    chunk_size: int = 100
    reuse_bodies: bool = False       # match stored messages by header key before downloading bodies


class PageSummary(BaseModel):
    fetched: int = 0
    new_messages: int = 0
    bytes: int = 0
    parse_errors: int = 0
    vanished: int = 0                # planned UIDs expunged before we fetched them
    reused: int = 0                  # placed from bodies already stored, not downloaded
    reused_bytes: int = 0            # their sizes (RFC822.SIZE)
    header_bytes: int = 0            # header blocks fetched to find those
    resumed_from: int | None = None  # set when a retried attempt skipped work a previous one persisted
    unserved: list[int] = Field(default_factory=list)  # UIDs the server listed but would not serve


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
    flagged: int = 0                 # messages stored (raw, byte for byte) but flagged unparseable
    failed: int = 0                  # messages not stored: the server listed them but would not serve them
    bytes: int = 0                   # mirrored: bodies downloaded or found stored (what the folder holds)
    downloaded: int = 0              # bytes downloaded: bodies, plus header blocks when matching stored ones
    reused: int = 0                  # messages placed from bodies already stored
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
    lanes: int = 1                   # pages fetched at once: connections the account workflow lent it
    # progress.bytes/flagged count every message in the folder (no page resumed past messages an earlier
    # attempt stored, whose sizes it does not see)
    sizes_exact: bool = True
    unserved: list[int] = Field(default_factory=list)  # UIDs the server would not serve (named, first 10)


class FolderSyncInput(BaseModel):
    account_id: str
    folder: FolderRef
    parent_workflow_id: str
    tuning: SyncTuning = Field(default_factory=SyncTuning)
    state: FolderState | None = None
    reuse_bodies: bool = False       # a rebuild: the account may already hold these messages
    since: date | None = None        # window on INTERNALDATE (see PlanPagesInput)
    before: date | None = None
    progress_signal: str = "folder_progress"


class FolderSyncResult(BaseModel):
    folder: FolderRef
    progress: FolderProgress
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    sizes_exact: bool = True         # see FolderState


class AccountPhase(str, Enum):
    starting = "starting"
    discovering = "discovering"
    initial = "initial"
    backfill = "backfill"            # usable: the recent window is mirrored, older mail follows
    completed = "completed"          # a one-shot (`live=False`) sync finished
    idle = "idle"                    # mirror current, waiting for a change or the poll interval
    syncing = "syncing"              # an incremental pass is running
    paused = "paused"
    failed = "failed"
    auth_failed = "auth_failed"
    auth_expired = "auth_expired"    # Gmail: the OAuth grant was revoked or expired


class FolderCursor(BaseModel):
    """Where a folder's mirror stands on the server: the incremental sync resumes from here."""

    folder: FolderRef
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    messages: int | None = None
    mirrored: bool = False           # its initial (or rebuild) sync has completed
    # what the folder holds in the mirror, for progress; None: not known (recounted by the next pass)
    stored_bytes: int | None = None
    stored_flagged: int | None = None
    size_epoch: int = 0  # bumped when the size is invalidated: a pass that began before leaves it unknown
    not_stored: int = 0  # messages the server listed but would not serve (see FolderProgress.failed)


class FolderChanges(BaseModel):
    folder: str
    new: int = 0
    updated: int = 0
    expunged: int = 0
    rebuilt: bool = False            # UIDVALIDITY changed, or the folder is new: mirrored from scratch
    reused: int = 0                  # of a rebuild: messages matched to stored bodies, not downloaded
    downloaded_bytes: int = 0
    error: str | None = None


class PassResult(BaseModel):
    """What one incremental pass changed: the answer of the `sync_now` update."""

    seq: int
    kind: str = "incremental"
    started_at: datetime
    finished_at: datetime | None = None
    folders: list[FolderChanges] = Field(default_factory=list)
    error: str | None = None         # the pass could not run (server unreachable…); the next one retries
    folders_added: list[str] = Field(default_factory=list)
    folders_removed: list[str] = Field(default_factory=list)

    @property
    def new(self) -> int:
        return sum(f.new for f in self.folders)

    @property
    def updated(self) -> int:
        return sum(f.updated for f in self.folders)

    @property
    def expunged(self) -> int:
        return sum(f.expunged for f in self.folders)


class GmailCursor(BaseModel):
    """Where a Gmail account's mirror stands: the history id up to which changes are persisted."""

    history_id: int | None = None        # every change up to here is in PostgreSQL
    start_history_id: int | None = None  # the profile's historyId when the running full listing began
    list_token: str | None = None        # the next messages.list page of that listing
    listing: bool = False                # a full listing (initial or resync) is under way
    resync: bool = False                 # that listing is a resync: reconcile deletions and labels first
    batches: int = 0                     # ThreadSyncWorkflow children started, ever (unique child ids)
    lost_batches: int = 0                # children of this listing that ended without their batch: relist
    messages_total: int = 0
    synced: int = 0                      # messages the current listing has persisted or found stored
    fetched: int = 0                     # of those, downloaded (the rest were stored already)
    bytes: int = 0                       # downloaded by the current listing
    refused: int = 0                     # messages Gmail keeps refusing to serve, as last counted
    refused_reason: str | None = None
    stored: int = 0                      # live messages in the mirror, as last counted
    stored_bytes: int = 0
    window_synced: int = 0               # messages the --since window held (the backfill's baseline)
    window_bytes: int = 0
    backfill_query: str | None = None    # `before:` of a --since sync: older mail, listed page by page
    backfill_token: str | None = None
    watch_expires: datetime | None = None
    watch_renew_at: datetime | None = None


class AccountState(BaseModel):
    """The account workflow's checkpoint, carried across continue-as-new."""

    provider: str | None = None          # imap | gmail, looked up once
    gmail: GmailCursor = Field(default_factory=GmailCursor)
    cursors: dict[int, FolderCursor] = Field(default_factory=dict)
    initial_done: bool = False
    passes: int = 0                  # incremental passes since the account was added
    runs: int = 1                    # workflow runs (continue-as-new chain length)
    total_new: int = 0
    total_updated: int = 0
    total_expunged: int = 0
    last_pass: PassResult | None = None
    paused: bool = False
    changed: bool = False            # a mailbox_changed arrived since the last pass started
    resync: bool = False
    started_at: datetime | None = None
    initial_rate: float = 0.0        # messages/s of the initial sync, kept for status displays
    parked_seconds: float = 0.0      # spent waiting for new credentials: not part of the rate
    backfill_queue: list[FolderRef] = Field(default_factory=list)
    backfill_running: list[str] = Field(default_factory=list)   # folder names
    backfill_since: date | None = None
    backfill_before: date | None = None


class MailboxChanged(BaseModel):
    """Signal: something changed on the server (IDLE, a push notification, the gateway)."""

    source: str = "unknown"
    folder: str | None = None
    history_id: int | None = None


class CredentialsExpired(BaseModel):
    reason: str = "credentials expired"


class AccountSyncInput(BaseModel):
    account_id: str
    tuning: SyncTuning = Field(default_factory=SyncTuning)
    live: bool = True                # False: one-shot mirror, the workflow ends after the initial sync
    since: date | None = None        # initial sync of mail received on or after this day first...
    window_start: date | None = None # ...then backfill down to this day (None: all history)
    state: AccountState | None = None


class AccountProgress(BaseModel):
    account_id: str
    address: str | None = None
    phase: AccountPhase
    folders: list[FolderProgress] = Field(default_factory=list)
    total: int = 0
    done: int = 0
    flagged: int = 0                 # stored but flagged unparseable (see FolderProgress)
    failed: int = 0                  # not stored: refused by the provider
    bytes: int = 0
    messages_per_second: float = 0.0
    eta_seconds: float | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    last_error: str | None = None
    passes: int = 0
    last_pass: PassResult | None = None
    lag_seconds: float | None = None  # since the last completed pass
    total_new: int = 0
    total_updated: int = 0
    total_expunged: int = 0
    runs: int = 1
    backfill: list[FolderProgress] = Field(default_factory=list)
    backfill_pending: int = 0        # folders whose older mail is still being fetched

    @property
    def percent(self) -> float:
        if self.total:
            return 100.0 * self.done / self.total
        settled = (AccountPhase.completed, AccountPhase.idle, AccountPhase.syncing, AccountPhase.backfill)
        return 100.0 if self.phase in settled else 0.0


class AccountSyncResult(BaseModel):
    account_id: str
    phase: AccountPhase
    progress: AccountProgress


class ProbeInput(BaseModel):
    account_id: str
    cursors: list[FolderCursor]


class ProbeResult(BaseModel):
    """One connection's look at the whole account: LIST, then STATUS of every known folder."""

    folders: list[FolderRef]         # every selectable folder now on the server
    changed: list[int]               # ids of known folders whose STATUS differs from their cursor
    removed: list[FolderRef]         # known folders gone from the server (their locations are dropped)


class FolderChangesInput(BaseModel):
    account_id: str
    cursor: FolderCursor
    max_new: int = 500               # new messages fetched per call; the workflow calls again for more
    check_flags: bool = True         # the first call of a pass also syncs flags and expunges
    chunk_size: int = 100


class FolderChangesResult(BaseModel):
    cursor: FolderCursor
    new: int = 0
    updated: int = 0
    expunged: int = 0
    more: bool = False               # new messages remain above cursor.uidnext
    uidvalidity_changed: bool = False
    unserved: list[int] = Field(default_factory=list)  # new UIDs the server listed but would not serve
    # what the pass added to / removed from the folder's mirror (exact when the activity ran once)
    bytes_delta: int = 0
    flagged_delta: int = 0
    # recounted from the database when the size was unknown or the activity was retried; None: not
    stored_bytes: int | None = None
    stored_flagged: int | None = None


class WatchInput(BaseModel):
    account_id: str
    folder: str = "INBOX"
    idle_seconds: float = 25 * 60
    since: FolderCursor | None = None  # what the last pass saw: mail that came in between counts


class WatchResult(BaseModel):
    changed: bool
    events: list[str] = Field(default_factory=list)


class HistoryInput(BaseModel):
    account_id: str
    result: PassResult


# ---- Gmail -------------------------------------------------------------------------------------


class DescribeAccountResult(BaseModel):
    provider: str
    address: str


class GmailStartInput(BaseModel):
    account_id: str
    units_per_second: float


class GmailStartResult(BaseModel):
    """The profile (address, current historyId, size) and the labels, upserted."""

    address: str
    history_id: int
    messages_total: int
    labels: int
    labels_removed: int
    stored: int = 0                      # live messages already in the mirror, and their bytes
    stored_bytes: int = 0


class ThreadBatch(BaseModel):
    """Threads one ThreadSyncWorkflow mirrors, with the ids of their messages the listing returned."""

    thread_ids: list[str]
    message_ids: list[str]


class GmailListInput(BaseModel):
    account_id: str
    page_token: str | None = None
    query: str | None = None             # Gmail search (`after:` for a --since window)
    page_size: int = 500
    thread_batch: int = 100
    units_per_second: float


class GmailListResult(BaseModel):
    batches: list[ThreadBatch]
    next_page_token: str | None = None
    listed: int = 0


class ThreadSyncInput(BaseModel):
    account_id: str
    batch: ThreadBatch
    units_per_second: float
    timeout_seconds: float = 600.0
    heartbeat_seconds: float = 60.0


class GmailFetchInput(BaseModel):
    account_id: str
    message_ids: list[str]
    units_per_second: float


class GmailFetchResult(BaseModel):
    """What one batch of threads took: messages fetched and persisted, already stored, gone (404)."""

    threads: int = 0
    listed: int = 0
    fetched: int = 0
    reused: int = 0                      # already stored: no body downloaded
    new_messages: int = 0
    missing: int = 0
    bytes: int = 0
    parse_errors: int = 0
    retried_parts: int = 0
    refused: int = 0                     # messages Gmail kept refusing (4xx): left out, asked for again
    refused_total: int = 0               # the account's refused messages after this activity
    refused_reason: str | None = None    # Gmail's latest answer to one of them


class GmailHistoryInput(BaseModel):
    account_id: str
    start_history_id: int
    units_per_second: float


class GmailHistoryResult(BaseModel):
    history_id: int                      # persisted up to here
    records: int = 0
    added: int = 0
    deleted: int = 0
    relabeled: int = 0
    labels_removed: int = 0
    labels_added: list[str] = Field(default_factory=list)   # names of labels new since the last pass
    bytes: int = 0
    deleted_bytes: int = 0               # bytes of the messages `deleted` took out of the mirror
    refused_total: int = 0               # messages Gmail still refuses (each pass asks for them again)
    refused_reason: str | None = None


class GmailReconcileInput(BaseModel):
    account_id: str
    units_per_second: float
    page_size: int = 500                 # ids per messages.list page (Gmail's maximum)


class GmailReconcileResult(BaseModel):
    listed: int
    deleted: int
    label_rows_changed: int
    stored: int = 0                      # live messages in the mirror afterwards, and their bytes
    stored_bytes: int = 0
    resumed: bool = False                # an attempt went on from where an earlier one stopped


class GmailWatchInput(BaseModel):
    account_id: str
    topic: str
    units_per_second: float


class GmailWatchResult(BaseModel):
    history_id: int
    expiration: datetime
