"""Cedar outcomes are kept per exact input: the same input, the same answer; any change, afresh."""

from __future__ import annotations

import dataclasses
from typing import Any

import cedarpy
import pytest

from authz.errors import PolicyError
from authz.model import EntityRef, Risk
from authz.policy import evaluate as policy
from authz.policy.load import PolicyBundle

RECORDS, PATIENT = EntityRef("Records", "p-1001"), EntityRef("Patient", "p-1001")


def context(**changes: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "user": {"__entity": {"type": "User", "id": "dr-alice"}},
        "chain_depth": 1,
        "agents": [{"__entity": {"type": "Agent", "id": "scribe"}}],
        "chain": {"max_risk": 20, "risk_tier": "low", "purpose_allowed": True},
        "delegator": "dr-alice",
        "purpose": "clinical-documentation",
        "txn": "t",
        "grant": {
            "id": "g",
            "purpose": "clinical-documentation",
            "issued_by": "x",
            "expires_at": 2**40,
        },
        "request": {"method": "GET", "path": "/patients/p-1001/records", "host": "h"},
        "time": 1_800_000_000,
        "risk": Risk().as_context(),
    }
    ctx.update(changes)
    return {k: v for k, v in ctx.items() if v is not None}


@pytest.fixture(scope="module")
def engine(bundle: PolicyBundle) -> policy.PolicyEngine:
    return policy.PolicyEngine(bundle)


def ask(
    engine: policy.PolicyEngine,
    ctx: dict[str, Any],
    risk: int = 20,
    purposes: tuple[str, ...] = ("clinical-documentation",),
) -> policy.CedarOutcome:
    scribe = dataclasses.replace(
        engine.bundle.agents["scribe"], risk=risk, allowed_purposes=purposes
    )
    request = policy.CedarRequest(EntityRef("Agent", "scribe"), "read", RECORDS, ctx)
    return engine.evaluate(request, policy.request_entities(RECORDS, (PATIENT,), [scribe]))


def test_an_identical_input_is_answered_from_the_cache(
    engine: policy.PolicyEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ask(engine, context(txn="memo-1"))
    assert first.allowed
    calls: list[int] = []
    real = cedarpy.is_authorized

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cedarpy, "is_authorized", counted)
    assert ask(engine, context(txn="memo-1")) is first
    assert calls == []


@pytest.mark.parametrize(
    ("ctx", "risk", "purposes", "allowed"),
    [
        (context(txn="memo-2", grant=None), 20, ("clinical-documentation",), False),
        (context(txn="memo-2", purpose="billing"), 20, ("clinical-documentation",), False),
        (context(txn="memo-2"), 20, ("research",), False),
        (context(txn="memo-2", time=1_800_000_001), 20, ("clinical-documentation",), True),
    ],
    ids=["grant-gone", "purpose-changed", "agent-purposes-changed", "next-second"],
)
def test_any_change_in_the_input_is_evaluated_afresh(
    engine: policy.PolicyEngine,
    ctx: dict[str, Any],
    risk: int,
    purposes: tuple[str, ...],
    allowed: bool,
) -> None:
    assert ask(engine, context(txn="memo-2")).allowed  # cached allow for the base input
    assert ask(engine, ctx, risk, purposes).allowed is allowed


def test_errors_are_not_cached(engine: policy.PolicyEngine) -> None:
    # a grant without `purpose` makes grant-purpose-must-match error: policy_error
    bad = context(txn="memo-3", grant={"id": "g", "issued_by": "x", "expires_at": 2**40})
    before = len(engine.outcomes)
    for _ in range(2):
        with pytest.raises(PolicyError):
            ask(engine, bad)
    assert len(engine.outcomes) == before
