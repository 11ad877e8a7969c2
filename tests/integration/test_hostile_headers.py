"""Issue 11 through a real Envoy: what a client can put in a request to get past the decision.

5. Method override headers: a GET covered by a read grant used to reach the
   upstream carrying `X-HTTP-Method-Override: DELETE`; an upstream that
   honours it deletes on a read grant. Now a 403 `method_override`; an
   override naming the request's own method is removed before the upstream.
6. Underscore spellings of identity headers (`x_lasthop_user: mallory`)
   used to reach the upstream, which CGI/WSGI reads as `x-lasthop-user`. Now
   the shipped sidecar refuses them (400, before Lasthop), and Lasthop strips
   them behind an Envoy that lets them through.
1, 2, 9 as a client sees them: deeply nested token JSON and a lone surrogate in
   `sub` are 401s (they were 503s; the surrogate broke the Redis key), and
   `bearer` in lower case works.

The demo upstream echoes every `x-lasthop-*` header in any `-`/`_` spelling
and the names of all headers it received, so each test sees what got through.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.codec import b64url_decode
from authz.dev import stack as devstack
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import (
    RECORDS,
    Stack,
    assert_deny,
    request,
    running_stack,
    unique,
)
from tests.test_tokens_adversarial import raw_token

pytestmark = pytest.mark.integration

OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


# --- 5. method overrides ------------------------------------------------------------------------


@pytest.mark.parametrize("header", OVERRIDES)
@pytest.mark.parametrize("method", ["DELETE", "delete", "PUT", "POST", " PATCH "])
def test_a_method_override_naming_another_method_is_denied(
    stack: Stack, header: str, method: str
) -> None:
    user = unique("u-override")
    stack.grant(user)
    token = stack.token(user, ["scribe"])
    control = stack.get(RECORDS, token)
    assert control.status == 200, control.raw[:300]
    resp = stack.get(RECORDS, token, headers={header: method})
    assert_deny(resp, 403, "method_override")


@pytest.mark.parametrize("header", OVERRIDES)
def test_an_override_naming_the_same_method_is_removed_before_the_upstream(
    stack: Stack, header: str
) -> None:
    user = unique("u-same")
    stack.grant(user)
    resp = stack.get(RECORDS, stack.token(user, ["scribe"]), headers={header: "GET"})
    assert resp.status == 200, resp.raw[:300]
    assert header.lower() not in resp.body["headers"]
    assert "authorization" in resp.body["headers"]  # the upstream does list what it got


def test_an_override_on_a_write_is_denied_too(stack: Stack) -> None:
    user = unique("u-write")
    stack.grant(user, actions=("read", "write"))
    token = stack.token(user, ["scribe"])
    path = "/patients/p-1001/notes"
    assert stack.get(path, token, method="POST", data=b"note").status == 201
    resp = stack.get(
        path, token, method="POST", data=b"note", headers={"X-HTTP-Method-Override": "DELETE"}
    )
    assert_deny(resp, 403, "method_override")


# --- 6. underscore spellings of the identity headers ---------------------------------------------


SPOOFS = {
    "x_lasthop_user": "mallory",
    "x_lasthop_agent": "mallory-bot",
    "x-lasthop_purpose": "exfiltration",
    "x_lasthop-chain": "mallory",
}


@pytest.mark.parametrize("name", sorted(SPOOFS))
def test_the_sidecar_refuses_an_underscore_header_before_lasthop(stack: Stack, name: str) -> None:
    user = unique("u-underscore")
    stack.grant(user)
    resp = stack.get(RECORDS, stack.token(user, ["scribe"]), headers={name: SPOOFS[name]})
    assert resp.status == 400, resp.raw[:300]
    assert "lasthop" not in resp.body  # it never reached the upstream


def permissive_envoy(
    work: Path, lasthop: devstack.LasthopServer, up: DemoUpstream
) -> devstack.Envoy:
    """The shipped sidecar as an operator might loosen it: underscores allowed through."""
    text = devstack.ENVOY_TEMPLATE.read_text()
    loose = text.replace("REJECT_REQUEST", "ALLOW")
    assert loose != text
    template = work / "sidecar-underscores-allowed.yaml"
    template.write_text(loose)
    return devstack.Envoy(work, lasthop.port, up.port, template=template)


def test_lasthop_strips_underscore_spellings_behind_an_envoy_that_allows_them(
    upstream: DemoUpstream,
) -> None:
    with running_stack(
        "lasthop-underscores-", use_redis=False, upstream=upstream, envoy=permissive_envoy
    ) as loose:
        user = unique("u-loose")
        loose.grant(user)
        resp = loose.get(RECORDS, loose.token(user, ["scribe"]), headers=SPOOFS)
        assert resp.status == 200, resp.raw[:300]
        seen = resp.upstream_saw
        assert "mallory" not in json.dumps(seen), seen
        assert not [h for h in resp.body["headers"] if "_" in h], resp.body["headers"]
        assert seen["x-lasthop-user"] == user
        # and an override is still stripped there (it is removed whether Lasthop saw it or not)
        same = loose.get(RECORDS, loose.token(user, ["scribe"]), headers={"X-HTTP-Method": "GET"})
        assert same.status == 200
        assert "x-http-method" not in same.body["headers"]


# --- 1, 2, 9 as a client sees them ----------------------------------------------------------------


def test_deeply_nested_token_json_is_a_401_not_a_503(stack: Stack) -> None:
    user = unique("u-deep")
    claims = json.loads(b64url_decode(stack.token(user, ["scribe"]).split(".")[1]))
    payload = json.dumps(claims)[:-1] + ', "x": ' + "[" * 2500 + "]" * 2500 + "}"
    header = json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": stack.issuer.kid}).encode()
    resp = stack.get(RECORDS, raw_token(header, payload.encode(), stack.issuer))
    assert_deny(resp, 401, "malformed_token")
    assert "Traceback" not in stack.lasthop.logs()


def test_a_lone_surrogate_in_sub_is_a_401_not_a_redis_503(stack: Stack) -> None:
    user = unique("u-surrogate")
    stack.grant(user)
    assert stack.get(RECORDS, stack.token(user, ["scribe"])).status == 200
    for claims in ({"sub": user + "\ud800"}, {"txn": "t\udfff"}, {"act": {"sub": "scribe\ud800"}}):
        resp = stack.get(RECORDS, stack.token(user, ["scribe"], **claims))
        assert_deny(resp, 401, "invalid_encoding")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_the_bearer_scheme_in_any_case(stack: Stack, scheme: str) -> None:
    user = unique("u-case")
    stack.grant(user)
    token = stack.token(user, ["scribe"])
    resp = request(stack.base, RECORDS, headers={"authorization": f"{scheme} {token}"})
    assert resp.status == 200, resp.raw[:300]
