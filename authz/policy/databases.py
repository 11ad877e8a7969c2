"""The database part of the route table: a listener Envoy fronts -> the Database it reaches.

A `[[database]]` entry in `routes.toml` declares one listener of Envoy's
network ext_authz (envoy/postgres.yaml): a connection to it is the action
(`connect` unless the entry says otherwise) on the entry's fixed resource,
e.g. `Database::"ehr"`. The listener is known by the SPIFFE ID of the
certificate it presents to clients, which Envoy reports as
`destination.principal`: the client cannot choose it, Envoy's configuration
does. Rules:
- a connection to a listener no entry declares is `no_database`;
- the listener is a SPIFFE ID, matched whole, declared once;
- `phi = true` (the default) makes a connection need a grant, and its allow a
  disclosure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authz import spiffe
from authz.codec import printable
from authz.errors import PolicyLoadError, RouteError
from authz.model import EntityRef, RouteMatch
from authz.reasons import Reason

DEFAULT_ACTION = "connect"
_KEYS = {"listener", "action", "resource", "phi"}


@dataclass(frozen=True, slots=True)
class Database:
    listener: str  # the SPIFFE ID the listener presents (destination.principal)
    match: RouteMatch


class Databases:
    """Listener -> the route match of a connection to it."""

    def __init__(self, databases: list[Database]) -> None:
        self.by_listener = {d.listener: d.match for d in databases}

    def resolve(self, listener: str) -> RouteMatch:
        match = self.by_listener.get(listener)
        if match is None:
            shown = printable(listener, 200) or "(no certificate)"
            raise RouteError(Reason.NO_DATABASE, f"no `[[database]]` for listener `{shown}`")
        return match


def load(entries: list[Any], where: str, actions: frozenset[str] | None) -> Databases:
    databases = [_database(entry, i, where, actions) for i, entry in enumerate(entries)]
    listeners = [d.listener for d in databases]
    for listener in listeners:
        if listeners.count(listener) > 1:
            raise PolicyLoadError(where, f"database listener `{listener}` is declared twice")
    return Databases(databases)


def _database(entry: Any, index: int, where: str, actions: frozenset[str] | None) -> Database:
    ctx = f"database {index + 1}"
    if not isinstance(entry, dict):
        raise PolicyLoadError(where, f"{ctx}: must be a table")
    unknown = set(entry) - _KEYS
    if unknown:
        raise PolicyLoadError(where, f"{ctx}: unknown keys {sorted(unknown)}")
    listener, resource = entry.get("listener"), entry.get("resource")
    action, phi = entry.get("action", DEFAULT_ACTION), entry.get("phi", True)
    if not isinstance(listener, str) or not isinstance(resource, str):
        raise PolicyLoadError(where, f"{ctx}: `listener` and `resource` must be strings")
    if not isinstance(action, str) or not isinstance(phi, bool):
        raise PolicyLoadError(where, f"{ctx}: `action` must be a string, `phi` true or false")
    try:
        spiffe.parse(listener)
        ref = EntityRef.parse(resource)
    except ValueError as err:
        raise PolicyLoadError(where, f"{ctx}: {err}") from None
    if actions is not None and action not in actions:
        raise PolicyLoadError(where, f"{ctx}: action `{action}` is not declared in the schema")
    match = RouteMatch(action=action, resource=ref, parents=(), template=listener, phi=phi)
    return Database(listener, match)
