"""Issuing a grant: validate a request, then mint the grant. Nothing is written on a refusal.

Rules: the agent is registered and active (a suspended agent's grant could
not be used, and would start working on resume without anyone deciding so);
the user and the purpose are well-formed ids, matched whole; each resource is
a Cedar entity reference, matched whole; each action is one the schema
declares; the lifetime is within `grants.max_ttl`. Who may ask for whom is
`authz.access.authority`'s rule, checked before this.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from authz.errors import AgentNotActive, GrantRequestError
from authz.model import PURPOSE, USER_ID, Agent, EntityRef, Grant


@dataclass(frozen=True, slots=True)
class GrantRequest:
    agent: str
    user: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    purpose: str
    ttl_seconds: int
    max_uses: int = 0


def new_grant(
    req: GrantRequest,
    issued_by: str,
    now: int,
    agents: Mapping[str, Agent],
    known_actions: frozenset[str],
    max_ttl: int,
) -> Grant:
    """Validate an issue request; raises GrantRequestError naming what is wrong.

    `agents`: the registry's answer for the requested agent (or every agent)."""
    _check_agent(agents.get(req.agent), req.agent)
    _check_who(req)
    _check_what(req, known_actions)
    if not 0 < req.ttl_seconds <= max_ttl:
        raise GrantRequestError(f"ttl must be between 1 s and grants.max_ttl ({max_ttl} s)")
    if req.max_uses < 0:
        raise GrantRequestError("max_uses must be 0 (unlimited) or positive")
    return Grant(
        id=f"g-{secrets.token_hex(8)}",
        agent=req.agent,
        user=req.user,
        actions=req.actions,
        resources=tuple(str(EntityRef.parse(r)) for r in req.resources),
        purpose=req.purpose,
        issued_by=issued_by,
        issued_at=now,
        expires_at=now + req.ttl_seconds,
        max_uses=req.max_uses,
    )


def _check_agent(agent: Agent | None, name: str) -> None:
    if agent is None or not agent.registered:
        raise GrantRequestError(f"unknown agent `{_printable(name)}`; register it first")
    if not agent.active:
        raise AgentNotActive(f"agent `{agent.id}` is {agent.status}; resume it first")


def _check_who(req: GrantRequest) -> None:
    """The user and the purpose: well-formed ids, matched whole."""
    if not req.user:
        raise GrantRequestError("`user` must not be empty")
    if not USER_ID.fullmatch(req.user):
        raise GrantRequestError(
            f"`user` `{_printable(req.user)}` must be 1-255 printable ASCII characters, no spaces"
        )
    if not req.purpose:
        raise GrantRequestError("`purpose` must not be empty")
    if not PURPOSE.fullmatch(req.purpose):
        raise GrantRequestError(f"`purpose` `{_printable(req.purpose)}` is not a purpose name")


def _check_what(req: GrantRequest, known_actions: frozenset[str]) -> None:
    """Actions the schema declares; resources that are Cedar entity references."""
    if not req.actions or any(not a for a in req.actions):
        raise GrantRequestError("at least one non-empty action is required")
    for action in req.actions:
        if action not in known_actions:
            raise GrantRequestError(
                f"unknown action `{_printable(action)}`; expected one of {sorted(known_actions)}"
            )
    if not req.resources:
        raise GrantRequestError("at least one resource is required")
    for resource in req.resources:
        try:
            EntityRef.parse(resource)
        except ValueError as err:
            raise GrantRequestError(str(err)) from None


def _printable(text: str) -> str:
    return text[:200].encode("unicode_escape").decode("ascii")
