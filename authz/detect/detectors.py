"""The six detectors: pure functions of one decided check, its agent's windows and `[detect]`.

Each fires when a count goes above its setting (0 turns it off):

    breadth  patients          distinct `breadth_entity` entities the agent asked for in
                               `breadth_window` > `breadth_patients`
             user_patients     ... for one user > `breadth_user_patients`
    rate     requests          requests in the current `rate_window` > `rate_min` and
                               > `rate_factor` x the agent's own baseline
    probing  agent_denials     denials of the agent in `probing_window` > `probing_denials`
             token_denials     denials of one token > `probing_token_denials`
    novelty  new_habit         an allowed action on a resource type the agent never used,
             new_chain         or through a chain of agents never seen for it, once its
                               first `novelty_learning` has passed
             txn_reused        a txn first used by another user, or a chain started by
                               another agent (always, learning or not)
    hours    off_hours         a request outside the agent's declared working hours
    hygiene  unregistered_agent  an agent in a chain that is not registered
             long_lived_token  a token living longer than `hygiene_token_lifetime`
             token_without_jti a token without `jti` (with `hygiene_require_jti`)

Denials that count as probing: 401 and 403, except `agent_suspended` and
`agent_unregistered` (a contained agent keeps asking; hygiene reports the
other). Every detection names the decision that crossed the line and carries
its evidence: the window, the count, the threshold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from authz.codec import rfc3339
from authz.config import DetectSettings
from authz.model import Decision, Risk
from authz.stores.windows import Observation, Tally

KINDS: dict[str, tuple[str, ...]] = {
    "breadth": ("patients", "user_patients"),
    "rate": ("requests",),
    "probing": ("agent_denials", "token_denials"),
    "novelty": ("new_habit", "new_chain", "txn_reused"),
    "hours": ("off_hours",),
    "hygiene": ("unregistered_agent", "long_lived_token", "token_without_jti"),
}
DETECTORS = tuple(KINDS)


@dataclass(frozen=True)
class Detection:
    detector: str  # a key of KINDS
    kind: str  # one of its kinds
    agent: str
    user: str
    decision_id: str  # the check that crossed the line
    at: float
    evidence: dict[str, object] = field(default_factory=dict)
    scope: str = ""  # what the claim is per, beyond the agent: a user, a token, a txn

    def as_detail(self, response: str) -> dict[str, object]:
        """The audit event's and the webhook's body."""
        return {
            "detector": self.detector,
            "kind": self.kind,
            "response": response,
            "agent": self.agent,
            "user": self.user,
            "decision_id": self.decision_id,
            "time": rfc3339(self.at),
            "evidence": self.evidence,
        }


@dataclass(slots=True)  # built for every check: a frozen dataclass costs several times more
class Seen:
    """One decided check, as the detectors need it: what the windows count, and what the
    decision said (kept small: a queue of these waits out a store outage)."""

    obs: Observation
    reason: str
    chain: tuple[str, ...]  # the agents, first to current
    risk: Risk | None  # what the risk phase knew (None: refused before it)
    unregistered: tuple[str, ...] = ()  # chain agents the registry does not know

    @classmethod
    def of(cls, obs: Observation, decision: Decision) -> Seen:
        agents = decision.chain.agents if decision.chain else ()
        return cls(obs, str(decision.reason), agents, decision.risk)


class DetectObserver(Protocol):
    """What detection reports (metrics); labels come from KINDS and closed sets."""

    def detected(self, detector: str, kind: str, response: str) -> None: ...
    def acted(self, action: str, ok: bool) -> None: ...
    def contained(self, seconds: float) -> None: ...
    def windows_failed(self) -> None: ...


def judge(seen: Seen, tally: Tally, s: DetectSettings) -> list[Detection]:
    """Every detection this check causes, in the order of KINDS."""
    return [
        *_breadth(seen, tally, s),
        *_rate(seen, tally, s),
        *_probing(seen, tally, s),
        *_novelty(seen, tally, s),
        *_hours(seen),
        *_hygiene(seen, s),
    ]


def _detection(
    seen: Seen, detector: str, kind: str, scope: str = "", **evidence: object
) -> Detection:
    obs = seen.obs
    return Detection(detector, kind, obs.agent, obs.user, obs.event, obs.at, evidence, scope)


def _breadth(seen: Seen, tally: Tally, s: DetectSettings) -> Iterator[Detection]:
    window = s.breadth_window
    if s.breadth_patients and tally.patients > s.breadth_patients:
        yield _detection(
            seen, "breadth", "patients", window_seconds=window, entity=s.breadth_entity,
            count=tally.patients, threshold=s.breadth_patients,
        )  # fmt: skip
    if s.breadth_user_patients and tally.user_patients > s.breadth_user_patients:
        yield _detection(
            seen, "breadth", "user_patients", seen.obs.user, window_seconds=window,
            entity=s.breadth_entity, count=tally.user_patients, threshold=s.breadth_user_patients,
        )  # fmt: skip


def _rate(seen: Seen, tally: Tally, s: DetectSettings) -> Iterator[Detection]:
    limit = max(s.rate_min, s.rate_factor * tally.baseline)
    if s.rate_min and tally.requests > limit:
        yield _detection(
            seen, "rate", "requests", window_seconds=s.rate_window, count=tally.requests,
            baseline=tally.baseline, factor=s.rate_factor, threshold=limit,
        )  # fmt: skip


def _probing(seen: Seen, tally: Tally, s: DetectSettings) -> Iterator[Detection]:
    if not seen.obs.denial:
        return
    window = s.probing_window
    if s.probing_denials and tally.denials > s.probing_denials:
        yield _detection(
            seen, "probing", "agent_denials", window_seconds=window, count=tally.denials,
            threshold=s.probing_denials, reason=seen.reason,
        )  # fmt: skip
    token = seen.obs.token
    if s.probing_token_denials and tally.token_denials > s.probing_token_denials:
        yield _detection(
            seen, "probing", "token_denials", token[:16], window_seconds=window,
            count=tally.token_denials, threshold=s.probing_token_denials, token_sha256=token,
            reason=seen.reason,
        )  # fmt: skip


def _novelty(seen: Seen, tally: Tally, s: DetectSettings) -> Iterator[Detection]:
    obs = seen.obs
    if s.novelty_learning and tally.learned:
        if tally.new_habit:
            yield _detection(
                seen, "novelty", "new_habit", obs.habit, habit=obs.habit,
                learning_seconds=s.novelty_learning,
            )  # fmt: skip
        if tally.new_chain:
            yield _detection(
                seen, "novelty", "new_chain", obs.chain, chain=obs.chain.split(" "),
                learning_seconds=s.novelty_learning,
            )  # fmt: skip
    if tally.txn_owner:
        yield _detection(
            seen, "novelty", "txn_reused", obs.txn, txn=obs.txn, first_owner=tally.txn_owner,
            owner=obs.txn_owner,
        )  # fmt: skip


def _hours(seen: Seen) -> Iterator[Detection]:
    risk = seen.risk
    if risk is not None and risk.off_hours:
        yield _detection(seen, "hours", "off_hours", time=rfc3339(seen.obs.at))


def _hygiene(seen: Seen, s: DetectSettings) -> Iterator[Detection]:
    for agent in seen.unregistered:
        yield Detection(
            "hygiene", "unregistered_agent", agent, seen.obs.user, seen.obs.event, seen.obs.at,
            {"chain": list(seen.chain)},
        )  # fmt: skip
    risk = seen.risk
    if risk is None:
        return
    limit = s.hygiene_token_lifetime
    if limit and risk.token_lifetime > limit:
        yield _detection(
            seen, "hygiene", "long_lived_token", lifetime_seconds=risk.token_lifetime,
            threshold=limit, token_sha256=seen.obs.token,
        )  # fmt: skip
    if s.hygiene_require_jti and not risk.token_jti:
        yield _detection(seen, "hygiene", "token_without_jti", token_sha256=seen.obs.token)
