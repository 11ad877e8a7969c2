"""What access requests report and consult beside the stores: metrics, the webhook, containment.

Containment is the hook threat detection sets: consulted when a request is
decided, and when it holds for any agent of the chain, what the approval
policies would approve at once waits for the user instead.
"""

from __future__ import annotations

from typing import Protocol

from authz.model import AccessRequest

OUTCOMES = (
    "approved_by_policy",
    "pending",
    "refused",
    "approved",
    "denied",
    "expired",
    "cancelled",
)


class AccessObserver(Protocol):
    def access_outcome(self, outcome: str) -> None: ...  # one of OUTCOMES
    def break_glass(self) -> None: ...


class Notifier(Protocol):
    def notify(self, event: str, request: AccessRequest) -> None: ...


class Containment(Protocol):
    async def requires_person(self, agents: tuple[str, ...]) -> bool: ...


class NoContainment:
    async def requires_person(self, agents: tuple[str, ...]) -> bool:
        return False
