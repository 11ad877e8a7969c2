"""Approval fixtures: `policies/approval/tests/APPROVE|PERSON|REFUSE/*.json`.

Each file is one access request as the approval policies see it: `principal`
(the agent that asks), `resource` with its `parents`, and the whole `context`
(approval/schema.cedarschema says what it holds), filed under the outcome it
must get. A PERSON file may pin `approvers` (e.g. ["user:dr-alice"]), a
REFUSE file the `reason` (e.g. "ttl_over_limit"). Agents come from the
bundle's seed, as on the server.
"""

from __future__ import annotations

import json
from pathlib import Path

from authz.access import approval
from authz.errors import LasthopError
from authz.model import EntityRef
from authz.policy.approval import REQUEST_ACTION
from authz.policy.evaluate import request_entities
from authz.policy.fixtures import FixtureResult
from authz.policy.load import PolicyBundle

FOLDERS = {"APPROVE": "approve", "PERSON": "person", "REFUSE": "refuse"}


def run_one(bundle: PolicyBundle, path: Path, folder: str) -> FixtureResult:
    doc = json.loads(path.read_text(encoding="utf-8"))
    principal = EntityRef.parse(doc["principal"])
    resource = EntityRef.parse(doc["resource"])
    parents = tuple(EntityRef.parse(p) for p in doc.get("parents", []))
    context = doc["context"]
    named = {e["__entity"]["id"] for e in context.get("agents", [])} | {principal.id}
    agents = tuple(bundle.agents[a] for a in sorted(named) if a in bundle.agents)
    cedar = {
        "principal": principal.as_cedar(),
        "action": {"type": "Action", "id": REQUEST_ACTION},
        "resource": resource.as_cedar(),
        "context": json.dumps(context),
    }
    owner = bundle.agents[principal.id].owner if principal.id in bundle.agents else ""
    user = context.get("user", {}).get("__entity", {}).get("id", "")
    pin = {"PERSON": doc.get("approvers"), "REFUSE": doc.get("reason")}.get(folder)
    expected = folder + (f" {_pinned(pin)}" if pin else "")
    assert bundle.approval is not None
    try:
        verdict = approval.decide(
            bundle, bundle.approval, cedar, request_entities(resource, parents, agents), user, owner
        )
    except LasthopError as err:
        return FixtureResult(path, expected, f"ERROR {err.reason}: {err.detail}", ())
    got = {v: k for k, v in FOLDERS.items()}[verdict.outcome]
    if pin and got == folder:
        got += f" {_pinned(verdict.approvers if folder == 'PERSON' else verdict.reason)}"
    return FixtureResult(path, expected, got, verdict.policies)


def _pinned(value: object) -> str:
    return ",".join(sorted(value)) if isinstance(value, list | tuple) else str(value)


def run_all(bundle: PolicyBundle, directory: Path) -> list[FixtureResult]:
    if bundle.approval is None:
        return []
    return [
        run_one(bundle, path, folder)
        for folder in FOLDERS
        for path in sorted((directory / folder).glob("*.json"))
    ]
