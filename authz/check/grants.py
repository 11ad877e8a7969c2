"""The grants phase: which session grant covers this request.

A grant belongs to one (agent, user) pair and never transfers along a chain.
It covers a request when one of its actions is the route's action and one of
its resources is the route's resource or one of its ancestors. The absolute
expiry lives inside the grant and is checked here, whatever the store's TTLs do.

A grant bound to a task (`txn`) covers only requests carrying that txn; it
never covers a request with another txn or none.

Selection rule, in order, each with its reason when nothing is left:
  grants of (current agent, user) covering action + resource   -> no_grant
  ... that have not expired                                     -> grant_expired
  ... unbound, or bound to the request's task                   -> task_mismatch
  ... whose purpose is the request's purpose                    -> purpose_mismatch
"""

from __future__ import annotations

from authz.errors import GrantError
from authz.model import Grant, RouteMatch
from authz.reasons import Reason


def covers(grant: Grant, route: RouteMatch) -> bool:
    if route.action not in grant.actions:
        return False
    targets = {str(route.resource), *(str(p) for p in route.parents)}
    return any(r in targets for r in grant.resources)


def select(
    grants: list[Grant], route: RouteMatch, purpose: str, now: float, txn: str = ""
) -> Grant:
    covering = [g for g in grants if covers(g, route)]
    if not covering:
        raise GrantError(Reason.NO_GRANT, f"no grant covers `{route.action}` on `{route.resource}`")
    live = [g for g in covering if g.expires_at > now]
    if not live:
        raise GrantError(Reason.GRANT_EXPIRED, "every grant covering this request has expired")
    in_task = [g for g in live if not g.txn or g.txn == txn]
    if not in_task:
        raise GrantError(
            Reason.TASK_MISMATCH,
            f"grants covering this request are bound to another task than txn `{txn}`",
        )
    matching = [g for g in in_task if g.purpose == purpose]
    if not matching:
        raise GrantError(
            Reason.PURPOSE_MISMATCH,
            f"no grant for purpose `{purpose}`; grants are for another purpose",
        )
    return min(matching, key=lambda g: g.expires_at)  # spend the soonest-expiring first
