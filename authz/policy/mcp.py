"""The MCP part of the route table: an endpoint's tools and JSON-RPC methods -> Cedar.

An `[[mcp]]` entry in `routes.toml` declares an endpoint (a path where a POST
carries JSON-RPC). Each `[[mcp.tool]]` maps a tool to an action and a
resource, whose id comes from a named argument, and declares every argument
the tool takes with its kind: `id` (one path-segment-safe identifier),
`string`, `integer` (64-bit) or `boolean`; a trailing `?` makes it optional.
Each `[[mcp.method]]` maps other JSON-RPC methods (`initialize`, `tools/list`,
`notifications/*`) to an action and a fixed resource.

Rules, for a body `check.mcp` has parsed:
- a `tools/call` is decided on its own: no handshake or session is needed;
- a tool the table does not declare is `mcp_unknown_tool`;
- arguments must be exactly the declared shape: none unknown, every required
  one present, each of its kind (`mcp_invalid_arguments`). Arguments are
  scalars only, so nothing in them can pose as a Cedar entity or extension;
- any other method needs a rule (`mcp_method_not_allowed`); a JSON-RPC
  response the client sends back has none;
- a batch is decided as a whole only when it holds no tool call and all its
  messages map to one action and resource; any other is `mcp_batch_refused`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from authz.codec import printable
from authz.errors import PolicyLoadError, RouteError
from authz.model import RouteMatch, RpcMessage, ToolCall
from authz.policy.templates import ID_VALUE, EntityTemplate, entity_template
from authz.reasons import Reason

TOOLS_CALL = "tools/call"
DEFAULT_MAX_BODY_BYTES = 65_536  # Envoy's `max_request_bytes` in envoy/mcp.yaml
MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_DEPTH = 16  # an MCP request nests 4 or 5 levels
KINDS = ("id", "string", "integer", "boolean")
_LONG = 1 << 63
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # the MCP specification's tool names
_ARGUMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_METHOD = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*(?:/\*)?")
_ENDPOINT_KEYS = {"path", "max_body_bytes", "max_depth", "tool", "method"}
_TOOL_KEYS = {"name", "action", "resource", "parents", "phi", "arguments"}
_METHOD_KEYS = {"methods", "action", "resource", "parents", "phi"}
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # ensure_ascii: on


@dataclass(frozen=True, slots=True)
class Argument:
    kind: str
    required: bool

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` for this kind, or None."""
        if self.kind == "id":
            ok = isinstance(value, str) and ID_VALUE.fullmatch(value) is not None
            return None if ok else "must be an id: up to 128 letters, digits, `.`, `_`, `~`, `-`"
        if self.kind == "string":
            return None if isinstance(value, str) else "must be a string"
        if self.kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool) and -_LONG <= value < _LONG
            return None if ok else "must be a 64-bit integer"
        return None if isinstance(value, bool) else "must be true or false"


@dataclass(frozen=True, slots=True)
class Target:
    """What a tool or method maps to."""

    action: str
    resource: EntityTemplate
    parents: tuple[EntityTemplate, ...]
    phi: bool

    def match(self, template: str, params: dict[str, Any], call: ToolCall) -> RouteMatch:
        return RouteMatch(
            action=self.action,
            resource=self.resource.fill(params),
            parents=tuple(p.fill(params) for p in self.parents),
            template=template,
            phi=self.phi,
            mcp=call,
        )


