"""Credential encryption at rest: AES-256-GCM with a key from MAILSYNC_SECRET_KEY (or a generated key file)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
_VERSION = b"\x01"


class SecretKeyError(RuntimeError):
    pass


def parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise SecretKeyError("MAILSYNC_SECRET_KEY must be base64 of 32 bytes") from exc
    if len(key) != 32:
        raise SecretKeyError(f"MAILSYNC_SECRET_KEY must decode to 32 bytes, got {len(key)}")
    return key


def load_or_create_key(configured: str | None, state_dir: Path) -> bytes:
    """The configured key, else a key file in the state dir, created 0600 on first use (embedded mode)."""
    if configured:
        return parse_key(configured)
    path = state_dir / "secret.key"
    if path.exists():
        return parse_key(path.read_text())
    state_dir.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode())
    return key


class CredentialBox:
    """Encrypts small secrets; the account id is bound as associated data so blobs cannot be swapped."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, account_id: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, account_id.encode())

    def open(self, blob: bytes, account_id: str) -> bytes:
        if not blob or blob[:1] != _VERSION:
            raise SecretKeyError("unknown credential format")
        nonce = blob[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[1 + _NONCE_BYTES :], account_id.encode())
        except Exception as exc:  # InvalidTag: wrong key or tampered row
            raise SecretKeyError("cannot decrypt credentials: wrong MAILSYNC_SECRET_KEY?") from exc
