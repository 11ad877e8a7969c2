"""Client-supplied `x-lasthop-*` headers never reach the upstream as sent."""

from __future__ import annotations

import pytest

from authz.audit import receipts
from authz.audit.signing import read_jwks
from tests.integration.conftest import RECORDS, Stack, assert_deny, unique

pytestmark = pytest.mark.integration


def test_spoofed_identity_headers_are_replaced_or_removed(stack: Stack) -> None:
    user = unique("u-spoof")
    stack.grant(user)
    resp = stack.get(
        RECORDS,
        stack.token(user, ["scribe"]),
        headers={
            "x-lasthop-user": "mallory",
            "x-lasthop-agent": "mallory-bot",
            "x-lasthop-chain": "mallory,mallory-bot",
            "x-lasthop-purpose": "exfiltration",
            "x-lasthop-decision-id": "forged",
            "x-lasthop-receipt": "forged",
            "x-lasthop-anything": "x",
        },
    )
    assert resp.status == 200, resp.raw[:500]
    seen = resp.upstream_saw
    assert seen["x-lasthop-user"] == user
    assert seen["x-lasthop-agent"] == "scribe"
    assert seen["x-lasthop-chain"] == f"{user},scribe"
    assert seen["x-lasthop-purpose"] == "clinical-documentation"
    assert seen["x-lasthop-decision-id"] != "forged"
    assert "x-lasthop-anything" not in seen
    assert seen["x-lasthop-receipt"] != "forged"  # Lasthop's own, signed receipt
    jwks = read_jwks(stack.audit_path.parent / "lasthop-receipts.json")
    assert receipts.verify(seen["x-lasthop-receipt"], jwks)["jti"] == seen["x-lasthop-decision-id"]
    assert "mallory" not in str(seen)
    assert set(seen) == {
        "x-lasthop-user",
        "x-lasthop-agent",
        "x-lasthop-chain",
        "x-lasthop-purpose",
        "x-lasthop-txn",
        "x-lasthop-decision-id",
        "x-lasthop-receipt",
    }


def test_spoofed_headers_do_not_change_the_decision(stack: Stack) -> None:
    holder, intruder = unique("u-holder"), unique("u-intruder")
    stack.grant(holder)
    resp = stack.get(
        RECORDS,
        stack.token(intruder, ["scribe"]),
        headers={
            "x-lasthop-user": holder,
            "x-lasthop-agent": "scribe",
        },
    )
    assert_deny(resp, 403, "no_grant")
