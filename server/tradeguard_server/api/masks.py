"""Partial updates (AIP-134): apply a request's `update_mask` to the stored resource, as protobuf messages.

Only top-level fields are paths. A named field is copied from the request, or cleared when the request does not set
it (a repeated field is replaced whole, a message field too). `ignored` paths (identity and server-set fields) are
accepted and change nothing; any other unknown path is INVALID_ARGUMENT naming it. `"*"` alone means replace all.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from .validation import Violations

M = TypeVar("M", bound=Message)


def partial(mask: FieldMask) -> bool:
    """True when the mask asks for a partial update (not absent, empty or "*")."""
    return bool(mask.paths) and list(mask.paths) != ["*"]


def check_mask(v: Violations, mask: FieldMask, allowed: Collection[str], ignored: Collection[str]) -> None:
    """Every path of `mask` is allowed or ignored, once; "*" only alone. Adds to `v`."""
    seen: set[str] = set()
    for i, path in enumerate(mask.paths):
        where = f"update_mask.paths[{i}]"
        if path == "*":
            if len(mask.paths) > 1:
                v.add(where, '"*" (replace everything) cannot be combined with other paths')
        elif path not in allowed and path not in ignored:
            v.add(where, f"unknown path {path!r}: a partial update names top-level fields: "
                         f"{', '.join(sorted(allowed))}")
        elif path in seen:
            v.add(where, f"path {path!r} given twice")
        seen.add(path)


def apply_mask(stored: M, given: Message, mask: FieldMask, ignored: Collection[str]) -> M:
    """`stored` with the (checked) mask's fields taken from `given`."""
    merged = type(stored)()
    merged.CopyFrom(stored)
    descriptor = merged.DESCRIPTOR
    for path in mask.paths:
        if path in ignored:
            continue
        field = descriptor.fields_by_name[path]
        merged.ClearField(path)
        if field.is_repeated:
            getattr(merged, path).MergeFrom(getattr(given, path))
        elif field.message_type is not None:
            if given.HasField(path):
                getattr(merged, path).CopyFrom(getattr(given, path))
        elif not field.has_presence or given.HasField(path):
            setattr(merged, path, getattr(given, path))
    return merged
