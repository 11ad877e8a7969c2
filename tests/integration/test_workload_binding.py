"""Issue 11 through a real Envoy: the workload identity and the issuer's keys.

7. With `bind_peer = true`, the SPIFFE ID in the client certificate Envoy
   verified used to bind by its last path segment: in one trust domain,
   `spiffe://cluster.local/ns/attacker/sa/scribe` presented as `scribe`. Here
   Envoy terminates mTLS with certificates made by the test and reports the
   peer (`source.principal`) to Lasthop, which binds the whole ID.
8. A JWKS file was read once: a key the IdP published after start-up was
   `unknown_key` until a restart. Here the file is rotated under a running
   server: the new key verifies, the withdrawn one stops, and the metrics say so.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz._proto import agents_pb2 as apb
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import (
    PURPOSE,
    RECORDS,
    Stack,
    assert_deny,
    request,
    running_stack,
    unique,
    wait_until,
)
from tests.tls import Pem, TestCA

pytestmark = pytest.mark.integration

TEMPLATE = "spiffe://{trust_domain}/ns/agents/sa/{agent}"
TRUST_DOMAIN = "cluster.local"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)

# --- 7. the whole SPIFFE ID binds ---------------------------------------------------------------


class Mesh:
    """A CA for the mesh, Envoy's serving certificate, and workload certificates on demand."""

    def __init__(self, root: Path) -> None:
        self.ca = TestCA(root / "mesh-ca", name="mesh CA")
        self.envoy = self.ca.issue("ingress")
        self._count = 0

    def workload(self, spiffe_id: str) -> Pem:
        self._count += 1
        return self.ca.issue(
            f"workload-{self._count}", dns=(), ips=(), uris=(spiffe_id,), client=True
        )


def mtls_ingress(mesh: Mesh) -> Any:
    """The shipped sidecar with its listener terminating mTLS (as a mesh sidecar does)."""

    def envoy(work: Path, lasthop: devstack.LasthopServer, up: DemoUpstream) -> devstack.Envoy:
        text = devstack.ENVOY_TEMPLATE.read_text()
        tls = f"""    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {DOWNSTREAM_TLS}
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {mesh.envoy.cert} }}
              private_key: {{ filename: {mesh.envoy.key} }}
            validation_context:
              trusted_ca: {{ filename: {mesh.ca.path} }}
      filters:
"""
        assert "    filter_chains:\n    - filters:\n" in text
        template = work / "sidecar-mtls-ingress.yaml"
        template.write_text(text.replace("    filter_chains:\n    - filters:\n", tls))
        return devstack.Envoy(work, lasthop.port, up.port, template=template)

    return envoy


@pytest.fixture(scope="module")
def mesh_stack(
    tmp_path_factory: pytest.TempPathFactory, upstream: DemoUpstream
) -> Iterator[tuple[Stack, Mesh]]:
    mesh = Mesh(tmp_path_factory.mktemp("mesh"))
    env = {
        "LASTHOP_IDENTITY_BIND_PEER": "true",
        "LASTHOP_IDENTITY_SPIFFE_TRUST_DOMAIN": TRUST_DOMAIN,
        "LASTHOP_IDENTITY_SPIFFE_ID_TEMPLATE": TEMPLATE,
    }
    with running_stack(
        "lasthop-spiffe-", use_redis=False, upstream=upstream, env=env, envoy=mtls_ingress(mesh)
    ) as stack:
        yield stack, mesh


def get_as(stack: Stack, mesh: Mesh, workload: Pem, token: str) -> Any:
    """GET the records over mTLS, presenting `workload`'s certificate."""
    context = ssl.create_default_context(cafile=str(mesh.ca.path))
    context.load_cert_chain(workload.cert, workload.key)
    url = f"https://127.0.0.1:{stack.envoy.port}{RECORDS}"
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read() or b"{}")


