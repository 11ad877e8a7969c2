"""Task-scoped grants: a grant bound to a task's `txn` ends with the task.

A bound grant covers only requests carrying its txn (`check.grants`), and ends
at the earliest of its expiry, its last use, or the end of its task. Ending a
task marks it ended for its user, then revokes every grant bound to it; a
grant issued meanwhile on another replica is caught by the check that follows
each issue, in this order:

    issue:  bind the id to the task -> store the grant -> task ended? revoke it
    end:    mark the task ended     -> list its grants -> revoke each

Whichever runs first, the grant does not survive the end of its task.
"""

from __future__ import annotations

from authz.access.people import Viewer
from authz.check.pipeline import Caller
from authz.errors import AccessRequestError
from authz.model import Grant
from authz.stores.protocols import AccessStore, GrantStore


async def issue(grants: GrantStore, store: AccessStore, grant: Grant) -> None:
    """Store `grant`; bound to a task that has ended, it is withdrawn and this raises."""
    if grant.txn:
        await store.bind_task(grant.txn, grant.id, grant.expires_at)
    await grants.put(grant)
    if grant.txn and await store.task_ended(grant.txn, grant.user):
        await grants.revoke(grant.id)
        raise ended(grant.txn)


def ended(txn: str) -> AccessRequestError:
    return AccessRequestError(
        f"task `{txn}` has ended; nothing more is granted for it", "failed_precondition"
    )


async def end(
    grants: GrantStore, store: AccessStore, txn: str, users: set[str], until: int
) -> list[Grant]:
    """Mark `txn` ended for `users`, then revoke its grants of those users; the revoked."""
    for user in sorted(users):
        await store.end_task(txn, user, until)
    revoked = []
    for grant in await _grants(store, grants, txn):
        if grant.user in users:
            gone = await grants.revoke(grant.id)
            if gone is not None:
                revoked.append(gone.grant)
    return revoked


async def may_end(
    store: AccessStore, grants: GrantStore, txn: str, who: Viewer, user: str | None
) -> None:
    """Raises unless `who` may end `txn` (see `access.people`)."""
    if not txn:
        raise AccessRequestError("a task id (`txn`) is required")
    if not isinstance(who, Caller) or not who.chain.agents or who.intent.txn == txn:
        return
    for grant in await _grants(store, grants, txn):
        if grant.agent == who.chain.actor and grant.user == user:
            return
    raise AccessRequestError(
        f"agent `{who.chain.actor}` neither acts in task `{txn}` (its token's txn is "
        f"`{who.intent.txn}`) nor holds a grant bound to it",
        "permission_denied",
    )


async def users(store: AccessStore, grants: GrantStore, txn: str) -> set[str]:
    """The users of the grants bound to `txn`."""
    return {g.user for g in await _grants(store, grants, txn)}


async def _grants(store: AccessStore, grants: GrantStore, txn: str) -> list[Grant]:
    found = [await grants.get(grant_id) for grant_id in await store.task_grants(txn)]
    return [g for g in found if g is not None and g.txn == txn]
