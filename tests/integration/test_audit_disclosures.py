"""The demo scenario against a real stack: the accounting of disclosures is exactly its allows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.dev.demo import _scenario
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import run_cli, running_stack

pytestmark = pytest.mark.integration


def disclosures(trail: Path, jwks: Path, *args: str) -> list[dict[str, str]]:
    result = run_cli(
        "audit",
        "disclosures",
        "--trail",
        str(trail),
        "--jwks",
        str(jwks),
        "--output",
        "json",
        *args,
    )
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, str]] = json.loads(result.stdout)
    return rows


def test_disclosures_of_the_demo_scenario(upstream: DemoUpstream) -> None:
    with running_stack("lasthop-it-disclose-", use_redis=False, upstream=upstream) as stack:
        jwks = stack.audit_path.parent / "lasthop-receipts.json"
        outcomes = _scenario(stack.base, stack.admin, stack.issuer, jwks)
        assert stack.lasthop.close() == 0
        allowed = [o.body["lasthop"] for o in outcomes if o.status == 200]
        assert all(isinstance(seen, dict) for seen in allowed)
        assert len(allowed) == 2 and len(outcomes) == 6

        rows = disclosures(stack.audit_path, jwks, "--user", "dr-alice")
        assert [r["decision_id"] for r in rows] == [
            {k.lower(): v for k, v in seen.items()}["x-lasthop-decision-id"]  # type: ignore[attr-defined]
            for seen in allowed
        ]
        for row in rows:
            assert (row["recipient"], row["recipient_owner"]) == ("scribe", "dr-alice")
            assert row["description"] == 'read Records::"p-1001"'
            assert row["purpose"] == "clinical-documentation"
        assert [r["chain"] for r in rows] == [
            "dr-alice -> scribe",
            "dr-alice -> orchestrator -> scribe",
        ]
        assert disclosures(stack.audit_path, jwks, "--patient", "p-1001") == rows
        assert disclosures(stack.audit_path, jwks, "--patient", "p-1002") == []
        assert disclosures(stack.audit_path, jwks, "--user", "bob") == []  # denied: none
