"""Encodings every layer shares: base64url without padding (RFC 7515), RFC 3339 times,
decision ids, W3C trace context (`traceparent`), and strict JSON (RFC 8259) for bodies Lasthop
decides on."""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import time
from datetime import UTC, datetime
from typing import Any


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


def random_id() -> str:
    """128 random bits as 32 hex digits: a decision id."""
    return os.urandom(16).hex()


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def rfc3339(timestamp: float) -> str:
    """The `time` of every audit record: RFC 3339, UTC, milliseconds.

    Exactly `datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")`
    (microseconds rounded half to even, then cut to milliseconds), with the
    date and time of day formatted once per second: it is on every check.
    """
    global _second
    if timestamp < 0:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)
    second = int(whole) + (micros >= 1_000_000)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{micros % 1_000_000 // 1000:03d}+00:00"


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


class JsonError(ValueError):
    """Bytes that are not one strict JSON document; `kind` says how (the caller's reason)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # encoding | syntax | depth | duplicate


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_WHITESPACE = " \t\n\r"  # JSON's own: no other space around a document


def strict_json(data: bytes, max_depth: int) -> Any:
    """One JSON document (RFC 8259) from `data`, or JsonError saying what is wrong.

    Stricter than `json.loads` wherever the standard library is lenient: strict
    UTF-8 only (no BOM, no UTF-16 or -32), no `NaN` or `Infinity`, no member twice
    in one object (parsers disagree on which one wins), no unpaired surrogate
    escape (`json` accepts `"\\ud800"`, which no UTF-8 encoder can write back), and
    at most `max_depth` levels of nesting. Deep nesting makes `json` raise
    RecursionError, not ValueError; it is caught here and reported as depth.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JsonError("encoding", f"not UTF-8: invalid byte at offset {err.start}") from err
    if text.startswith("\ufeff"):
        raise JsonError("encoding", "starts with a byte order mark")
    try:
        value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip(_WHITESPACE)))
        if text[end:].strip(_WHITESPACE):
            raise JsonError("syntax", f"not JSON: more after the document at offset {end}")
    except RecursionError as err:
        raise JsonError("depth", f"nested deeper than {max_depth} levels") from err
    except JsonError:
        raise
    except ValueError as err:
        raise JsonError("syntax", f"not JSON: {err}") from err
    if text.count("{") + text.count("[") > max_depth or _SURROGATE_ESCAPE.search(text):
        _walk(value, max_depth)  # only when the cheap bounds above cannot rule it out
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise JsonError("duplicate", f"member `{printable(name)}` appears twice")
            seen.add(name)
    return result


def _no_constant(name: str) -> Any:
    raise JsonError("syntax", f"not JSON: `{name}`")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constant)


def _walk(value: Any, max_depth: int) -> None:
    """Depth and unpaired surrogates, without recursion."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _utf8(item)
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise JsonError("depth", f"nested deeper than {max_depth} levels")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str):
                    _utf8(key)
                stack.append((child, depth + 1))


def _utf8(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise JsonError("encoding", "holds an unpaired surrogate escape") from err


def printable(text: str, limit: int = 80) -> str:
    """User input for an error message: escaped to ASCII and cut short."""
    return text[:limit].encode("unicode_escape").decode("ascii")
