"""The shipped example's Cedar fixtures get the decision their folder names."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.policy.fixtures import run_all, run_one
from authz.policy.load import PolicyBundle
from tests.conftest import POLICIES

FIXTURES = POLICIES / "tests"


def _cases() -> list[tuple[Path, str]]:
    return [(p, d) for d in ("ALLOW", "DENY") for p in sorted((FIXTURES / d).glob("*.json"))]


def test_every_policy_and_decision_has_fixtures(bundle: PolicyBundle) -> None:
    results = run_all(bundle, FIXTURES)
    assert {r.got.split()[0] for r in results} == {"ALLOW", "DENY"}
    used = {p for r in results for p in r.policies}
    assert used == {info.id for info in bundle.policies.values()}, "a policy has no fixture"


@pytest.mark.parametrize(("path", "decision"), _cases(), ids=lambda v: getattr(v, "stem", v))
def test_fixture(bundle: PolicyBundle, path: Path, decision: str) -> None:
    result = run_one(bundle, path, decision)
    assert result.passed, f"{path.name}: expected {result.expected}, got {result.got}"


def test_a_wrong_expectation_fails(bundle: PolicyBundle) -> None:
    allow = FIXTURES / "ALLOW" / "scribe-reads-records.json"
    assert not run_one(bundle, allow, "DENY").passed
