"""Who may approve access for whom: the one rule the grants API (and access requests) share.

- `lasthop:admin` acts for anyone: it issues, reads and revokes any grant.
- `lasthop:approver` acts only for itself: every grant it issues, reads or
  revokes is for the user it is (`grant.user` equals the caller's `sub`). A
  clinician approves their own agents' access, never another person's.
- a caller with neither scope does nothing (the admin API refuses it first).

A refusal is `NotPermitted` (PERMISSION_DENIED on the API), naming both users.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.errors import NotPermitted

ADMIN = "lasthop:admin"
APPROVER = "lasthop:approver"


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified admin API caller: its token's `sub` and `scope`."""

    sub: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return ADMIN in self.scopes


def check_acts_for(caller: Caller, user: str) -> None:
    """Refuse unless `caller` may approve, read or revoke grants of `user`."""
    if caller.admin or (APPROVER in caller.scopes and user == caller.sub):
        return
    raise NotPermitted(
        f"`{caller.sub}` approves only for themselves, not for `{_printable(user)}`; "
        f"acting for anyone needs `{ADMIN}`"
    )


def user_filter(caller: Caller, requested: str) -> str:
    """The user a listing is limited to: any for an admin, only themselves for an approver."""
    if caller.admin:
        return requested
    check_acts_for(caller, requested or caller.sub)
    return caller.sub


def _printable(text: str) -> str:
    return text[:200].encode("unicode_escape").decode("ascii")
