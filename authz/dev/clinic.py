"""A clinic day in the shipped example: normal traffic, for the demo, the tests and the benchmarks.

dr-alice's clinic: for each visit she approves a grant on that patient, and
the scribe reads the chart and files a note (every third visit delegated by
the orchestrator); the scribe once asks for a chart it has no grant for (a
`no_grant`, as happens). The medication reconciler reads the
medication list of each admission; bob's billing bot checks the day's
claims. Tokens live ten minutes and carry a `jti`, as an identity provider
issues them. Nothing here should make a detector fire at its default
threshold: it is the false-positive baseline.
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from authz._proto import grants_pb2 as pb
from authz.cli.admin_client import AdminClient
from authz.dev.tokens import DemoIssuer

DOCUMENTATION = "clinical-documentation"
RECONCILIATION = "medication-reconciliation"
TOKEN_TTL = 600
RETRIES = 3
UNDECIDED = frozenset({"http_503", "store_unavailable", "internal_error", "audit_unavailable"})
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class GrantSpec:
    agent: str
    user: str
    actions: tuple[str, ...]
    resource: str
    purpose: str


@dataclass(frozen=True)
class Step:
    user: str
    agents: tuple[str, ...]  # first to current
    purpose: str
    method: str
    path: str


def day(
    number: int = 0, visits: int = 12, admissions: int = 4, claims: int = 6
) -> tuple[list[GrantSpec], list[Step]]:
    """The grants a clinic day needs and its requests, in order."""
    grants: list[GrantSpec] = []
    steps: list[Step] = []
    base = 2000 + number * 100
    for i in range(visits):
        patient = f"p-{base + i}"
        chain = ("orchestrator", "scribe") if i % 3 == 0 else ("scribe",)
        if i == 1:  # the scribe reaches for tomorrow's chart: no grant covers it
            steps.append(
                Step("dr-alice", chain, DOCUMENTATION, "GET", f"/patients/p-{base + 99}/records")
            )
        grants.append(
            GrantSpec(
                "scribe", "dr-alice", ("read", "write"), f'Patient::"{patient}"', DOCUMENTATION
            )
        )
        for method, what in (("GET", "records"), ("POST", "notes"), ("GET", "records")):
            steps.append(
                Step("dr-alice", chain, DOCUMENTATION, method, f"/patients/{patient}/{what}")
            )
    for i in range(admissions):
        patient = f"p-{base + 50 + i}"
        grants.append(
            GrantSpec(
                "med-reconciler", "dr-alice", ("read",), f'Patient::"{patient}"', RECONCILIATION
            )
        )
        for _ in range(2):
            steps.append(
                Step(
                    "dr-alice",
                    ("med-reconciler",),
                    RECONCILIATION,
                    "GET",
                    f"/patients/{patient}/medications",
                )
            )
    for i in range(claims):
        claim = f"c-{base + i}"
        grants.append(GrantSpec("billing-bot", "bob", ("read",), f'Claim::"{claim}"', "billing"))
        steps.append(Step("bob", ("billing-bot",), "billing", "GET", f"/claims/{claim}"))
    return grants, steps


def issue(admin: AdminClient, specs: Sequence[GrantSpec], ttl: int = 3600) -> None:
    for spec in specs:
        admin.issue(
            pb.IssueGrantRequest(
                agent=spec.agent,
                user=spec.user,
                actions=list(spec.actions),
                resources=[spec.resource],
                purpose=spec.purpose,
                ttl_seconds=ttl,
            )
        )


def run(bases: Sequence[str], issuer: DemoIssuer, steps: Sequence[Step]) -> Counter[str]:
    """Send every step, round-robin over the Envoys at `bases`; outcomes by reason.

    A step answered 503 (Lasthop or Envoy could not decide in time: a busy machine) is
    sent again, as an agent would, up to RETRIES times; a 503 is never counted by the
    detectors, so the retry is not a second request to them."""
    tokens: dict[tuple[str, tuple[str, ...], str], str] = {}
    outcomes: Counter[str] = Counter()
    for base, step in zip(itertools.cycle(bases), steps):
        key = (step.user, step.agents, step.purpose)
        if key not in tokens:
            tokens[key] = issuer.access_token(
                step.user, list(step.agents), purpose=step.purpose, ttl=TOKEN_TTL
            )
        for _ in range(RETRIES):
            outcome = send(base, step.method, step.path, tokens[key]).outcome
            if outcome not in UNDECIDED:
                break
        outcomes[outcome] += 1
    return outcomes


@dataclass(frozen=True)
class Answer:
    outcome: str  # `allowed` (the upstream answered, whatever its status), or the deny's reason
    decision_id: str


def send(base: str, method: str, path: str, token: str) -> Answer:
    """One request through Envoy, and Lasthop's answer to it."""
    data = b"visit note" if method == "POST" else None
    request = urllib.request.Request(base + path, method=method, data=data)
    request.add_header("authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=5) as response:
            return _answer(response.read(), response.status)
    except urllib.error.HTTPError as err:
        with err:
            return _answer(err.read(), err.code)


def _answer(raw: bytes, status: int) -> Answer:
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    if body.get("decision") == "deny":  # Lasthop's own refusal
        return Answer(str(body.get("reason")), str(body.get("decision_id", "")))
    seen = {str(k).lower(): v for k, v in (body.get("lasthop") or {}).items()}
    if seen:  # the upstream answered: Lasthop let it through
        return Answer("allowed", str(seen.get("x-lasthop-decision-id", "")))
    return Answer(f"http_{status}", "")  # neither: Envoy's own answer (e.g. 503)
