"""Connection settings of an IMAP account (no secrets: the password is stored encrypted apart)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field


class Security(str, Enum):
    tls = "tls"
    starttls = "starttls"
    none = "none"


class ImapSettings(BaseModel):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str = Field(min_length=1)
    security: Security = Security.tls

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return 993 if self.security is Security.tls else 143
