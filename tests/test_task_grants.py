"""Grants bound to a task (txn), what a no_grant denial tells the agent, grants stored before
the change, and who approved the grant behind each disclosure."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as pb

from authz.audit import disclosures
from authz.audit.records import AuditRecord
from authz.check.grants import select
from authz.dev.tokens import DemoIssuer
from authz.errors import GrantError
from authz.model import Chain, CheckInput, Decision, EntityRef, Grant, Intent, RouteMatch
from authz.reasons import Reason
from authz.server import ext_authz
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant
from tests.test_grants import RECORDS

NOW = 1_800_000_000


def bound(txn: str, gid: str = "g-task") -> Grant:
    return dataclasses.replace(grant(now=NOW), id=gid, txn=txn)


# --- selection ------------------------------------------------------------------------------


def test_a_bound_grant_covers_requests_of_its_task() -> None:
    assert select([bound("t-1")], RECORDS, PURPOSE, NOW, "t-1").id == "g-task"


@pytest.mark.parametrize("txn", ["t-2", ""])
def test_a_bound_grant_never_covers_another_task_or_none(txn: str) -> None:
    with pytest.raises(GrantError) as err:
        select([bound("t-1")], RECORDS, PURPOSE, NOW, txn)
    assert err.value.reason == Reason.TASK_MISMATCH
    assert "another task" in err.value.detail


def test_an_unbound_grant_covers_any_task() -> None:
    plain = grant(now=NOW)
    assert select([plain], RECORDS, PURPOSE, NOW, "t-9") == plain
    assert select([plain], RECORDS, PURPOSE, NOW, "") == plain


def test_the_grant_of_this_task_is_chosen_among_others() -> None:
    chosen = select([bound("t-1", "g-1"), bound("t-2", "g-2")], RECORDS, PURPOSE, NOW, "t-2")
    assert chosen.id == "g-2"


def test_expiry_is_still_reported_before_the_task() -> None:
    expired = dataclasses.replace(bound("t-1"), expires_at=NOW - 1)
    with pytest.raises(GrantError) as err:
        select([expired], RECORDS, PURPOSE, NOW, "t-2")
    assert err.value.reason == Reason.GRANT_EXPIRED


def test_the_pipeline_honours_the_binding(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(dataclasses.replace(grant(now=clock.now), txn="task-a")))
    pipeline = make_pipeline(store=store)
    same = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, txn="task-a")
    other = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, txn="task-b")
    assert asyncio.run(pipeline.check(check_input(same))).allowed
    denied = asyncio.run(pipeline.check(check_input(other)))
    assert (denied.status, denied.reason) == (403, Reason.TASK_MISMATCH)


# --- stored grants --------------------------------------------------------------------------


def test_a_grant_stored_before_tasks_existed_still_reads() -> None:
    old = json.dumps(
        {
            "id": "g-old",
            "agent": "scribe",
            "user": "dr-alice",
            "actions": ["read"],
            "resources": ['Patient::"p-1001"'],
            "purpose": PURPOSE,
            "issued_by": "ops",
            "issued_at": NOW,
            "expires_at": NOW + 60,
            "max_uses": 0,
        }
    )
    loaded = Grant.from_json(old)
    assert (loaded.txn, loaded.request_id, loaded.break_glass) == ("", "", False)
    assert Grant.from_json(loaded.to_json()) == loaded


def test_a_new_grant_round_trips_and_rejects_a_wrong_type() -> None:
    new = dataclasses.replace(bound("t-1"), request_id="r-1", break_glass=True)
    assert Grant.from_json(new.to_json()) == new
    doc = json.loads(new.to_json())
    doc["break_glass"] = "yes"
    with pytest.raises(ValueError, match="malformed grant"):
        Grant.from_json(json.dumps(doc))


# --- what a denial tells the agent ----------------------------------------------------------


def _denied(reason: str) -> Decision:
    return Decision(
        decision_id="d" * 32,
        allowed=False,
        status=403,
        reason=reason,
        detail="x",
        chain=Chain("dr-alice", ("med-reconciler",)),
        intent=Intent(purpose="medication-reconciliation", txn="t-1", source="access-token"),
        route=RouteMatch(
            action="read",
            resource=EntityRef("Medications", "p-1001"),
            parents=(EntityRef("Patient", "p-1001"),),
            template="/patients/{patient}/medications",
            phi=True,
        ),
    )


def denied_body(decision: Decision) -> str:
    response = pb.CheckResponse.FromString(ext_authz.to_response(decision, _request()))
    body: str = response.denied_response.body
    return body


@pytest.mark.parametrize(
    "reason",
    [
        Reason.NO_GRANT,
        Reason.GRANT_EXPIRED,
        Reason.TASK_MISMATCH,
        Reason.PURPOSE_MISMATCH,
        Reason.GRANT_EXHAUSTED,
    ],
)
def test_a_denial_for_want_of_a_grant_names_what_it_would_need(reason: Reason) -> None:
    body = json.loads(denied_body(_denied(reason)))
    assert body["needs"] == {
        "action": "read",
        "resource": 'Medications::"p-1001"',
        "purpose": "medication-reconciliation",
    }


@pytest.mark.parametrize("reason", [Reason.POLICY_DENIED, Reason.AGENT_SUSPENDED, "risk_too_high"])
def test_other_denials_name_nothing_to_ask_for(reason: str) -> None:
    body = json.loads(denied_body(_denied(reason)))
    assert "needs" not in body


def _request() -> CheckInput:
    return CheckInput(method="GET", path="/patients/p-1001/medications", host="h", headers={})


# --- who approved the grant behind a disclosure ---------------------------------------------


def test_disclosures_show_who_approved_the_grant_and_flag_break_glass() -> None:
    rows = []
    for who, emergency in (("policy:med-reconciler-reads-medications", False), ("dr-alice", True)):
        used = dataclasses.replace(bound("t-1"), issued_by=who, break_glass=emergency)
        decision = dataclasses.replace(
            _denied(Reason.ALLOWED), allowed=True, status=200, grant=used
        )
        rows.append(AuditRecord.of(decision, _request(), "2026-11-30T10:00:00.000Z", 0.001))
    found = disclosures.account([r.to_dict() for r in rows], user="dr-alice")
    assert [(d.approved_by, d.break_glass) for d in found] == [
        ("policy:med-reconciler-reads-medications", False),
        ("dr-alice", True),
    ]
    table = disclosures.render(found, "md", "t")
    assert "| policy:med-reconciler-reads-medications |" in table
    assert "| BREAK-GLASS, dr-alice |" in table
