"""Errors the store raises to the layers above (the API maps them to gRPC status codes)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store error."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now (UNAVAILABLE); the call may be retried later."""


class Conflict(StoreError):
    """A unique constraint would be violated, e.g. a breaker name already used in the account (ALREADY_EXISTS)."""


class NotFound(StoreError):
    """The named row does not exist (NOT_FOUND)."""


class InvalidData(StoreError, ValueError):
    """The database refused a value (too long, not representable) (INVALID_ARGUMENT)."""


class BadCursor(StoreError, ValueError):
    """A page cursor that this store did not hand out (INVALID_ARGUMENT)."""
