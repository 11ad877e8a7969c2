"""A bounded Jepsen-style harness: clients drive a fleet while a nemesis breaks Redis.

    clients   CLIENTS threads, each sending GET RECORDS in a loop, every time for a
              grant drawn at random and through a replica drawn at random, until
              stopped (or LIMIT_SECONDS); every answer is kept in the history
    revokes   the nemesis revokes grants through the admin API, retrying each
              `unavailable` answer until one acknowledges it (success, `already
              revoked`, or `not_found`: a claim that the grant does not exist)
    checkers  over the history, once the fault has healed:
              - uses: a use-limited grant is allowed at most max-uses times, and no
                more often than the counter the surviving primary holds (an allowed
                use that is not counted there was lost in the failover, and would be
                spent again)
              - revokes: no allow of a grant sent after its revoke was acknowledged
              - answers: every refusal is a 403 with the grant's own reason or a 503

Everything is bounded: the clients stop after LIMIT_SECONDS whatever happens, a revoke
gives up after REVOKE_LIMIT_SECONDS.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from authz._proto import grants_pb2 as pb
from authz.errors import AdminError
from tests.integration.conftest import RECORDS, unique
from tests.integration.fleet import Fleet

Counted = Callable[..., Any]  # sends one command to the primary that survived

CLIENTS = 4
LIMIT_SECONDS = 30.0
REVOKE_LIMIT_SECONDS = 20.0
REVOKE_RETRY_SECONDS = 0.05


@dataclass(frozen=True)
class Op:
    """One request as a client saw it."""

    target: str  # the grant id it used
    replica: int
    sent: float  # time.monotonic()
    done: float
    status: int
    reason: str  # "" for an allow, or for Envoy's own 503


@dataclass
class Target:
    grant: pb.Grant
    token: str


@dataclass
class Ack:
    """A revoke as the nemesis saw it: every answer until one acknowledged it."""

    grant_id: str
    answers: list[str] = field(default_factory=list)
    acked_at: float | None = None  # time.monotonic() when the acknowledging answer came back


def grants(fleet: Fleet, agent: str, count: int, max_uses: int, users: list[str]) -> list[Target]:
    """`count` grants of `agent` (max_uses each, 0: unlimited), for the given users."""
    targets = []
    for user in users[:count]:
        grant = fleet.grant(user, agent, max_uses=max_uses)
        targets.append(Target(grant, fleet.token(user, [agent])))
    return targets


def users(count: int, prefix: str, accept: Callable[[str], bool] = lambda _: True) -> list[str]:
    """`count` fresh user ids that `accept` takes (e.g. whose pair lives on one shard)."""
    found: list[str] = []
    while len(found) < count:
        user = unique(prefix)
        if accept(user):
            found.append(user)
    return found


class Load:
    """CLIENTS threads sending requests for `targets` through the fleet until `stop()`."""

    def __init__(self, fleet: Fleet, targets: list[Target]) -> None:
        self.fleet = fleet
        self.targets = targets
        self.history: list[Op] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + LIMIT_SECONDS
        while not self._stop.is_set() and time.monotonic() < deadline:
            target = rng.choice(self.targets)
            index = rng.randrange(len(self.fleet.replicas))
            sent = time.monotonic()
            resp = self.fleet.replicas[index].get(RECORDS, target.token)
            op = Op(target.grant.id, index, sent, time.monotonic(), resp.status, resp.reason)
            with self._lock:
                self.history.append(op)

    def ops(self) -> list[Op]:
        with self._lock:
            return list(self.history)


def revoke(fleet: Fleet, grant_id: str, via: int = 0) -> Ack:
    """Revoke until acknowledged, retrying `unavailable`; every answer on the way."""
    ack = Ack(grant_id)
    deadline = time.monotonic() + REVOKE_LIMIT_SECONDS
    while time.monotonic() < deadline:
        try:
            answer = fleet.replicas[via].admin.revoke(grant_id)
            ack.answers.append("already revoked" if answer.already_revoked else "revoked")
        except AdminError as err:
            ack.answers.append(str(err))
            if not str(err).startswith("not_found:"):
                time.sleep(REVOKE_RETRY_SECONDS)
                continue
        ack.acked_at = time.monotonic()
        return ack
    return ack


class Revokes:
    """Revokes that run beside the nemesis (each retries in its own thread)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.acks: list[Ack] = []
        self._threads: list[threading.Thread] = []

    def start(self, grant_id: str, via: int = 0) -> None:
        ack = Ack(grant_id)
        self.acks.append(ack)
        thread = threading.Thread(target=self._run, args=(ack, via), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, ack: Ack, via: int) -> None:
        done = revoke(self.fleet, ack.grant_id, via)
        ack.answers, ack.acked_at = done.answers, done.acked_at

    def wait(self) -> list[Ack]:
        for thread in self._threads:
            thread.join()
        return self.acks


# checkers ---------------------------------------------------------------------------------


def allowed_uses(history: list[Op]) -> Counter[str]:
    return Counter(op.target for op in history if op.status == 200)


def overspent(history: list[Op], limited: list[Target], counted: dict[str, int]) -> list[str]:
    """Use-limited grants allowed more than max-uses times, or more than the surviving
    primary counted; empty when every grant held."""
    allowed = allowed_uses(history)
    wrong = []
    for target in limited:
        gid, cap = target.grant.id, target.grant.max_uses
        if allowed[gid] > cap or allowed[gid] > counted[gid]:
            wrong.append(f"{gid}: allowed {allowed[gid]}, max-uses {cap}, counted {counted[gid]}")
    return wrong


def allowed_after_revoke(history: list[Op], acks: list[Ack]) -> list[Op]:
    """Allows of a grant sent after its revoke was acknowledged."""
    acked = {a.grant_id: a.acked_at for a in acks if a.acked_at is not None}
    return [
        op
        for op in history
        if op.status == 200 and op.target in acked and op.sent > acked[op.target]
    ]


def wrong_answers(history: list[Op], expected: dict[str, set[str]]) -> list[Op]:
    """Refusals that are neither `expected[grant]` 403s nor a 503."""
    return [
        op
        for op in history
        if op.status not in (200, 503)
        and not (op.status == 403 and op.reason in expected.get(op.target, set()))
    ]


def answers(ack: Ack) -> str:
    """`unavailable x12 -> already revoked`: what one revoke was told, in order."""
    parts: list[tuple[str, int]] = []
    for answer in ack.answers:
        kind = answer.split(":", 1)[0]
        if parts and parts[-1][0] == kind:
            parts[-1] = (kind, parts[-1][1] + 1)
        else:
            parts.append((kind, 1))
    return " -> ".join(kind if n == 1 else f"{kind} x{n}" for kind, n in parts)


def summary(history: list[Op]) -> str:
    outcomes = Counter(
        "allowed" if op.status == 200 else f"{op.status} {op.reason or 'envoy'}" for op in history
    )
    span = max(op.done for op in history) - min(op.sent for op in history) if history else 0.0
    return f"{len(history)} requests in {span:.1f} s: {dict(outcomes.most_common())}"
