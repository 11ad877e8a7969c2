"""Approval policies: the Cedar in `<policies>/approval/` that decides access requests.

The directory holds `schema.cedarschema`, added to the access schema (it
declares the `request` action and its context), and `*.cedar` files, one
policy each with an `@id`. They are loaded, validated, versioned,
hot-reloaded and shadowed with the access policies (`policy.load`): an error
in either stops the whole set, naming the file and line.

A request is evaluated as `principal` = the agent that asks, `action` =
`Action::"request"`, `resource` = the resource it asks a grant on. What each
policy means comes from its effect and annotations:

    permit  @decision("approve")             approve at once
    permit  @decision("person")              a person decides; `@approvers` says who:
            @approvers("user, owner, role:R")  the user the chain acts for, the agent's
                                               accountable owner, anyone holding role R
    forbid  @reason("code")                  refuse with this reason (else `approval_refused`)
            @limit("ttl_seconds <= 900")     the limit it enforces (`ttl_seconds` or
                                             `max_uses`), named in the refusal
    either  @mode("shadow")                  evaluated, never enforced

Combining rule, most restrictive first: a forbid that holds refuses; else a
person permit that holds sends the request to a person (who must be named by
every person permit that holds); else an approve permit approves; no permit
that holds refuses (`no_approval_policy`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import cedarpy

from authz.errors import PolicyLoadError
from authz.policy.slices import from_est
from authz.stores.cache import BoundedCache

APPROVAL_DIR = "approval"
REQUEST_ACTION = "request"
DECISIONS = ("approve", "person")
DEFAULT_REFUSAL = "approval_refused"
LIMIT_FIELDS = ("ttl_seconds", "max_uses")
_LIMIT = re.compile(r"^\s*(ttl_seconds|max_uses)\s*<=\s*(\d+)\s*$")
_APPROVER = re.compile(r"^(user|owner|role:[A-Za-z0-9][A-Za-z0-9._:-]{0,63})$")
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class PolicyFacts(Protocol):
    """What loading learned of one policy (`policy.load.PolicyInfo`)."""

    @property
    def id(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def effect(self) -> str: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Limit:
    field: str  # ttl_seconds | max_uses
    most: int

    def __str__(self) -> str:
        return f"{self.field} <= {self.most}"


@dataclass(frozen=True, slots=True)
class Rule:
    """What one approval policy says when it holds."""

    id: str  # the @id
    outcome: str  # approve | person | refuse
    approvers: tuple[str, ...] = ()  # person: user, owner, role:<name>
    reason: str = ""  # refuse: the reason code
    limit: Limit | None = None  # refuse: the limit it enforces


ENTITY_ENTRIES = 4096


@dataclass(frozen=True)
class ApprovalPolicies:
    enforced: cedarpy.PolicySet
    with_shadow: cedarpy.PolicySet | None  # enforced + shadow: what enforcing them would do
    rules: dict[str, Rule]  # by Cedar id, in both sets
    shadow: frozenset[str]  # Cedar ids of the shadow policies
    count: int
    # the parsed entities of each request delta (its agents, resource and parents): agents
    # are whole values in the delta, so a changed agent is another key, never a stale entry;
    # a reload makes new policies, and the memo goes with the old ones
    entities: BoundedCache[str, cedarpy.Entities] = field(
        default_factory=lambda: BoundedCache(ENTITY_ENTRIES), compare=False
    )


def rules(infos: Mapping[str, PolicyFacts], directory: str) -> dict[str, Rule]:
    """Each policy's rule, from its effect and annotations; PolicyLoadError names the line."""
    return {cedar_id: _rule(info, f"{directory}/{info.file}") for cedar_id, info in infos.items()}


def _rule(info: PolicyFacts, where: str) -> Rule:
    notes = info.annotations
    if info.effect == "forbid":
        for name in ("decision", "approvers"):
            if name in notes:
                raise PolicyLoadError(
                    where, f"a forbid refuses: `@{name}` is for permits", info.line
                )
        reason = notes.get("reason", DEFAULT_REFUSAL)
        if not _CODE.fullmatch(reason):
            raise PolicyLoadError(
                where, f'`@reason("{reason}")` must be a code like `ttl_over_limit`', info.line
            )
        return Rule(info.id, "refuse", reason=reason, limit=_limit(notes, where, info.line))
    decision = notes.get("decision")
    if decision not in DECISIONS:
        raise PolicyLoadError(
            where,
            'an approval permit needs `@decision("approve")` or `@decision("person")`',
            info.line,
        )
    if "limit" in notes or "reason" in notes:
        raise PolicyLoadError(where, "`@limit` and `@reason` are for forbids", info.line)
    approvers = _approvers(notes.get("approvers"), decision, where, info.line)
    return Rule(info.id, decision, approvers=approvers)


def _limit(notes: Mapping[str, str], where: str, line: int) -> Limit | None:
    text = notes.get("limit")
    if text is None:
        return None
    match = _LIMIT.match(text)
    if not match:
        raise PolicyLoadError(
            where,
            f'`@limit("{text}")` must read like "ttl_seconds <= 900" or "max_uses <= 50"',
            line,
        )
    return Limit(match.group(1), int(match.group(2)))


def _approvers(text: str | None, decision: str, where: str, line: int) -> tuple[str, ...]:
    if decision == "approve":
        if text is not None:
            raise PolicyLoadError(where, '`@approvers` is for `@decision("person")`', line)
        return ()
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    if not names:
        raise PolicyLoadError(
            where,
            '`@decision("person")` needs `@approvers("user")`, "owner" or "role:<name>"',
            line,
        )
    for name in names:
        if not _APPROVER.fullmatch(name):
            raise PolicyLoadError(
                where, f"approver `{name}` is not user, owner or role:<name>", line
            )
    return names


def policies(
    est: dict[str, Any], infos: Mapping[str, PolicyFacts], directory: str
) -> ApprovalPolicies:
    """The loaded set: enforced, and enforced plus shadow (what enforcing them would do)."""
    shadow = frozenset(k for k, info in infos.items() if info.annotations.get("mode") == "shadow")
    return ApprovalPolicies(
        enforced=from_est({k: v for k, v in est.items() if k not in shadow}),
        with_shadow=from_est(est) if shadow else None,
        rules=rules(infos, directory),
        shadow=shadow,
        count=len(infos),
    )
