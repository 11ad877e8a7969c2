"""Posture findings: their kinds, severities, OWASP NHI Top 10 (2025) categories and fixes.

A finding's id is `<kind>:<subject>`, the same on every run while its cause
stands, so a report can be compared with the last one, and a finding tracked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEVERITIES = ("info", "low", "medium", "high", "critical")
NHI1 = "NHI1:2025 Improper Offboarding"
NHI5 = "NHI5:2025 Overprivileged NHI"
NHI7 = "NHI7:2025 Long-Lived Secrets"


@dataclass(frozen=True)
class Rule:
    kind: str
    severity: str
    owasp: str
    title: str
    fix: str


RULES: dict[str, Rule] = {
    r.kind: r
    for r in (
        Rule(
            "standing-grant",
            "medium",
            NHI5,
            "a grant lives far longer than its use",
            "issue grants for the task's length (`--ttl`), or with `--max-uses`; revoke it "
            "when the task ends",
        ),
        Rule(
            "renewed-grant",
            "medium",
            NHI5,
            "grants renewed back to back for the same agent, user and resources",
            "this is standing access by another name: find the task that needs it and grant "
            "per task, or make the access a policy decision",
        ),
        Rule(
            "unused-grant",
            "low",
            NHI5,
            "a grant was never used",
            "revoke it (`lasthop grants revoke ID`) and issue grants when the task starts",
        ),
        Rule(
            "broad-grant",
            "medium",
            NHI5,
            "a live grant covers many resources",
            "revoke it and issue one grant per patient the task needs",
        ),
        Rule(
            "ownerless-agent",
            "high",
            NHI1,
            "an active agent's owner is no person Lasthop knows",
            "give it an accountable owner (`lasthop agents update ID --owner USER`) or suspend it",
        ),
        Rule(
            "high-risk-write",
            "high",
            NHI5,
            "a high-risk agent holds a live grant that writes",
            "revoke the write access; grant it reads only, or lower its risk after a review",
        ),
        Rule(
            "unseen-agent",
            "low",
            NHI1,
            "a registered agent never acted",
            "deregister it if it is no longer used (`lasthop agents deregister ID`)",
        ),
        Rule(
            "unregistered-agent",
            "high",
            NHI1,
            "an agent presented valid tokens but is not registered",
            "stop the identity provider issuing tokens for it, or register it with an owner",
        ),
        Rule(
            "long-lived-token",
            "medium",
            NHI7,
            "tokens living longer than detect.hygiene_token_lifetime were used",
            "shorten the access token lifetime at the identity provider for this client",
        ),
        Rule(
            "phi-permit-without-grant",
            "critical",
            NHI5,
            "a policy permits a PHI action when no grant is held",
            "add `when { context has grant }` to the permit (see the shipped permits)",
        ),
        Rule(
            "long-shadow-policy",
            "low",
            NHI5,
            "a policy has stayed in shadow mode for long",
            "read `lasthop audit shadow-report`, then enforce it or delete it",
        ),
    )  # fmt: skip
}


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str
    summary: str
    evidence: dict[str, object] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.subject}"

    @property
    def rule(self) -> Rule:
        return RULES[self.kind]

    def as_dict(self) -> dict[str, object]:
        rule = self.rule
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": rule.severity,
            "owasp": rule.owasp,
            "title": rule.title,
            "summary": self.summary,
            "evidence": self.evidence,
            "fix": rule.fix,
        }


def at_or_above(severity: str) -> frozenset[str]:
    return frozenset(SEVERITIES[SEVERITIES.index(severity) :])


def span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} d"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} h"
    if seconds >= 120:
        return f"{seconds // 60} min"
    return f"{seconds} s"
