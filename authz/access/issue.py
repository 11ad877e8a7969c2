"""Issuing a grant: validate a request, then mint the grant. Nothing is written on a refusal."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from authz.errors import GrantRequestError
from authz.model import EntityRef, Grant


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
    known_agents: set[str],
    known_actions: frozenset[str],
    max_ttl: int,
) -> Grant:
    """Validate an issue request; raises GrantRequestError naming what is wrong."""
    if req.agent not in known_agents:
        raise GrantRequestError(f"unknown agent `{req.agent}`; register it first")
    if not req.user:
        raise GrantRequestError("`user` must not be empty")
    if not req.actions or any(not a for a in req.actions):
        raise GrantRequestError("at least one non-empty action is required")
    for action in req.actions:
        if action not in known_actions:
            raise GrantRequestError(
                f"unknown action `{action}`; expected one of {sorted(known_actions)}"
            )
    if not req.resources:
        raise GrantRequestError("at least one resource is required")
    for resource in req.resources:
        try:
            EntityRef.parse(resource)
        except ValueError as err:
            raise GrantRequestError(str(err)) from None
    if not req.purpose:
        raise GrantRequestError("`purpose` must not be empty")
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