@dataclass(frozen=True)
class Tool:
    name: str
    target: Target
    arguments: dict[str, Argument]

    def check(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments, when they are exactly the declared shape."""
        for name in arguments:
            if name not in self.arguments:
                raise _invalid(f"tool `{self.name}` takes no argument `{printable(name)}`")
        for name, argument in self.arguments.items():
            if name not in arguments:
                if argument.required:
                    raise _invalid(f"tool `{self.name}` needs argument `{name}`")
                continue
            problem = argument.problem(arguments[name])
            if problem is not None:
                raise _invalid(f"tool `{self.name}`: argument `{name}` {problem}")
        return arguments


@dataclass(frozen=True)
class McpEndpoint:
    path: str
    max_body_bytes: int
    max_depth: int
    tools: dict[str, Tool]
    methods: dict[str, Target]  # exact method names
    prefixes: tuple[tuple[str, Target], ...]  # `notifications/*` -> ("notifications/", ...)

    def resolve(self, messages: list[RpcMessage], batch: bool) -> RouteMatch:
        if not batch:
            return self._one(messages[0])
        if any(m.method == TOOLS_CALL for m in messages):
            raise RouteError(
                Reason.MCP_BATCH_REFUSED, "a batch holds a `tools/call`: send each on its own"
            )
        matches = [self._one(m) for m in messages]
        first = matches[0]
        if any(_target(m) != _target(first) for m in matches[1:]):
            raise RouteError(
                Reason.MCP_BATCH_REFUSED,
                "the batch's messages map to different actions or resources: send them apart",
            )
        return replace(first, template=f"{self.path} batch", mcp=ToolCall(method="batch"))

    def _one(self, message: RpcMessage) -> RouteMatch:
        if message.method == TOOLS_CALL:
            return self._tool(message)
        target = self._rule(message.method)
        return target.match(f"{self.path} {message.method}", {}, ToolCall(message.method))

    def _tool(self, message: RpcMessage) -> RouteMatch:
        tool = self.tools.get(message.tool)
        if tool is None:
            raise RouteError(
                Reason.MCP_UNKNOWN_TOOL,
                f"no tool `{printable(message.tool)}` at `{self.path}` in the route table",
            )
        arguments = tool.check(message.arguments)
        call = ToolCall(TOOLS_CALL, tool.name, arguments, arguments_digest(arguments))
        return tool.target.match(f"{self.path} {TOOLS_CALL} {tool.name}", arguments, call)

    def _rule(self, method: str) -> Target:
        found = self.methods.get(method)
        if found is not None:
            return found
        for prefix, target in self.prefixes:
            if method.startswith(prefix):
                return target
        what = f"method `{printable(method)}`" if method else "a JSON-RPC response"
        raise RouteError(
            Reason.MCP_METHOD_NOT_ALLOWED, f"no rule for {what} at `{self.path}` in the route table"
        )


def arguments_digest(arguments: dict[str, Any]) -> str:
    """SHA-256 of the arguments' canonical JSON: sorted keys, no spaces, ASCII."""
    return hashlib.sha256(_CANONICAL.encode(arguments).encode("ascii")).hexdigest()


def _target(match: RouteMatch) -> tuple[object, ...]:
    return (match.action, match.resource, match.parents, match.phi)


def _invalid(detail: str) -> RouteError:
    return RouteError(Reason.MCP_INVALID_ARGUMENTS, detail)


# --- loading ---------------------------------------------------------------------------------


def load_endpoint(
    entry: Any, path: str, ctx: str, where: str, actions: frozenset[str] | None
) -> McpEndpoint:
    """One `[[mcp]]` entry; `path` is already checked by the route table."""
    _known(entry, _ENDPOINT_KEYS, where, ctx)
    tools: dict[str, Tool] = {}
    for index, spec in enumerate(_tables(entry, "tool", where, ctx)):
        tool = _tool(spec, f"{ctx}: tool {index + 1}", where, actions)
        if tool.name in tools:
            raise PolicyLoadError(where, f"{ctx}: tool `{tool.name}` is declared twice")
        tools[tool.name] = tool
    methods: dict[str, Target] = {}
    for index, spec in enumerate(_tables(entry, "method", where, ctx)):
        method_ctx = f"{ctx}: method rule {index + 1}"
        _known(spec, _METHOD_KEYS, where, method_ctx)
        target = _target_of(spec, set(), method_ctx, where, actions)
        for name in _method_names(spec, method_ctx, where):
            if name in methods:
                raise PolicyLoadError(where, f"{method_ctx}: `{name}` has a rule already")
            methods[name] = target
    return McpEndpoint(
        path=path,
        max_body_bytes=_int(
            entry, "max_body_bytes", DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES, ctx, where
        ),
        max_depth=_int(entry, "max_depth", DEFAULT_MAX_DEPTH, 64, ctx, where),
        tools=tools,
        methods={k: v for k, v in methods.items() if not k.endswith("/*")},
        prefixes=tuple((k[:-1], v) for k, v in methods.items() if k.endswith("/*")),
    )


def _tool(spec: Any, ctx: str, where: str, actions: frozenset[str] | None) -> Tool:
    _known(spec, _TOOL_KEYS, where, ctx)
    name = spec.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise PolicyLoadError(where, f"{ctx}: `name` must be 1-128 letters, digits, `_`, `-`, `.`")
    ctx = f"{ctx} (`{name}`)"
    arguments = _arguments(spec.get("arguments", {}), ctx, where)
    ids = {n for n, a in arguments.items() if a.kind == "id" and a.required}
    return Tool(name, _target_of(spec, ids, ctx, where, actions), arguments)


def _arguments(spec: Any, ctx: str, where: str) -> dict[str, Argument]:
    if not isinstance(spec, dict):
        raise PolicyLoadError(where, f"{ctx}: `arguments` must be a table of name = kind")
    arguments = {}
    for name, kind in spec.items():
        base = kind.removesuffix("?") if isinstance(kind, str) else ""
        if not _ARGUMENT_NAME.fullmatch(name) or base not in KINDS:
            raise PolicyLoadError(
                where,
                f"{ctx}: argument `{name}` = `{kind}`: kind must be one of {list(KINDS)}, "
                "with `?` when optional",
            )
        arguments[name] = Argument(base, not kind.endswith("?"))
    return arguments


def _target_of(
    spec: Any, names: set[str], ctx: str, where: str, actions: frozenset[str] | None
) -> Target:
    """Action, resource, parents and phi; templates may use the required `id` arguments."""
    action, resource = spec.get("action"), spec.get("resource")
    parents, phi = spec.get("parents", []), spec.get("phi", True)
    if not isinstance(action, str) or not isinstance(resource, str):
        raise PolicyLoadError(where, f"{ctx}: `action` and `resource` are required strings")
    if actions is not None and action not in actions:
        raise PolicyLoadError(where, f"{ctx}: action `{action}` is not declared in the schema")
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise PolicyLoadError(where, f"{ctx}: `parents` must be a list of entity references")
    if not isinstance(phi, bool):
        raise PolicyLoadError(where, f"{ctx}: `phi` must be true or false")
    hint = " (a required argument of kind `id`)" if names else " (methods take none)"
    return Target(
        action=action,
        resource=entity_template(resource, names, where, ctx + hint),
        parents=tuple(entity_template(p, names, where, ctx + hint) for p in parents),
        phi=phi,
    )


def _method_names(spec: Any, ctx: str, where: str) -> list[str]:
    names = spec.get("methods")
    if not isinstance(names, list) or not names:
        raise PolicyLoadError(where, f"{ctx}: `methods` must be a non-empty list of method names")
    for name in names:
        if not isinstance(name, str) or not _METHOD.fullmatch(name):
            raise PolicyLoadError(
                where,
                f"{ctx}: `{name}` is not a method name like `tools/list` or `notifications/*`",
            )
        if name == TOOLS_CALL:
            raise PolicyLoadError(
                where, f"{ctx}: `tools/call` is decided per tool: declare `[[mcp.tool]]` entries"
            )
    return names


def _tables(entry: Any, key: str, where: str, ctx: str) -> list[Any]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PolicyLoadError(where, f"{ctx}: `{key}` must be `[[mcp.{key}]]` tables")
    return value


def _known(spec: Any, keys: set[str], where: str, ctx: str) -> None:
    if not isinstance(spec, dict):
        raise PolicyLoadError(where, f"{ctx}: must be a table")
    unknown = sorted(set(spec) - keys)
    if unknown:
        raise PolicyLoadError(where, f"{ctx}: unknown keys {unknown}; known: {sorted(keys)}")


def _int(entry: Any, key: str, default: int, most: int, ctx: str, where: str) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise PolicyLoadError(where, f"{ctx}: `{key}` must be an integer from 1 to {most}")
    return value
