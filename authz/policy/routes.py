"""Method + path -> Cedar action and resource, from the route table in `policies/routes.toml`.

Rules:
- the query string never changes matching;
- a path with `..` or `.` segments, `//`, a backslash, or an encoded `/`, `.` or `\\`
  is refused as `invalid_path`; it is never normalised into another resource;
- a path parameter matches one segment of unreserved characters (RFC 3986) and
  cannot start with a dot;
- anything no route matches is `no_route`;
- a POST to an MCP endpoint (`[[mcp]]`, see `policy.mcp`) is decided by its body;
- a connection to a database listener (`[[database]]`, see `policy.databases`) is
  decided by the listener it reached.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.codec import printable
from authz.errors import PolicyLoadError, RouteError
from authz.model import RouteMatch
from authz.policy import databases
from authz.policy.mcp import McpEndpoint, load_endpoint
from authz.policy.templates import ID_VALUE, EntityTemplate, entity_template
from authz.reasons import Reason

_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")  # every pattern here: fullmatch
_UNSAFE_ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    segments: tuple[str, ...]
    action: str
    resource: EntityTemplate
    parents: tuple[EntityTemplate, ...]
    phi: bool

    def match(self, segments: list[str]) -> RouteMatch | None:
        params: dict[str, str] = {}
        for pattern, segment in zip(self.segments, segments, strict=True):
            param = _PARAM.fullmatch(pattern)
            if param is None:
                if pattern != segment:
                    return None
            elif ID_VALUE.fullmatch(segment):
                params[param.group(1)] = segment
            else:
                return None
        return RouteMatch(
            action=self.action,
            resource=self.resource.fill(params),
            parents=tuple(p.fill(params) for p in self.parents),
            template=self.template,
            phi=self.phi,
        )


class RouteTable:
    def __init__(
        self,
        routes: list[Route],
        mcp: list[McpEndpoint] | None = None,
        dbs: databases.Databases | None = None,
    ) -> None:
        self.routes = tuple(routes)
        self.mcp = {endpoint.path: endpoint for endpoint in mcp or ()}
        self.databases = dbs or databases.Databases([])
        self._index: dict[tuple[str, int], list[Route]] = {}
        for route in routes:
            self._index.setdefault((route.method, len(route.segments)), []).append(route)

    def resolve(self, method: str, raw_path: str) -> RouteMatch:
        path = raw_path.partition("?")[0].partition("#")[0]
        segments = split_path(path)
        for route in self._index.get((method, len(segments)), ()):
            found = route.match(segments)
            if found is not None:
                return found
        raise RouteError(Reason.NO_ROUTE, f"no route for `{method} {printable(path, 200)}`")

    def mcp_endpoint(self, method: str, path: str) -> McpEndpoint | None:
        """The MCP endpoint a POST to `path` (without its query) goes to, if any."""
        return self.mcp.get(path) if method == "POST" else None


def split_path(path: str) -> list[str]:
    """Split a request path into segments, refusing any path that could alias another."""
    if not path.startswith("/"):
        raise RouteError(Reason.INVALID_PATH, "path must start with `/`")
    if "//" in path or "\\" in path or _UNSAFE_ENCODED.search(path):
        raise RouteError(
            Reason.INVALID_PATH, "path has `//`, a backslash or an encoded `/`, `.` or `\\`"
        )
    if _CONTROL.search(path):
        raise RouteError(Reason.INVALID_PATH, "path has control characters or spaces")
    segments = path[1:].split("/")
    if any(s in (".", "..") for s in segments):
        raise RouteError(Reason.INVALID_PATH, "path has a `.` or `..` segment")
    return segments


def load(path: Path, actions: frozenset[str] | None = None) -> RouteTable:
    """Read `routes.toml`; `actions`, when given, is the set of actions the schema declares."""
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PolicyLoadError(where, "route table not found") from err
    except UnicodeDecodeError as err:
        raise PolicyLoadError(where, "not UTF-8") from err
    except tomllib.TOMLDecodeError as err:
        line = _toml_line(str(err))
        raise PolicyLoadError(where, f"invalid TOML: {err}", line) from err
    entries = doc.get("route", [])
    endpoints = doc.get("mcp", [])
    dbs = doc.get("database", [])
    if not all(isinstance(x, list) for x in (entries, endpoints, dbs)):
        raise PolicyLoadError(where, "`route`, `mcp` and `database` must be arrays of tables")
    if not entries and not endpoints and not dbs:
        raise PolicyLoadError(where, "no `[[route]]`, `[[mcp]]` or `[[database]]` entries")
    routes = [_route(entry, i, where, actions) for i, entry in enumerate(entries)]
    mcp = [_mcp(entry, i, where, actions) for i, entry in enumerate(endpoints)]
    endpoint_paths = [e.path for e in mcp]
    for endpoint in endpoint_paths:
        if endpoint_paths.count(endpoint) > 1:
            raise PolicyLoadError(where, f"MCP endpoint `{endpoint}` is declared twice")
        if any(r.method == "POST" and r.template == endpoint for r in routes):
            raise PolicyLoadError(where, f"`POST {endpoint}` is both a route and an MCP endpoint")
    return RouteTable(routes, mcp, databases.load(dbs, where, actions))


def _toml_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _route(entry: Any, index: int, where: str, actions: frozenset[str] | None) -> Route:
    ctx = f"route {index + 1}"
    try:
        method = str(entry["method"]).upper()
        template = str(entry["path"])
        action = str(entry["action"])
        resource_text = str(entry["resource"])
        parent_texts = [str(p) for p in entry.get("parents", [])]
        phi = entry.get("phi", True)
    except (KeyError, TypeError) as err:
        raise PolicyLoadError(where, f"{ctx}: missing key {err}") from err
    if method not in _METHODS:
        raise PolicyLoadError(where, f"{ctx}: method `{method}` is not one of {sorted(_METHODS)}")
    if not isinstance(phi, bool):
        raise PolicyLoadError(where, f"{ctx}: `phi` must be true or false")
    if actions is not None and action not in actions:
        raise PolicyLoadError(where, f"{ctx}: action `{action}` is not declared in the schema")
    try:
        segments = tuple(split_path(template))
    except RouteError as err:
        raise PolicyLoadError(where, f"{ctx}: path `{template}`: {err.detail}") from err
    names = {m.group(1) for s in segments if (m := _PARAM.fullmatch(s))}
    return Route(
        method=method,
        template=template,
        segments=segments,
        action=action,
        resource=entity_template(resource_text, names, where, ctx),
        parents=tuple(entity_template(p, names, where, ctx) for p in parent_texts),
        phi=phi,
    )


def _mcp(entry: Any, index: int, where: str, actions: frozenset[str] | None) -> McpEndpoint:
    ctx = f"mcp endpoint {index + 1}"
    path = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or "{" in path:
        raise PolicyLoadError(where, f"{ctx}: `path` must be a fixed path like `/mcp`")
    try:
        split_path(path)
    except RouteError as err:
        raise PolicyLoadError(where, f"{ctx}: path `{path}`: {err.detail}") from err
    return load_endpoint(entry, path, f"{ctx} (`{path}`)", where, actions)
