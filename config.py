"""Runtime configuration for mailsync, read from the environment and `.env` (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mailsync"


class Settings(BaseSettings):
    """Everything an operator can set. Unset DATABASE_URL / TEMPORAL_ADDRESS mean the embedded defaults."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    temporal_address: str | None = Field(default=None, validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", validation_alias="TEMPORAL_NAMESPACE")
    task_queue: str = Field(default="mailsync", validation_alias="MAILSYNC_TASK_QUEUE")
    secret_key: str | None = Field(
        default=None,
        validation_alias="MAILSYNC_SECRET_KEY",
        description="base64 of 32 random bytes; encrypts stored credentials (AES-256-GCM)",
    )
    state_dir: Path = Field(default_factory=default_state_dir, validation_alias="MAILSYNC_STATE_DIR")
    page_size: int = Field(default=1000, ge=1, le=5000, validation_alias="MAILSYNC_PAGE_SIZE")
    fetch_chunk: int = Field(default=100, ge=1, le=5000, validation_alias="MAILSYNC_FETCH_CHUNK")
    connection_limit: int = Field(default=2, ge=1, le=32, validation_alias="MAILSYNC_CONNECTION_LIMIT")
    imap_auth_timeout: float = Field(default=5.0, gt=0, validation_alias="MAILSYNC_IMAP_AUTH_TIMEOUT")
    imap_timeout: float = Field(default=30.0, gt=0, validation_alias="MAILSYNC_IMAP_TIMEOUT")
    activity_timeout: float = Field(
        default=600.0, gt=0, validation_alias="MAILSYNC_ACTIVITY_TIMEOUT",
        description="start-to-close timeout of one page activity, seconds",
    )
    heartbeat_timeout: float = Field(default=60.0, gt=0, validation_alias="MAILSYNC_HEARTBEAT_TIMEOUT")
    max_concurrent_activities: int = Field(default=8, ge=1, validation_alias="MAILSYNC_WORKER_ACTIVITIES")
    db_pool_size: int = Field(default=8, ge=1, validation_alias="MAILSYNC_DB_POOL_SIZE")
    worker_processes: int = Field(
        default=0, ge=0, le=64, validation_alias="MAILSYNC_WORKER_PROCESSES",
        description="worker processes `python worker.py` / `mailsync worker` runs, each a full worker on the same "
        "task queues (activities and DB pool per process: MAILSYNC_WORKER_ACTIVITIES and MAILSYNC_DB_POOL_SIZE "
        "apply to each); 0 = one per usable CPU core, at most 4. A sync is CPU-bound (IMAP parsing, header "
        "parsing, database encoding): one process uses one core",
    )
    max_watchers: int = Field(
        default=1000, ge=1, validation_alias="MAILSYNC_WORKER_WATCHERS",
        description="IDLE connections (one per live account) this worker holds at most",
    )

    pages_per_run: int = Field(default=100, ge=1, validation_alias="MAILSYNC_PAGES_PER_RUN")
    poll_interval: float = Field(
        default=300.0, gt=0, validation_alias="MAILSYNC_POLL_INTERVAL",
        description="seconds between incremental passes when no change is pushed",
    )
    passes_per_run: int = Field(default=200, ge=1, validation_alias="MAILSYNC_PASSES_PER_RUN")
    search_attributes: bool = Field(
        default=True, validation_alias="MAILSYNC_SEARCH_ATTRIBUTES",
        description="tag account workflows with Mailsync* search attributes (registered by `dev up`)",
    )
    idle_watch: bool = Field(default=True, validation_alias="MAILSYNC_IDLE", description="hold IMAP IDLE on the INBOX")
    gmail_quota: float = Field(
        default=250.0, gt=0, validation_alias="MAILSYNC_GMAIL_QUOTA",
        description="Gmail API units per second per account (Google's per-user limit is 250); every Gmail "
        "activity of the account gets a share of it (the workflow splits it between what runs at once)",
    )
    gmail_children: int = Field(
        default=2, ge=1, le=100, validation_alias="MAILSYNC_GMAIL_CHILDREN",
        description="ThreadSyncWorkflow children in flight per Gmail account (each runs one activity at a time)",
    )
    gmail_thread_batch: int = Field(
        default=100, ge=1, le=1000, validation_alias="MAILSYNC_GMAIL_THREAD_BATCH",
        description="threads per ThreadSyncWorkflow child",
    )
    gmail_watch_topic: str | None = Field(
        default=None, validation_alias="MAILSYNC_GMAIL_WATCH_TOPIC",
        description="Pub/Sub topic for Gmail push (users.watch, renewed daily); unset: no watch, polling only",
    )

    def tuning(self):  # type: ignore[no-untyped-def]
        """The subset of settings that travels in workflow inputs."""
        from workflows.models import SyncTuning

        return SyncTuning(
            page_size=self.page_size, chunk_size=self.fetch_chunk, connection_limit=self.connection_limit,
            pages_per_run=self.pages_per_run, page_timeout_seconds=self.activity_timeout,
            heartbeat_seconds=self.heartbeat_timeout, poll_seconds=self.poll_interval,
            passes_per_run=self.passes_per_run, watch=self.idle_watch, search_attributes=self.search_attributes,
            gmail_quota=self.gmail_quota, gmail_children=self.gmail_children,
            gmail_thread_batch=self.gmail_thread_batch, gmail_watch_topic=self.gmail_watch_topic,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
