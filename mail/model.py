"""Provider-neutral shapes of fetched mail, handed from providers to the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class FetchedMessage:
    """One message as a server served it: the exact bytes plus its per-folder attributes."""

    uid: int
    raw: bytes
    flags: list[str] = field(default_factory=list)
    internaldate: datetime | None = None
    size: int | None = None          # RFC822.SIZE as the server reported it
