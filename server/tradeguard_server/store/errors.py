"""Errors the store raises to the layers above (the API maps them to gRPC status codes)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store error."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now (UNAVAILABLE); the call may be retried later.

    `in_doubt`: a write whose COMMIT was sent and not acknowledged: it may have been made (memory does not
    have it until the next restart); a retry is harmless for writes that replace.
    """

    def __init__(self, message: str = "", *, in_doubt: bool = False) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


def unsaved(what: str, exc: StoreUnavailable) -> str:
    """How an admin write that failed for `exc` tells the client what happened to `what`."""
    if exc.in_doubt:
        return f"{what} may or may not have been saved (the database did not acknowledge the commit: {exc})"
    return f"{what} not saved: the store is unavailable ({exc})"


class Conflict(StoreError):
    """A unique constraint would be violated, e.g. a breaker name already used in the account (ALREADY_EXISTS)."""


class NotFound(StoreError):
    """The named row does not exist (NOT_FOUND)."""


class InvalidData(StoreError, ValueError):
    """The database refused a value (too long, not representable) (INVALID_ARGUMENT)."""


class BadCursor(StoreError, ValueError):
    """A page cursor that this store did not hand out (INVALID_ARGUMENT)."""
