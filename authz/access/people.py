"""Who may decide, see or end what: the rules for the people and agents around a request.

Deciding (approve or deny) a pending request, one reason each:
- the agent that asked, or any agent of its chain             -> refused: not your own
- an approver (`lasthop:approver`) decides only requests on
  their own behalf (request.user == their `sub`); an admin
  (`lasthop:admin`) for anyone: the rule of `access.authority`,
  the one grants follow                                          -> refused
- approving needs a name the approval policies gave: `user:<sub>`
  for the person, `role:<r>` for a `roles` claim holding r       -> refused
  (an admin may deny any pending request: a denial grants nothing)

Seeing a request: the agent that asked (for the same user), an admin, the
user it is for, or anyone the policies name to decide it. To anyone else it
does not exist.

Ending a task: an admin (every grant bound to it); the user it acts for; an
agent whose own token is for that task, or that holds a grant bound to it.
Each but the admin ends only the grants and requests of their own user.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.access.authority import ADMIN, APPROVER, check_acts_for
from authz.access.authority import Caller as AdminCaller
from authz.check.pipeline import Caller
from authz.errors import NotPermitted
from authz.model import AccessRequest


@dataclass(frozen=True, slots=True)
class Approver:
    """The caller of an admin-token verb: its `sub`, whether it is an admin, its roles."""

    sub: str
    admin: bool
    roles: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        """How approval policies may name this caller."""
        return frozenset({f"user:{self.sub}", *(f"role:{r}" for r in self.roles)})


Viewer = Approver | Caller


def refusal(request: AccessRequest, approver: Approver, approving: bool) -> str:
    """Why `approver` may not decide `request`; empty when they may."""
    sub = approver.sub
    if sub == request.agent or sub in request.chain:
        return f"`{sub}` asked for this access and cannot decide its own request"
    role = ADMIN if approver.admin else APPROVER
    try:
        check_acts_for(AdminCaller(sub, frozenset({role})), request.user)
    except NotPermitted as err:
        return str(err)
    if not approving and approver.admin:
        return ""
    if not approver.names & set(request.approvers):
        named = ", ".join(request.approvers) or "no one (their approvers do not overlap)"
        return f"the approval policies let {named} decide this request; `{sub}` is not among them"
    return ""


def may_see(request: AccessRequest, viewer: Viewer) -> bool:
    if isinstance(viewer, Caller):
        return request.agent == viewer.chain.actor and request.user == viewer.chain.user
    return viewer.admin or request.user == viewer.sub or bool(viewer.names & set(request.approvers))


def actor_of(who: Viewer) -> str:
    """The name the audit trail gives the caller."""
    return who.chain.actor if isinstance(who, Caller) else who.sub


def task_user(who: Viewer) -> str | None:
    """Whose grants and requests `who` may end in a task; None: everyone's (an admin)."""
    if isinstance(who, Caller):
        return who.chain.user
    return None if who.admin else who.sub
