"""The package's shape, checked the way test_proto checks the generated code for drift.

Dependencies point one way, from the edge inward:

    cli -> server -> access -> check -> detect -> {policy, audit} -> stores
        -> {model, errors, reasons, codec, config}

`dev` (the demo, local stacks, the throwaway token issuer) is outside the
runtime graph: it may import anything, and only `cli` may import it, and
only inside a function (so `lasthop serve` never loads it). Only the edge
speaks the wire protocols, and only the Redis store speaks Redis.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "authz"

# Lower rank: further inside. A module may import its own subpackage and anything of lower rank.
RANK = {
    "model": 0,
    "errors": 0,
    "reasons": 0,
    "codec": 0,
    "config": 0,
    "version": 0,  # authz.version(), defined in authz/__init__.py
    "spiffe": 0,
    "stores": 1,
    "policy": 2,
    "audit": 2,
    "detect": 3,
    "check": 4,
    "access": 5,
    "server": 6,
    "cli": 7,
    "__main__": 8,
}
OUTSIDE = {"dev"}  # not in the runtime graph
EDGE_ONLY = {  # third-party modules only the edge may import
    "grpc": {"server", "cli", "dev"},
    "grpc_health": {"server", "cli", "dev"},
    "google.protobuf": {"server", "cli", "dev"},
    "google.rpc": {"server", "cli", "dev"},
    "envoy": {"server", "cli", "dev"},
    "authz._proto": {"server", "cli", "dev"},
    "redis": {"stores", "dev"},
    "opentelemetry": {"server", "dev"},
    "mcp": {"dev"},  # the MCP SDK: the demo's server and agent; Lasthop parses MCP itself
    "psycopg": {"dev"},  # the demo's and the tests' PostgreSQL client, through Envoy
}
PEERS = {("policy", "audit"), ("audit", "policy")}  # same rank, and must stay apart


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if "_proto" in rel.parts:
            continue
        yield ".".join(rel.parts), path


def area(module: str) -> str:
    """`authz.check.pipeline` -> `check`; `authz.model` -> `model`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno, id(node) in top
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno, id(node) in top


def violations() -> list[str]:
    found: list[str] = []
    for module, path in modules():
        here = area(module)
        for target, line, top_level in imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            for prefix, allowed in EDGE_ONLY.items():
                if (target == prefix or target.startswith(prefix + ".")) and here not in allowed:
                    found.append(f"{where}: `{here}` imports `{target}` (edge only)")
            if not target.startswith("authz."):
                continue
            there = area(target)
            if there == here or there in ("", "_proto") or here in OUTSIDE:
                continue
            if there in OUTSIDE:
                if here != "cli" or top_level:
                    found.append(f"{where}: `{here}` imports `authz.{there}` (dev is outside)")
                continue
            if here not in RANK or there not in RANK:
                found.append(f"{where}: `{here}` or `{there}` has no rank in this test")
            elif RANK[there] > RANK[here] or (here, there) in PEERS:
                found.append(f"{where}: `{here}` imports `authz.{there}`: inward imports outward")
    return sorted(set(found))


def test_imports_point_inward() -> None:
    assert violations() == []


def test_the_test_catches_an_outward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check itself can fail: a fake package where stores imports the server."""
    fake = tmp_path / "authz"
    (fake / "stores").mkdir(parents=True)
    (fake / "stores" / "bad.py").write_text("from authz.server import app\nimport grpc\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    assert len(violations()) == 2


def test_only_the_composition_root_constructs_a_pipeline() -> None:
    constructed = []
    for folder in ("authz", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                    if name == "Pipeline":
                        constructed.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert [c.split(":")[0] for c in constructed] == ["authz/server/app.py"], constructed


def test_the_top_level_is_small_and_every_subpackage_says_what_it_owns() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
