"""Load and validate a policy directory once; every error names the file and line.

A directory holds `schema.cedarschema`, one or more `*.cedar` files (one policy
per file, each with an `@id`), `entities.json` and `routes.toml`. Loading
either returns a complete `PolicyBundle` or raises `PolicyLoadError`; nothing
half-loaded is ever returned.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from authz import routes
from authz.errors import PolicyLoadError
from authz.model import Agent

SCHEMA_FILE = "schema.cedarschema"
ENTITIES_FILE = "entities.json"
ROUTES_FILE = "routes.toml"
AGENT_TYPE = "Agent"


@dataclass(frozen=True)
class PolicyInfo:
    cedar_id: str  # the positional id in the combined set (policy0, ...)
    id: str  # the @id annotation
    file: str
    line: int
    effect: str
    reason: str  # the @reason annotation: the deny reason a forbid reports


@dataclass(frozen=True)
class PolicyBundle:
    policy_set: cedarpy.PolicySet
    schema: cedarpy.Schema
    entities: cedarpy.Entities  # everything but agents; agents come from the registry
    agents: dict[str, Agent]  # the registry seed
    routes: routes.RouteTable
    actions: frozenset[str]  # the actions the schema declares
    policies: dict[str, PolicyInfo]  # by cedar id
    version: str  # sha256 over every file that was loaded


def load(directory: Path) -> PolicyBundle:
    if not directory.is_dir():
        raise PolicyLoadError(str(directory), "policy directory not found")
    digest = hashlib.sha256()
    schema_path = directory / SCHEMA_FILE
    schema_text = _read(schema_path, digest)
    schema = _parse_schema(schema_path, schema_text)
    files = sorted(directory.glob("*.cedar"))
    if not files:
        raise PolicyLoadError(str(directory), "no `*.cedar` policy files")
    texts: list[str] = []
    infos: dict[str, PolicyInfo] = {}
    seen_ids: dict[str, str] = {}
    for path in files:
        text = _read(path, digest)
        for info in _check_file(path, text, schema, offset=len(infos)):
            if info.id in seen_ids:
                raise PolicyLoadError(
                    str(path), f"duplicate `@id(\"{info.id}\")`, also in {seen_ids[info.id]}",
                    info.line,
                )
            seen_ids[info.id] = f"{path.name}"
            infos[info.cedar_id] = info
        texts.append(text)
    policy_set = cedarpy.PolicySet.from_str("\n".join(texts))
    if len(policy_set) != len(infos):
        raise PolicyLoadError(str(directory), "policy count changed when combining files")
    entities_path = directory / ENTITIES_FILE
    entities, agents = _load_entities(entities_path, _read(entities_path, digest), schema)
    routes_path = directory / ROUTES_FILE
    _read(routes_path, digest)
    actions = schema_actions(schema_text)
    table = routes.load(routes_path, actions)
    return PolicyBundle(
        policy_set=policy_set,
        schema=schema,
        entities=entities,
        agents=agents,
        routes=table,
        actions=actions,
        policies=infos,
        version=digest.hexdigest()[:16],
    )


def _read(path: Path, digest: Any) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise PolicyLoadError(str(path), "file not found") from err
    except OSError as err:
        raise PolicyLoadError(str(path), f"cannot read: {err.strerror}") from err
    digest.update(path.name.encode() + b"\0" + data + b"\0")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise PolicyLoadError(str(path), "not UTF-8", line) from err


def _parse_schema(path: Path, text: str) -> cedarpy.Schema:
    try:
        return cedarpy.Schema.from_str(text)
    except ValueError as err:
        message = str(err)
        line, col = _locate(text, message, lambda t: cedarpy.Schema.from_str(t))
        raise PolicyLoadError(str(path), message, line, col) from err


def schema_actions(schema_text: str) -> frozenset[str]:
    """Action names the schema declares (`action read, write appliesTo ...`)."""
    names: set[str] = set()
    for match in re.finditer(r"\baction\s+([^{;]+?)(?:\s+in\s+\[[^\]]*\])?\s*(?:appliesTo|;|\{)",
                             _strip_comments(schema_text)):
        for name in match.group(1).split(","):
            names.add(name.strip().strip('"'))
    return frozenset(n for n in names if n)


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def _locate(text: str, message: str, parse: Any) -> tuple[int | None, int | None]:
    """Find the line and column a Cedar error points at, since cedarpy reports none.

    For `unexpected token X`: the first occurrence of X whose removal does not
    merely move the error onto the token after it. For other errors: the first
    line holding the name the message quotes. cedarpy gives no spans, so this
    is a search, and it says nothing rather than guess when it finds nothing.
    """
    token = re.search(r"unexpected token `([^`]+)`", message)
    if token is not None:
        found = _locate_token(text, message, token.group(1), parse)
        if found is not None:
            return found
    if message == "unexpected end of input":
        lines = text.rstrip().split("\n")
        return len(lines), len(lines[-1]) + 1
    for quoted, bare in reversed(re.findall(r"`([^`]+)`|: (\w+)$", message)):
        name = quoted or bare
        match = re.search(rf"(?<![\w\"]){re.escape(name)}(?![\w\"])", text) if name else None
        if match is not None:
            return _position(text, match.start())
    return None, None


def _locate_token(text: str, message: str, token: str,
                  parse: Any) -> tuple[int, int] | None:
    for match in re.finditer(re.escape(token), _blank_comments(text)):
        start, end = match.span()
        following = re.match(r"\s*(\w+|\S)", text[end:])
        try:
            parse(text[:start] + " " * len(token) + text[end:])
            return _position(text, start)
        except ValueError as err:
            moved_on = following is not None and str(err) == (
                f"unexpected token `{following.group(1)}`")
            if not moved_on and str(err) != message:
                return _position(text, start)
    return None


def _blank_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", lambda m: " " * len(m.group(0)), text)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _check_file(path: Path, text: str, schema: cedarpy.Schema, offset: int) -> list[PolicyInfo]:
    """Parse and validate one file; returns its policies, numbered after `offset`."""
    where = str(path)
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as err:
        line, col = _locate(text, str(err), cedarpy.PolicySet.from_str)
        raise PolicyLoadError(where, str(err), line, col) from err
    est = json.loads(cedarpy.policies_to_json_str(text))
    if est.get("templates"):
        raise PolicyLoadError(where, "templates are not supported here; write static policies")
    starts = statement_lines(text)
    policies = est["staticPolicies"]
    if not policies:
        raise PolicyLoadError(where, "file holds no policy")
    infos: list[PolicyInfo] = []
    for index in range(len(policies)):
        body = policies[f"policy{index}"]
        annotations = body.get("annotations", {})
        line = starts[index] if index < len(starts) else None
        policy_id = annotations.get("id")
        if not policy_id:
            raise PolicyLoadError(where, 'policy has no `@id("...")` annotation', line)
        infos.append(PolicyInfo(
            cedar_id=f"policy{offset + index}",
            id=policy_id,
            file=path.name,
            line=line or 1,
            effect=body["effect"],
            reason=annotations.get("reason", ""),
        ))
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        first = result.errors[0]
        index = int(first.policy_id.removeprefix("policy") or 0) if first.policy_id else 0
        line = starts[index] if index < len(starts) else None
        _, col = _locate(text, first.error, cedarpy.PolicySet.from_str)
        name = re.search(r"attribute `([^`]+)`", first.error)
        if name and line is not None:
            for number, text_line in enumerate(text.split("\n")[line - 1:], line):
                if re.search(rf"\b{re.escape(name.group(1))}\b", text_line):
                    line, col = number, text_line.find(name.group(1)) + 1
                    break
        problem = first.error.replace(f"`{first.policy_id}`", f"`{infos[index].id}`")
        raise PolicyLoadError(where, problem, line, col)
    return infos


def statement_lines(text: str) -> list[int]:
    """The line on which each top-level `;`-terminated statement starts."""
    starts: list[int] = []
    line, i, start = 1, 0, None
    while i < len(text):
        c = text[i]
        if c == "\n":
            line += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == ";":
            start = None
        elif not c.isspace() and start is None:
            start = line
            starts.append(line)
        i += 1
    return starts


def _load_entities(path: Path, text: str, schema: cedarpy.Schema) -> tuple[cedarpy.Entities,
                                                                          dict[str, Agent]]:
    where = str(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise PolicyLoadError(where, f"invalid JSON: {err.msg}", err.lineno, err.colno) from err
    if not isinstance(doc, list):
        raise PolicyLoadError(where, "must be a JSON list of entities", 1)
    for entity in doc:
        try:
            cedarpy.Entities.from_json_str(json.dumps([entity]), schema)
        except ValueError as err:
            uid = entity.get("uid", {}) if isinstance(entity, dict) else {}
            line = _line_of(text, str(uid.get("id", ""))) if isinstance(uid, dict) else None
            raise PolicyLoadError(where, f"entity {json.dumps(uid)}: {err}", line) from err
    agents: dict[str, Agent] = {}
    others: list[Any] = []
    for entity in doc:
        if entity["uid"]["type"] == AGENT_TYPE:
            agent = _agent(entity, where, text)
            agents[agent.id] = agent
        else:
            others.append(entity)
    try:
        entities = cedarpy.Entities.from_json_str(json.dumps(others), schema)
    except ValueError as err:
        raise PolicyLoadError(where, str(err)) from err
    return entities, agents


def _line_of(text: str, needle: str) -> int | None:
    pos = text.find(json.dumps(needle)) if needle else -1
    return text.count("\n", 0, pos) + 1 if pos >= 0 else None


def _agent(entity: dict[str, Any], where: str, text: str) -> Agent:
    attrs = entity.get("attrs", {})
    agent_id = entity["uid"]["id"]
    owner = attrs.get("owner")
    owner_id = owner.get("__entity", owner).get("id") if isinstance(owner, dict) else owner
    risk, status = attrs.get("risk"), attrs.get("status")
    if not isinstance(owner_id, str) or not isinstance(risk, int) or status not in (
        "active", "suspended"
    ):
        raise PolicyLoadError(
            where, f"agent `{agent_id}` needs `owner`, integer `risk` and status active|suspended",
            _line_of(text, agent_id),
        )
    if not 0 <= risk <= 100:
        raise PolicyLoadError(where, f"agent `{agent_id}`: risk must be 0 to 100",
                              _line_of(text, agent_id))
    return Agent(id=agent_id, owner=owner_id, risk=risk, status=status)
