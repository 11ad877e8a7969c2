"""Method + path -> Cedar action and resource, from the route table in `policies/routes.toml`.

Rules:
- the query string never changes matching;
- a path with `..` or `.` segments, `//`, a backslash, or an encoded `/`, `.` or `\\`
  is refused as `invalid_path`; it is never normalised into another resource;
- a path parameter matches one segment of unreserved characters (RFC 3986) and
  cannot start with a dot;
- anything no route matches is `no_route`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.errors import PolicyLoadError, RouteError
from authz.model import EntityRef, RouteMatch
from authz.reasons import Reason

_PARAM = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
_PARAM_VALUE = re.compile(r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}$")
_UNSAFE_ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class _Template:
    entity_type: str
    id_template: str

    def fill(self, params: dict[str, str]) -> EntityRef:
        return EntityRef(self.entity_type, self.id_template.format_map(params))


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    segments: tuple[str, ...]
    action: str
    resource: _Template
    parents: tuple[_Template, ...]
    phi: bool

    def match(self, segments: list[str]) -> RouteMatch | None:
        params: dict[str, str] = {}
        for pattern, segment in zip(self.segments, segments, strict=True):
            param = _PARAM.match(pattern)
            if param is None:
                if pattern != segment:
                    return None
            elif _PARAM_VALUE.match(segment):
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
    def __init__(self, routes: list[Route]) -> None:
        self.routes = tuple(routes)
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
        raise RouteError(Reason.NO_ROUTE, f"no route for `{method} {_printable(path)}`")


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


def _printable(text: str) -> str:
    return text[:200].encode("unicode_escape").decode("ascii")


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
    entries = doc.get("route")
    if not isinstance(entries, list) or not entries:
        raise PolicyLoadError(where, "no `[[route]]` entries")
    return RouteTable([_route(entry, i, where, actions) for i, entry in enumerate(entries)])


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
    names = {m.group(1) for s in segments if (m := _PARAM.match(s))}
    return Route(
        method=method,
        template=template,
        segments=segments,
        action=action,
        resource=_entity_template(resource_text, names, where, ctx),
        parents=tuple(_entity_template(p, names, where, ctx) for p in parent_texts),
        phi=phi,
    )


def _entity_template(text: str, names: set[str], where: str, ctx: str) -> _Template:
    try:
        ref = EntityRef.parse(text)
    except ValueError as err:
        raise PolicyLoadError(where, f"{ctx}: {err}") from err
    used = set(re.findall(r"\{([a-z_][a-z0-9_]*)\}", ref.id))
    if used - names:
        unknown = sorted(used - names)
        raise PolicyLoadError(where, f"{ctx}: `{text}` uses unknown parameters {unknown}")
    return _Template(ref.type, ref.id)
