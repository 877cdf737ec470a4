"""Pydantic models of the Gmail v1 request and response bodies the fake speaks.

Field names follow the discovery document (camelCase on the wire). Empty
repeated fields and unset fields are left out of the JSON, as Google's
proto3 JSON encoding does: clients must cope with a missing `labelIds` or
`messages`, so the fake makes them cope.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "ApiModel",
    "HistoryLabelChange",
    "HistoryMessageChange",
    "HistoryRecordModel",
    "LabelColor",
    "LabelModel",
    "LabelRequest",
    "ListHistoryResponse",
    "ListLabelsResponse",
    "ListMessagesResponse",
    "ListThreadsResponse",
    "MessageModel",
    "MessagePart",
    "MessagePartBody",
    "MessagePartHeader",
    "ModifyMessageRequest",
    "ProfileModel",
    "ThreadModel",
    "TokenResponse",
    "WatchRequest",
    "WatchResponse",
    "dump",
]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def dump(model: BaseModel) -> dict[str, Any]:
    """Wire form: camelCase names, unset (None) fields omitted."""
    return model.model_dump(by_alias=True, exclude_none=True)


class MessagePartHeader(ApiModel):
    name: str
    value: str


class MessagePartBody(ApiModel):
    attachment_id: str | None = None
    size: int = 0
    data: str | None = None


class MessagePart(ApiModel):
    part_id: str | None = None
    mime_type: str | None = None
    filename: str | None = None
    headers: list[MessagePartHeader] | None = None
    body: MessagePartBody | None = None
    parts: list[MessagePart] | None = None


class MessageModel(ApiModel):
    id: str
    thread_id: str | None = None
    label_ids: list[str] | None = None
    snippet: str | None = None
    history_id: str | None = None
    internal_date: str | None = None
    payload: MessagePart | None = None
    size_estimate: int | None = None
    raw: str | None = None


class ThreadModel(ApiModel):
    id: str
    snippet: str | None = None
    history_id: str | None = None
    messages: list[MessageModel] | None = None


class ListMessagesResponse(ApiModel):
    messages: list[MessageModel] | None = None
    next_page_token: str | None = None
    result_size_estimate: int = 0


class ListThreadsResponse(ApiModel):
    threads: list[ThreadModel] | None = None
    next_page_token: str | None = None
    result_size_estimate: int = 0


class LabelColor(ApiModel):
    text_color: str
    background_color: str


class LabelModel(ApiModel):
    id: str
    name: str
    message_list_visibility: Literal["show", "hide"] | None = None
    label_list_visibility: Literal["labelShow", "labelShowIfUnread", "labelHide"] | None = None
    type: Literal["system", "user"]
    messages_total: int | None = None
    messages_unread: int | None = None
    threads_total: int | None = None
    threads_unread: int | None = None
    color: LabelColor | None = None


class ListLabelsResponse(ApiModel):
    labels: list[LabelModel] | None = None


class LabelRequest(ApiModel):
    """Body of labels.create."""

    name: str = ""
    message_list_visibility: Literal["show", "hide"] | None = None
    label_list_visibility: Literal["labelShow", "labelShowIfUnread", "labelHide"] | None = None
    color: LabelColor | None = None


class ProfileModel(ApiModel):
    email_address: str
    messages_total: int
    threads_total: int
    history_id: str


class HistoryMessageChange(ApiModel):
    message: MessageModel


class HistoryLabelChange(ApiModel):
    message: MessageModel
    label_ids: list[str]


class HistoryRecordModel(ApiModel):
    id: str
    messages: list[MessageModel] | None = None
    messages_added: list[HistoryMessageChange] | None = None
    messages_deleted: list[HistoryMessageChange] | None = None
    labels_added: list[HistoryLabelChange] | None = None
    labels_removed: list[HistoryLabelChange] | None = None


class ListHistoryResponse(ApiModel):
    history: list[HistoryRecordModel] | None = None
    next_page_token: str | None = None
    history_id: str


class ModifyMessageRequest(ApiModel):
    add_label_ids: list[str] = Field(default_factory=list)
    remove_label_ids: list[str] = Field(default_factory=list)


class WatchRequest(ApiModel):
    topic_name: str = ""
    label_ids: list[str] = Field(default_factory=list)
    label_filter_behavior: Literal["include", "exclude"] | None = None
    # Deprecated spelling of label_filter_behavior that older clients still send.
    label_filter_action: Literal["include", "exclude"] | None = None


class WatchResponse(ApiModel):
    history_id: str
    expiration: str


class TokenResponse(BaseModel):
    """OAuth 2.0 token endpoint answer (snake_case on the wire, RFC 6749)."""

    access_token: str
    expires_in: int
    scope: str
    token_type: str = "Bearer"
