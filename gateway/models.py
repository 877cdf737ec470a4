"""Request and response bodies of the gateway, and the signal payloads it sends to workflows.

`MailboxChanged` and `CredentialsExpired` are re-exported from workflows/models.py: the gateway
sends exactly the payloads the account workflow declares for those signals.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workflows.models import CredentialsExpired, MailboxChanged  # noqa: F401  (re-exported)

# --- signal payloads (workflow contract) ---------------------------------------------------------


MAILBOX_CHANGED = "mailbox_changed"
CREDENTIALS_EXPIRED = "credentials_expired"
PROGRESS_QUERY = "progress"

# --- Gmail push through Google Cloud Pub/Sub ----------------------------------------------------


def _b64decode_lenient(text: str) -> bytes:
    # Pub/Sub's JSON encodes `data` in standard base64, Gmail's guide calls it base64url, and some
    # relays strip padding: accept all three rather than reject a genuine notification.
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


class GmailNotification(BaseModel):
    """What Gmail publishes on a mailbox change: the address and the mailbox's new historyId."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    email_address: str = Field(alias="emailAddress", min_length=3)
    # Gmail sends it as a JSON number; Google's guide shows a string; both validate to int (lax mode).
    history_id: int = Field(alias="historyId", ge=1)


class PubSubMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    data: GmailNotification
    message_id: str | None = Field(default=None, alias="messageId")
    publish_time: str | None = Field(default=None, alias="publishTime")
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("data", mode="before")
    @classmethod
    def _decode(cls, value: Any) -> Any:
        # Decode here so a bad payload reports its location (message.data) in the 422 like any field.
        if not isinstance(value, str):
            return value
        try:
            return json.loads(_b64decode_lenient(value))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"message.data is not base64 of a JSON object: {exc}") from exc


class PubSubPush(BaseModel):
    """A Pub/Sub push delivery (wrapped format): `{"message": {...}, "subscription": "projects/.../subscriptions/..."}`."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    message: PubSubMessage
    subscription: str | None = None
    delivery_attempt: int | None = Field(default=None, alias="deliveryAttempt")


# --- provider-neutral events (Nylas v3 notification shape) ---------------------------------------

MAILBOX_EVENTS = frozenset({"message.created", "message.updated", "thread.replied"})
GRANT_EXPIRED = "grant.expired"
SUPPORTED_EVENTS = MAILBOX_EVENTS | {GRANT_EXPIRED}


class EventObject(BaseModel):
    """`data.object`: the message, thread or grant the event is about. Only the account link matters here."""

    model_config = ConfigDict(extra="allow")

    grant_id: str | None = Field(default=None, min_length=1)
    account_id: str | None = Field(default=None, min_length=1)
    id: str | None = None
    folder: str | None = None               # mailsync extension: the one folder that changed
    folders: list[str] | None = None        # Nylas: folder (or Gmail label) ids of the message

    @property
    def account_key(self) -> str | None:
        return self.account_id or self.grant_id

    @property
    def changed_folder(self) -> str | None:
        if self.folder:
            return self.folder
        # A message in several folders (Gmail labels) names no single folder to look at.
        return self.folders[0] if self.folders and len(self.folders) == 1 else None


class EventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    application_id: str | None = None
    object: EventObject


class WebhookEvent(BaseModel):
    """A CloudEvents-style notification as Nylas v3 sends them: `{"type", "id", "time", "data": {"object": {...}}}`."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1)
    id: str | None = None
    specversion: str | None = None
    source: str | None = None
    time: int | None = None
    webhook_delivery_attempt: int | None = None
    data: EventData

    @property
    def kind(self) -> str:
        # Nylas marks payloads over 1 MB as `<type>.truncated`; the event is the same for us.
        return self.type.removesuffix(".truncated")

    @model_validator(mode="after")
    def _needs_account(self) -> WebhookEvent:
        # Unknown types are acknowledged and ignored, but an event we act on must name its account.
        if self.kind in SUPPORTED_EVENTS and not self.data.object.account_key:
            raise ValueError(f"{self.type} event needs data.object.grant_id or data.object.account_id")
        return self


# --- responses -----------------------------------------------------------------------------------


class Ack(BaseModel):
    """Answer to a webhook: what the gateway did with it. Any 2xx tells the sender not to retry."""

    status: str                     # signaled | ignored
    accounts: list[str] = Field(default_factory=list)
    detail: str | None = None


class Readiness(BaseModel):
    temporal: str
    postgresql: str
