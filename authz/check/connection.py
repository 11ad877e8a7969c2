"""A database connection's own rules: who connects, under which grant, for how long.

A network CheckRequest (Envoy's network ext_authz in front of a database)
carries no token, only the client's certificate (`source.principal`), the
listener's (`destination.principal`) and, with `include_tls_session`, the
TLS server name the client sent. So a connection is decided from those:

identity  the client certificate holds a valid SPIFFE ID                  -> invalid_peer
chain     the server name's first label is a grant id, `g-<16 hex>.<host>` -> grant_not_named
          that grant exists: not revoked, not expired past retention     -> no_grant
          it names the agent and the user it acts for: user -> agent
registry  the agent is registered and active, and the client certificate is exactly
          the SPIFFE ID the agent is bound to (`authz.spiffe.Binding`)     -> peer_mismatch
route     the listener is a `[[database]]` of the route table              -> no_database
grants    the grant covers the action on the database                      -> no_grant
          it has not expired                                               -> grant_expired
          it outlives the connection: Envoy ends every connection at
          `connections.max_duration_seconds`, so no connection outlives its grant
                                                                           -> grant_ends_too_soon
cedar     as for a request, with the grant's purpose as the purpose

The grant names the user, so a connection is one task's, never the agent's
standing access: with no live grant of its own, named by the connection, an
agent cannot connect, and every connection ends before its grant does.
"""

from __future__ import annotations

import re

from authz import spiffe
from authz.codec import printable
from authz.errors import GrantError, PeerError
from authz.model import Chain, Connection, Grant, Intent, RouteMatch
from authz.reasons import Reason

# The ids `authz.access.issue` mints; a DNS label, so a TLS server name can carry one.
GRANT_ID = re.compile(r"g-[0-9a-f]{16}")


def peer_identity(principal: str) -> spiffe.SpiffeId:
    """The SPIFFE ID of the client certificate Envoy verified."""
    if not principal:
        raise PeerError("the connection presented no client certificate (is the listener mTLS?)")
    try:
        return spiffe.parse(principal)
    except ValueError as err:
        raise PeerError(f"the client certificate's principal is not a SPIFFE ID: {err}") from None


def grant_name(conn: Connection) -> str:
    """The grant id the connection names: the first label of its TLS server name."""
    label, dot, host = conn.server_name.lower().partition(".")
    if not dot or not host or not GRANT_ID.fullmatch(label):
        shown = printable(conn.server_name, 200) or "(none)"
        raise GrantError(
            Reason.GRANT_NOT_NAMED,
            f"server name `{shown}` names no grant; connect to `<grant id>.<host>`",
        )
    return label


def existing(grant: Grant | None, name: str) -> Grant:
    """The grant named `name`, as the store returned it."""
    if grant is None:
        raise GrantError(Reason.NO_GRANT, f"grant `{name}` does not exist, was revoked or expired")
    return grant


def acting_for(grant: Grant) -> tuple[Chain, Intent]:
    """The grant's user -> agent, its purpose and its task: what the connection acts for."""
    return Chain(grant.user, (grant.agent,)), Intent(grant.purpose, grant.txn, "grant")


def admit(grant: Grant, route: RouteMatch, now: float, max_seconds: int) -> float:
    """When the connection ends at the latest; raises GrantError unless the grant covers it
    for all of that time."""
    if route.action not in grant.actions or str(route.resource) not in grant.resources:
        raise GrantError(
            Reason.NO_GRANT, f"grant `{grant.id}` does not cover `{route.action}` on "
            f"`{route.resource}`"
        )  # fmt: skip
    if grant.expires_at <= now:
        raise GrantError(Reason.GRANT_EXPIRED, f"grant `{grant.id}` has expired")
    ends_at = now + max_seconds
    if grant.expires_at < ends_at:
        raise GrantError(
            Reason.GRANT_ENDS_TOO_SOON,
            f"grant `{grant.id}` ends in {grant.expires_at - now:.0f} s, before a connection "
            f"would ({max_seconds} s, connections.max_duration_seconds)",
        )
    return ends_at
