"""Encodings every layer shares: base64url without padding (RFC 7515), RFC 3339 times and
W3C trace context (`traceparent`)."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Unpadded base64url -> bytes. Raises ValueError on anything else."""
    if len(text) % 4 == 1:
        raise ValueError("not base64url: impossible length")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"not base64url: {err}") from err


def rfc3339(timestamp: float) -> str:
    """The `time` of every audit record: RFC 3339, UTC, milliseconds."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def traceparent(value: str) -> str:
    """A valid `traceparent` header value, normalised; "" for anything that is not one."""
    match = _TRACEPARENT.match(value.strip().lower())
    if not match:
        return ""
    version, trace_id, parent_id, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"}:
        return ""
    if set(parent_id) == {"0"}:
        return ""
    return match.group(0)[:55]


def trace_id_of(value: str) -> str:
    """The 32-hex trace id of a `traceparent` that `traceparent()` accepted, else ""."""
    return value[3:35] if value else ""
