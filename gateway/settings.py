"""Gateway configuration: config.Settings (DATABASE_URL, TEMPORAL_ADDRESS, task queue, ...) plus its own knobs.

Subclassing config.Settings keeps one source of truth for how the gateway finds Temporal and
PostgreSQL: a GatewaySettings *is* a Settings, so `runtime.temporal.connect(settings)` and
`store.db.resolve_database_url(settings)` accept it unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from config import Settings

TokenSource = Literal["query", "bearer", "either"]


class GatewaySettings(Settings):
    """Environment of `mailsync gateway` (see each field's alias for the variable name)."""

    host: str = Field(default="127.0.0.1", validation_alias="MAILSYNC_GATEWAY_HOST")
    port: int = Field(default=8080, ge=0, le=65535, validation_alias="MAILSYNC_GATEWAY_PORT")

    # Google Cloud Pub/Sub push: a shared token in the subscription's push endpoint URL
    # (`?token=...`) or sent as `Authorization: Bearer ...`. Unset = the endpoint refuses every push.
    pubsub_token: SecretStr | None = Field(default=None, validation_alias="MAILSYNC_PUBSUB_TOKEN")
    pubsub_token_source: TokenSource = Field(default="either", validation_alias="MAILSYNC_PUBSUB_TOKEN_SOURCE")

    # Provider-neutral events: hex HMAC-SHA256 of the raw body under this secret, in `signature_header`
    # (set it to `x-nylas-signature` to take Nylas deliveries as they come). Unset = refuse every event.
    webhook_secret: SecretStr | None = Field(default=None, validation_alias="MAILSYNC_WEBHOOK_SECRET")
    signature_header: str = Field(default="X-Mailsync-Signature", validation_alias="MAILSYNC_WEBHOOK_SIGNATURE_HEADER")

    # Budgets for one request's calls. Senders time out at ~10 s (Pub/Sub ack deadline, Nylas), so
    # a 503 well before that lets them retry instead of counting a timeout against the endpoint.
    temporal_timeout: float = Field(default=5.0, gt=0, validation_alias="MAILSYNC_GATEWAY_TEMPORAL_TIMEOUT")
    query_timeout: float = Field(default=5.0, gt=0, validation_alias="MAILSYNC_GATEWAY_QUERY_TIMEOUT")
    db_timeout: float = Field(default=3.0, gt=0, validation_alias="MAILSYNC_GATEWAY_DB_TIMEOUT")
    gateway_db_pool_size: int = Field(default=4, ge=1, validation_alias="MAILSYNC_GATEWAY_DB_POOL_SIZE")
    retry_after: int = Field(
        default=5, ge=0, validation_alias="MAILSYNC_GATEWAY_RETRY_AFTER",
        description="seconds, sent as Retry-After with every 503",
    )
