"""Protocol Buffers wire encoding of the few messages the allow path answers with.

The allow response is built as bytes, not as protobuf objects: building seven
`HeaderValueOption` messages and serialising them cost more than the rest of a
cached check. The encoding is the standard one (a tag, a varint length, the
payload), and field numbers come from the generated descriptors, so a test
can hold it to `CheckResponse.FromString` (tests/test_ext_authz.py).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb

_LEN = 2  # wire type of strings, bytes and embedded messages
_VARINT = 0


def _number(message: type, name: str) -> int:
    number: int = message.DESCRIPTOR.fields_by_name[name].number  # type: ignore[attr-defined]
    return number


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: `tag` (from `tag_of`), the length, the payload."""
    return tag + varint(len(payload)) + payload


def tag_of(message: type, name: str) -> bytes:
    return _tag(_number(message, name), _LEN)


_HEADER = tag_of(base_pb2.HeaderValueOption, "header")
_KEY = tag_of(base_pb2.HeaderValue, "key")
_VALUE = tag_of(base_pb2.HeaderValue, "value")
_OVERWRITE = _tag(_number(base_pb2.HeaderValueOption, "append_action"), _VARINT) + varint(
    base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
)
OK_HEADERS = tag_of(pb.OkHttpResponse, "headers")
OK_REMOVE = tag_of(pb.OkHttpResponse, "headers_to_remove")
RESPONSE_OK = tag_of(pb.CheckResponse, "ok_response")
STATUS_OK = field(tag_of(pb.CheckResponse, "status"), b"")  # google.rpc.Status, code 0 (OK)


def ok_header(key: str, value: str) -> bytes:
    """An `OkHttpResponse.headers` entry that overwrites `key` with `value` (both ASCII)."""
    header = field(_KEY, key.encode("ascii")) + field(_VALUE, value.encode("ascii"))
    return field(OK_HEADERS, field(_HEADER, header) + _OVERWRITE)
