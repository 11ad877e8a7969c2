"""What an agent asks for, and the checks it must pass before any policy sees it.

A request that fails one is refused with a message naming the field, and
nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.access import approval
from authz.errors import AccessRequestError
from authz.model import PURPOSE
from authz.policy.load import PolicyBundle

MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Ask:
    """What an agent asks for."""

    action: str
    resource: str  # a Cedar entity reference
    purpose: str
    ttl_seconds: int
    max_uses: int = 0  # 0: unlimited
    txn: str = ""  # bind the grant to this task
    reason: str = ""
    break_glass: bool = False


def check_ask(ask: Ask, bundle: PolicyBundle, max_ttl: int) -> str:
    """The resource asked for, as written canonically; raises naming the first bad field."""
    if ask.action not in bundle.actions:
        raise AccessRequestError(
            f"unknown action `{ask.action}`; expected one of {sorted(bundle.actions)}"
        )
    resource = str(approval.resource_of(ask.resource, bundle)[0])
    if not PURPOSE.fullmatch(ask.purpose):
        raise AccessRequestError(f"purpose `{ask.purpose}` is not a purpose name")
    if not 0 < ask.ttl_seconds <= max_ttl:
        raise AccessRequestError(f"ttl must be between 1 s and grants.max_ttl ({max_ttl} s)")
    if ask.max_uses < 0:
        raise AccessRequestError("max_uses must be 0 (unlimited) or positive")
    if ask.txn and not PURPOSE.fullmatch(ask.txn):
        raise AccessRequestError(f"txn `{ask.txn}` is not a task id")
    if len(ask.reason) > MAX_REASON:
        raise AccessRequestError(f"the reason is longer than {MAX_REASON} characters")
    if ask.break_glass and not ask.reason.strip():
        raise AccessRequestError("break-glass access needs a reason")
    return resource
