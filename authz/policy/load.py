"""Load and validate a policy directory once; every error names the file and line.

A directory holds `schema.cedarschema`, one or more `*.cedar` files (one policy
per file, each with an `@id`), `entities.json` and `routes.toml`, and may hold
`approval/` (the approval policies, see `policy.approval`). Loading either
returns a complete `PolicyBundle` or raises `PolicyLoadError`; nothing
half-loaded is ever returned.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cedarpy

from authz.errors import PolicyLoadError
from authz.model import AGENT_STATUSES, Agent
from authz.policy import approval, routes
from authz.policy.locate import locate, statement_lines
from authz.policy.slices import PolicySlices, from_est

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
    mode: str  # "enforce", or "shadow" (`@mode("shadow")`): evaluated, never enforced
    annotations: Mapping[str, str] = field(default_factory=dict)  # every one, as written


@dataclass(frozen=True)
class PolicyBundle:
    policy_set: cedarpy.PolicySet  # the enforced policies
    slices: PolicySlices  # the enforced policies, by the principal they can apply to
    shadow_probe: cedarpy.PolicySet | None  # shadow policies, each as a permit: see policy.py
    entities: cedarpy.Entities  # everything but agents; agents come from the registry
    agents: dict[str, Agent]  # the registry seed
    routes: routes.RouteTable
    actions: frozenset[str]  # the actions the schema declares
    policies: dict[str, PolicyInfo]  # by cedar id
    version: str  # sha256 over every file that was loaded
    signature: tuple[tuple[str, int, int], ...] = ()  # the directory as it was before loading
    approval: approval.ApprovalPolicies | None = None  # from `approval/`, when it exists


def signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any loaded file changes (fixtures under tests/ are not loaded)."""
    entries = []
    folder = directory / approval.APPROVAL_DIR
    listed = [*directory.iterdir(), *(folder.iterdir() if folder.is_dir() else ())]
    for path in sorted(listed):
        if path.is_file():
            stat = path.stat()
            entries.append((str(path.relative_to(directory)), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


def load(directory: Path) -> PolicyBundle:
    if not directory.is_dir():
        raise PolicyLoadError(str(directory), "policy directory not found")
    before = signature(directory)  # taken first: a change made while loading shows up later
    digest = hashlib.sha256()
    schema_path = directory / SCHEMA_FILE
    schema_text = _read(schema_path, digest)
    schema = _parse_schema(schema_path, schema_text)
    text, infos = _check_files(directory, schema, digest)
    policy_set, shadow_probe, slices = _split_shadow(text, infos)
    entities_path = directory / ENTITIES_FILE
    entities, agents = _load_entities(entities_path, _read(entities_path, digest), schema)
    routes_path = directory / ROUTES_FILE
    _read(routes_path, digest)
    actions = schema_actions(schema_text)
    table = routes.load(routes_path, actions)
    return PolicyBundle(
        policy_set=policy_set,
        slices=slices,
        shadow_probe=shadow_probe,
        entities=entities,
        agents=agents,
        routes=table,
        actions=actions,
        policies=infos,
        approval=_load_approval(directory / approval.APPROVAL_DIR, schema_text, digest),
        version=digest.hexdigest()[:16],
        signature=before,
    )


def _check_files(
    directory: Path, schema: cedarpy.Schema, digest: Any
) -> tuple[str, dict[str, PolicyInfo]]:
    """Every `*.cedar` file of `directory`, checked: (their text combined, their policies)."""
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
                    str(path),
                    f'duplicate `@id("{info.id}")`, also in {seen_ids[info.id]}',
                    info.line,
                )
            seen_ids[info.id] = f"{path.name}"
            infos[info.cedar_id] = info
        texts.append(text)
    return "\n".join(texts), infos


def _load_approval(
    folder: Path, access_schema: str, digest: Any
) -> approval.ApprovalPolicies | None:
    """The approval policies, validated against the access schema plus their own."""
    if not folder.is_dir():
        return None
    schema_path = folder / SCHEMA_FILE
    own = _read(schema_path, digest)

    def parse(text: str) -> cedarpy.Schema:
        return cedarpy.Schema.from_str(access_schema + "\n" + text)

    try:
        schema = parse(own)
    except ValueError as err:
        line, col = locate(own, str(err), parse)
        raise PolicyLoadError(str(schema_path), str(err), line, col) from err
    text, infos = _check_files(folder, schema, digest)
    est = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"]
    return approval.policies(est, infos, str(folder))


def with_enforced_text(bundle: PolicyBundle, text: str) -> PolicyBundle:
    """`bundle` with its enforced policies replaced by `text`, unvalidated (benchmarks, tests)."""
    est = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"]
    whole = from_est(est)
    return replace(bundle, policy_set=whole, slices=PolicySlices(est, whole))


def _split_shadow(
    text: str, infos: dict[str, PolicyInfo]
) -> tuple[cedarpy.PolicySet, cedarpy.PolicySet | None, PolicySlices]:
    """The enforced set, and a probe set of the shadow policies rewritten as permits.

    Evaluated alone, the probe's determining policies are exactly the shadow
    policies whose scope and conditions hold, whatever their effect.
    """
    est = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"]
    if set(est) != set(infos):
        raise PolicyLoadError("policies", "policy ids changed when combining files")
    enforced = {k: v for k, v in est.items() if infos[k].mode == "enforce"}
    shadow = {k: {**v, "effect": "permit"} for k, v in est.items() if infos[k].mode == "shadow"}
    whole = from_est(enforced)
    return whole, (from_est(shadow) if shadow else None), PolicySlices(enforced, whole)


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
        line, col = locate(text, message, lambda t: cedarpy.Schema.from_str(t))
        raise PolicyLoadError(str(path), message, line, col) from err


def schema_actions(schema_text: str) -> frozenset[str]:
    """Action names the schema declares (`action read, write appliesTo ...`)."""
    names: set[str] = set()
    for match in re.finditer(
        r"\baction\s+([^{;]+?)(?:\s+in\s+\[[^\]]*\])?\s*(?:appliesTo|;|\{)",
        _strip_comments(schema_text),
    ):
        for name in match.group(1).split(","):
            names.add(name.strip().strip('"'))
    return frozenset(n for n in names if n)


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def _check_file(path: Path, text: str, schema: cedarpy.Schema, offset: int) -> list[PolicyInfo]:
    """Parse and validate one file; returns its policies, numbered after `offset`."""
    where = str(path)
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as err:
        line, col = locate(text, str(err), cedarpy.PolicySet.from_str)
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
        mode = annotations.get("mode", "enforce")
        if mode not in ("enforce", "shadow"):
            raise PolicyLoadError(where, f'`@mode("{mode}")` must be "enforce" or "shadow"', line)
        infos.append(
            PolicyInfo(
                cedar_id=f"policy{offset + index}",
                id=policy_id,
                file=path.name,
                line=line or 1,
                effect=body["effect"],
                reason=annotations.get("reason", ""),
                mode=mode,
                annotations=dict(annotations),
            )
        )
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        first = result.errors[0]
        index = int(first.policy_id.removeprefix("policy") or 0) if first.policy_id else 0
        line = starts[index] if index < len(starts) else None
        _, col = locate(text, first.error, cedarpy.PolicySet.from_str)
        name = re.search(r"attribute `([^`]+)`", first.error)
        if name and line is not None:
            for number, text_line in enumerate(text.split("\n")[line - 1 :], line):
                if re.search(rf"\b{re.escape(name.group(1))}\b", text_line):
                    line, col = number, text_line.find(name.group(1)) + 1
                    break
        problem = first.error.replace(f"`{first.policy_id}`", f"`{infos[index].id}`")
        raise PolicyLoadError(where, problem, line, col)
    return infos


def _load_entities(
    path: Path, text: str, schema: cedarpy.Schema
) -> tuple[cedarpy.Entities, dict[str, Agent]]:
    where = str(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise PolicyLoadError(where, f"invalid JSON: {err.msg}", err.lineno, err.colno) from err
    if not isinstance(doc, list):
        raise PolicyLoadError(where, "must be a JSON list of entities", 1)
    agents: dict[str, Agent] = {}
    others: list[Any] = []
    for entity in doc:
        uid = entity.get("uid", {}) if isinstance(entity, dict) else {}
        if isinstance(uid, dict) and uid.get("type") == AGENT_TYPE:
            agent = _agent(entity, where, text)  # registry seeds: checked here, not by Cedar
            if agent.id in agents:
                raise PolicyLoadError(
                    where, f"agent `{agent.id}` appears twice", _line_of(text, agent.id)
                )
            agents[agent.id] = agent
            continue
        try:
            cedarpy.Entities.from_json_str(json.dumps([entity]), schema)
        except ValueError as err:
            line = _line_of(text, str(uid.get("id", ""))) if isinstance(uid, dict) else None
            raise PolicyLoadError(where, f"entity {json.dumps(uid)}: {err}", line) from err
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
    agent_id = entity["uid"].get("id")
    line = _line_of(text, agent_id) if isinstance(agent_id, str) else None
    attrs = entity.get("attrs", {})
    if not isinstance(attrs, dict):
        raise PolicyLoadError(where, f"agent `{agent_id}`: `attrs` must be an object", line)
    owner = attrs.get("owner")
    ref = owner.get("__entity") if isinstance(owner, dict) else None
    owner_id = ref.get("id") if isinstance(ref, dict) and ref.get("type") == "User" else None
    purposes = attrs.get("allowed_purposes", [])
    description = attrs.get("description", "")
    if not isinstance(agent_id, str) or not agent_id:
        raise PolicyLoadError(where, "an agent needs a string `uid.id`", line)
    if not isinstance(owner_id, str) or not owner_id:
        raise PolicyLoadError(
            where,
            f'agent `{agent_id}` needs an `owner`: {{"__entity": {{"type": "User", "id": "..."}}}}',
            line,
        )
    risk = attrs.get("risk")
    if not isinstance(risk, int) or isinstance(risk, bool):
        raise PolicyLoadError(
            where, f"agent `{agent_id}`: `risk` must be an integer 0 to 100", line
        )
    status = attrs.get("status")
    if not isinstance(status, str):
        raise PolicyLoadError(
            where, f"agent `{agent_id}`: `status` must be one of {list(AGENT_STATUSES)}", line
        )
    if not isinstance(purposes, list) or not all(isinstance(p, str) and p for p in purposes):
        raise PolicyLoadError(
            where,
            f"agent `{agent_id}`: `allowed_purposes` must be a list of non-empty strings",
            line,
        )
    if not isinstance(description, str):
        raise PolicyLoadError(where, f"agent `{agent_id}`: `description` must be a string", line)
    spiffe_id = attrs.get("spiffe_id", "")
    if not isinstance(spiffe_id, str):
        raise PolicyLoadError(where, f"agent `{agent_id}`: `spiffe_id` must be a string", line)
    unknown = set(attrs) - {
        "owner", "risk", "status", "allowed_purposes", "description", "spiffe_id",
    }  # fmt: skip
    if unknown:
        raise PolicyLoadError(
            where, f"agent `{agent_id}`: unknown attributes {sorted(unknown)}", line
        )
    agent = Agent(
        id=agent_id,
        owner=owner_id,
        risk=risk,
        status=status,
        description=description,
        allowed_purposes=tuple(purposes),
        registered_by="entities.json",
        spiffe_id=spiffe_id,
    )
    try:
        return agent.check()
    except ValueError as err:
        raise PolicyLoadError(where, str(err), line) from None
