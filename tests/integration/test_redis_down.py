"""Redis killed mid-run: Lasthop fails closed (503), never allows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from authz._proto import grants_pb2 as pb
from authz.dev.tokens import DemoIssuer
from authz.errors import AdminError
from tests.integration.conftest import PURPOSE, RECORDS, Stack, assert_deny, running_stack, unique

pytestmark = pytest.mark.integration

REQUESTS_AFTER_KILL = 30


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Stack]:
    """A dedicated Redis + Lasthop + Envoy + upstream: this module kills its Redis."""
    with running_stack("lasthop-it-redis-") as dedicated:
        yield dedicated


def test_redis_killed_fails_closed(own_stack: Stack) -> None:
    stack = own_stack
    assert stack.redis is not None
    user = unique("u-redis")
    stack.grant(user)
    token = stack.token(user, ["scribe"])
    assert stack.get(RECORDS, token).status == 200

    stack.redis.kill()

    statuses: list[tuple[int, str]] = []
    for _ in range(REQUESTS_AFTER_KILL):
        resp = stack.get(RECORDS, token)
        statuses.append((resp.status, resp.reason))
        assert resp.status != 200, "allowed with the grant store down"
        assert resp.status == 503, (resp.status, resp.raw[:300])
        if resp.body:  # Lasthop's own deny; an empty body is Envoy's own 503
            assert_deny(resp, 503, "store_unavailable")
    assert all(status == 503 for status, _ in statuses)
    assert any(reason == "store_unavailable" for _, reason in statuses), statuses

    # Identity is checked before the store: a bad token is still a 401.
    forger = DemoIssuer("ES256", kid=stack.issuer.kid)
    resp = stack.get(RECORDS, forger.access_token(user, ["scribe"], purpose=PURPOSE))
    assert resp.status == 401, resp.raw[:300]
    assert resp.reason == "bad_signature"
    assert stack.get(RECORDS).status == 401

    # The agent registry lives in Redis too: with Redis down, a valid token for any
    # route cannot be checked against the registry, so it is a 503, never a pass.
    assert_deny(stack.get("/admin", token), 503, "store_unavailable")

    # The admin API reports the store as unavailable instead of pretending to issue.
    with pytest.raises(AdminError, match="^unavailable"):
        stack.admin.issue(
            pb.IssueGrantRequest(
                agent="scribe",
                user=unique("u-redis2"),
                actions=["read"],
                resources=['Patient::"p-1001"'],
                purpose=PURPOSE,
                ttl_seconds=60,
            )
        )