@pytest.mark.parametrize(
    "peer",
    [
        "spiffe://cluster.local/ns/attacker/sa/scribe",  # the bypass: any namespace, same name
        "spiffe://cluster.local/ns/agents/sa/scribe/",  # invalid per the SPIFFE spec
        "spiffe://cluster.local/ns/agents/sa/billing-bot",
        "spiffe://partner.example/ns/agents/sa/scribe",
        "spiffe://cluster.local/ns/agents/sa/x/scribe",
    ],
)
def test_only_the_agents_whole_spiffe_id_binds_it(
    mesh_stack: tuple[Stack, Mesh], peer: str
) -> None:
    stack, mesh = mesh_stack
    user = unique("u-spiffe")
    stack.grant(user)
    token = stack.token(user, ["orchestrator", "scribe"])
    scribe = mesh.workload(f"spiffe://{TRUST_DOMAIN}/ns/agents/sa/scribe")
    status, body = get_as(stack, mesh, scribe, token)
    assert status == 200, body
    assert body["lasthop"]["x-lasthop-agent"] == "scribe"
    status, body = get_as(stack, mesh, mesh.workload(peer), token)
    assert (status, body.get("reason")) == (403, "peer_mismatch"), body


def test_an_agent_registered_with_its_own_spiffe_id_binds_to_it(
    mesh_stack: tuple[Stack, Mesh],
) -> None:
    stack, mesh = mesh_stack
    agent = f"bound-{uuid.uuid4().hex[:6]}"
    own = "spiffe://cluster.local/ns/scribe-prod/sa/documentation"
    stack.admin.register_agent(
        apb.RegisterAgentRequest(
            id=agent, owner="dr-alice", risk=10, allowed_purposes=[PURPOSE], spiffe_id=own
        )
    )
    assert stack.admin.get_agent(agent).spiffe_id == own
    user = unique("u-own")
    stack.grant(user, agent)
    token = stack.token(user, [agent])
    # the agent is registered, but no policy permits it: past the binding, Cedar decides
    status, body = get_as(stack, mesh, mesh.workload(own), token)
    assert (status, body.get("reason")) == (403, "policy_denied"), body
    templated = mesh.workload(f"spiffe://{TRUST_DOMAIN}/ns/agents/sa/{agent}")
    status, body = get_as(stack, mesh, templated, token)
    assert (status, body.get("reason")) == (403, "peer_mismatch"), body


# --- 8. the issuer rotates its key ---------------------------------------------------------------


def metric(stack: Stack, name: str, labels: str = "") -> float:
    url = f"http://{stack.lasthop.ready['metrics_listen']}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{name}{labels} ") or line.startswith(f"{name}{{{labels}}} "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not exported")


def publish(path: Path, *issuers: DemoIssuer) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps({"keys": [i.public_jwk for i in issuers]}))
    tmp.replace(path)


def test_a_rotated_jwks_file_is_used_without_a_restart(upstream: DemoUpstream) -> None:
    with running_stack("lasthop-rotate-", use_redis=False, upstream=upstream) as stack:
        jwks = stack.work / "keys" / "jwks.json"
        user = unique("u-rotate")
        stack.grant(user)
        old = stack.token(user, ["scribe"])
        assert stack.get(RECORDS, old).status == 200
        assert metric(stack, "lasthop_jwks_age_seconds") >= 0
        updated = metric(stack, "lasthop_jwks_reload_total", 'result="updated"')

        rotated = DemoIssuer("ES256", kid="idp-2")
        new = rotated.access_token(user, ["scribe"], purpose=PURPOSE)
        assert_deny(stack.get(RECORDS, new), 401, "unknown_key")  # not published yet
        publish(jwks, stack.issuer, rotated)
        assert wait_until(lambda: request(stack.base, RECORDS, new).status == 200, timeout=10)

        publish(jwks, rotated)  # the old key is withdrawn
        assert wait_until(lambda: request(stack.base, RECORDS, old).status == 401, timeout=10)
        assert_deny(stack.get(RECORDS, old), 401, "unknown_key")
        assert stack.get(RECORDS, new).status == 200
        assert metric(stack, "lasthop_jwks_reload_total", 'result="updated"') >= updated + 2

        jwks.write_text("{not json")  # a broken publish keeps the last good set
        assert wait_until(
            lambda: metric(stack, "lasthop_jwks_reload_total", 'result="failed"') >= 1, timeout=10
        )
        assert stack.get(RECORDS, new).status == 200
