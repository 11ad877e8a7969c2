"""The database side of a local stack: a mesh CA, PostgreSQL behind Envoy's network ext_authz,
and an agent's connection to it with psycopg. Used by the demo, the tests and the benchmarks.

The mesh CA (made for the run) signs the listener's certificate, which holds
the SPIFFE ID `routes.toml` declares for the EHR database and the DNS name
`*.ehr-db.lasthop.test`, and each agent's client certificate, which holds
the agent's SPIFFE ID from `TEMPLATE`. An agent connects to
`<grant id>.ehr-db.lasthop.test` at Envoy's address with PostgreSQL's direct
TLS, verifying the listener's certificate against the mesh CA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from authz.dev import stack
from authz.dev.certs import Pem, TestCA
from authz.dev.postgres import DATABASE, ROLE

TRUST_DOMAIN = "cluster.local"
TEMPLATE = "spiffe://{trust_domain}/ns/agents/sa/{agent}"  # identity.spiffe_id_template
LISTENER_ID = "spiffe://cluster.local/ns/ehr/sa/ehr-db"  # `[[database]]` in routes.toml
HOST = "ehr-db.lasthop.test"
ENVOY_TEMPLATE = (stack.EXAMPLES / "envoy" / "postgres.yaml").resolve()


def lasthop_env(max_seconds: int) -> dict[str, str]:
    """What Lasthop needs to decide connections: the binding of agents to SPIFFE IDs, and the
    maximum duration Envoy holds connections to."""
    return {
        "LASTHOP_IDENTITY_SPIFFE_TRUST_DOMAIN": TRUST_DOMAIN,
        "LASTHOP_IDENTITY_SPIFFE_ID_TEMPLATE": TEMPLATE,
        "LASTHOP_CONNECTIONS_MAX_DURATION_SECONDS": str(max_seconds),
    }


class Mesh:
    """A CA for the run, the database listener's certificate, and agents' on demand."""

    def __init__(self, root: Path, listener_id: str = LISTENER_ID) -> None:
        self.ca = TestCA(root / "mesh-ca", name="mesh CA")
        self.listener = self.issue_listener(listener_id)
        self._agents: dict[str, Pem] = {}

    def issue_listener(self, spiffe_id: str) -> Pem:
        name = "listener-" + spiffe_id.rsplit("/", 1)[-1]
        return self.ca.issue(name, dns=(f"*.{HOST}",), ips=(), uris=(spiffe_id,))

    def agent(self, agent: str) -> Pem:
        """The client certificate of `agent`'s workload (its SPIFFE ID from the template)."""
        if agent not in self._agents:
            spiffe_id = TEMPLATE.format(trust_domain=TRUST_DOMAIN, agent=agent)
            self._agents[agent] = self.workload(agent, spiffe_id)
        return self._agents[agent]

    def workload(self, name: str, *uris: str) -> Pem:
        return self.ca.issue(f"workload-{name}", dns=(), ips=(), uris=uris, client=True)


def envoy(
    work: Path,
    lasthop_port: int,
    postgres_port: int,
    mesh: Mesh,
    max_seconds: int,
    listener: Pem | None = None,
) -> stack.Envoy:
    """envoy/postgres.yaml in front of PostgreSQL, asking Lasthop about each connection."""
    cert = listener or mesh.listener
    return stack.Envoy(
        work,
        lasthop_port,
        postgres_port,
        template=ENVOY_TEMPLATE,
        values={
            "LISTENER_CERT": str(cert.cert),
            "LISTENER_KEY": str(cert.key),
            "MESH_CA": str(mesh.ca.path),
            "MAX_CONNECTION_SECONDS": str(max_seconds),
            "ACCESS_LOG": str(access_log(work)),
        },
    )


def access_log(work: Path) -> Path:
    return work / "envoy-ehr-db-access.log"


def connect_args(port: int, grant_id: str, client: Pem, ca: Path) -> dict[str, Any]:
    """psycopg.connect keywords: direct TLS to Envoy on loopback, naming the grant."""
    return {
        "host": f"{grant_id}.{HOST}" if grant_id else HOST,  # the TLS server name
        "hostaddr": "127.0.0.1",  # where Envoy is; `host` is only named, never resolved
        "port": port,
        "user": ROLE,
        "dbname": DATABASE,
        "sslmode": "verify-full",
        "sslnegotiation": "direct",
        "sslrootcert": str(ca),
        "sslcert": str(client.cert),
        "sslkey": str(client.key),
        "connect_timeout": 5,
    }
