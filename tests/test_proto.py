"""The committed code in authz/_proto matches proto/ (by descriptor, not by text)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from authz._proto import (
    access_pb2,
    access_pb2_grpc,
    agents_pb2,
    agents_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
SOURCES = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
GENERATED = {
    "lasthop/v1/access.proto": access_pb2,
    "lasthop/v1/agents.proto": agents_pb2,
    "lasthop/v1/grants.proto": grants_pb2,
}
SERVICES = {
    "lasthop/v1/access.proto": (access_pb2, access_pb2_grpc, ["Access"]),
    "lasthop/v1/agents.proto": (agents_pb2, agents_pb2_grpc, ["Agents"]),
    "lasthop/v1/grants.proto": (grants_pb2, grants_pb2_grpc, ["Grants"]),
}


@pytest.fixture(scope="module")
def compiled(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = tmp_path_factory.mktemp("proto") / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"--descriptor_set_out={out}",
            *SOURCES,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in fds.file}


def committed(module: Any) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)


def _strip_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _strip_json_names(nested)


def normalised(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Drop `json_name`: protoc fills it in a descriptor set, the Python generator does not,
    and it is derived from the field name anyway."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(fdp)
    copy.ClearField("source_code_info")
    for message in copy.message_type:
        _strip_json_names(message)
    return copy


def test_every_proto_has_generated_code(
    compiled: dict[str, descriptor_pb2.FileDescriptorProto],
) -> None:
    assert sorted(GENERATED) == SOURCES
    assert set(compiled) == set(GENERATED)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_descriptor_matches_the_proto(
    compiled: dict[str, descriptor_pb2.FileDescriptorProto], name: str
) -> None:
    fresh, ours = normalised(compiled[name]), normalised(committed(GENERATED[name]))
    assert ours.name == fresh.name
    assert ours.package == fresh.package
    assert list(ours.dependency) == list(fresh.dependency)
    assert {m.name: m for m in ours.message_type} == {m.name: m for m in fresh.message_type}
    assert {e.name: e for e in ours.enum_type} == {e.name: e for e in fresh.enum_type}
    assert {s.name: s for s in ours.service} == {s.name: s for s in fresh.service}
    assert ours == fresh


class RecordingChannel:
    """Stands in for a grpc.Channel; records every method the stub binds."""

    def __init__(self) -> None:
        self.bound: dict[str, tuple[str, Callable[..., Any], Callable[..., Any]]] = {}

    def _bind(self, kind: str) -> Callable[..., object]:
        def bind(
            path: str,
            request_serializer: Callable[..., Any],
            response_deserializer: Callable[..., Any],
            **_: Any,
        ) -> object:
            self.bound[path] = (kind, request_serializer, response_deserializer)
            return object()

        return bind

    def __getattr__(self, kind: str) -> Callable[..., object]:
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._bind(kind)
        raise AttributeError(kind)


def streaming_kind(method: descriptor_pb2.MethodDescriptorProto) -> str:
    return (
        f"{'stream' if method.client_streaming else 'unary'}_"
        f"{'stream' if method.server_streaming else 'unary'}"
    )


def message_class(module: Any, full_name: str) -> Any:
    package, _, name = full_name.lstrip(".").rpartition(".")
    assert package == "lasthop.v1"
    return getattr(module, name)


@pytest.mark.parametrize("proto", sorted(SERVICES))
def test_every_service_method_is_on_the_stub_and_servicer(
    compiled: dict[str, descriptor_pb2.FileDescriptorProto], proto: str
) -> None:
    pb2, pb2_grpc, names = SERVICES[proto]
    services = compiled[proto].service
    assert [s.name for s in services] == names
    for service in services:
        channel = RecordingChannel()
        stub = getattr(pb2_grpc, f"{service.name}Stub")(channel)
        servicer = getattr(pb2_grpc, f"{service.name}Servicer")
        assert hasattr(pb2_grpc, f"add_{service.name}Servicer_to_server")
        expected_paths = {f"/lasthop.v1.{service.name}/{m.name}" for m in service.method}
        assert set(channel.bound) == expected_paths
        for method in service.method:
            assert hasattr(stub, method.name), method.name
            assert callable(getattr(servicer, method.name, None)), method.name
            kind, serialize, deserialize = channel.bound[
                f"/lasthop.v1.{service.name}/{method.name}"
            ]
            assert kind == streaming_kind(method)
            request_cls = message_class(pb2, method.input_type)
            response_cls = message_class(pb2, method.output_type)
            assert serialize == request_cls.SerializeToString
            assert deserialize == response_cls.FromString


@pytest.mark.parametrize("name", ["access", "agents", "grants"])
def test_generated_modules_are_package_relative(name: str) -> None:
    text = (ROOT / "authz" / "_proto" / f"{name}_pb2_grpc.py").read_text()
    assert f"from . import {name}_pb2" in text
    assert "from lasthop.v1 import" not in text
