"""Provider errors, classified where they are raised (DESIGN rule 5); activities map them to Temporal."""

from __future__ import annotations


class ProviderError(Exception):
    """Base class. `retryable` tells the activity layer whether another attempt can help."""

    retryable = True


class NetworkError(ProviderError):
    """Connection refused/reset/dropped, DNS failure, timeout: retry with backoff."""


class AuthError(ProviderError):
    """The server rejected the credentials: retrying only locks the account; wait for new ones."""

    retryable = False


class ServerError(ProviderError):
    """The server answered NO/BAD to a command that should work; usually transient."""


class MessagesNotServed(ServerError):
    """A FETCH answered OK without messages the server still lists, asked twice. `served` holds the
    messages it did return, so a caller that gives up on the missing ones can keep the rest."""

    def __init__(self, message: str, *, uids: list[int], served: list) -> None:  # type: ignore[type-arg]
        super().__init__(message)
        self.uids = uids
        self.served = served


class FolderGone(ProviderError):
    """The folder was deleted or renamed on the server while we were syncing it."""

    retryable = False


class UidValidityChanged(ProviderError):
    """The folder's UIDVALIDITY moved: every cursor for it is void and the folder must be re-mirrored."""

    retryable = False
