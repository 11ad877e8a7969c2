"""Encodings every layer shares: base64url without padding (RFC 7515) and RFC 3339 times."""

from __future__ import annotations

import base64
import binascii
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
