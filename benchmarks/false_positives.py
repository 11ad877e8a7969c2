"""How often the default detectors fire on normal clinical traffic: the false-positive rate.

    .venv/bin/python benchmarks/false_positives.py [--days 30] [--seed 7] [--json PATH]

Runs the server's pipeline in process, with the detectors at their defaults (plus
the shipped example's breadth suspension) on the embedded windows, over --days
simulated days of the hospital example's normal work, on a simulated clock so
that every window sees real time pass (a month in seconds):

  scribe          a clinic day, Monday to Friday 08:00-17:00: 16 to 20 visits, one
                  every 20 to 27 minutes; per visit dr-alice approves a 30-minute grant,
                  the scribe reads the chart two or three times and files one or two
                  notes; every third visit is delegated by the orchestrator; once or
                  twice a day it reaches for a chart it holds no grant for (no_grant)
  med-reconciler  six to ten admissions a day, any hour; each a 15-minute grant and two
                  to four reads of the medication list
  billing-bot     a nightly batch, 01:00-02:00: 30 to 50 claims, one read each

Every request carries a token minted for it (ten minutes, with a jti), as an
agent refreshing its tokens from an identity provider would. The scribe
declares its hours (Mon-Fri 07:00-19:00). Reported: the
checks, the detections (every one is a false positive: nothing here is an attack),
and each agent's busiest value of every signal against its threshold (the headroom).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz.audit.records import NullAudit
from authz.check import keys as jwks
from authz.config import DetectSettings, IdentitySettings
from authz.detect.monitor import Monitor
from authz.detect.respond import Responder
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput, Decision, Grant
from authz.policy import load as policy_load
from authz.server.app import assemble
from authz.stores.embedded import EmbeddedAgentStore, EmbeddedGrantStore
from authz.stores.registry import StoreRegistry, seed
from authz.stores.windows import EmbeddedWindows

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = DetectSettings(breadth_response="suspend")  # the defaults and the shipped example
MONDAY = 1_799_020_800  # 2027-01-04T00:00:00Z, a Monday
DOCUMENTATION, RECONCILIATION = "clinical-documentation", "medication-reconciliation"


@dataclass(order=True)
class Task:
    at: float
    user: str = field(compare=False)
    agents: tuple[str, ...] = field(compare=False)
    purpose: str = field(compare=False)
    grant: tuple[str, ...] = field(compare=False)  # (resource, actions...) or () for none
    grant_ttl: int = field(compare=False, default=1800)
    requests: list[tuple[float, str, str]] = field(compare=False, default_factory=list)


class Clock:
    now = float(MONDAY)

    def __call__(self) -> float:
        return self.now


@dataclass
class Counts:
    checks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    detections: Counter[str] = field(default_factory=Counter)
    busiest: dict[str, dict[str, int]] = field(default_factory=dict)

    def detected(self, detector: str, kind: str, response: str) -> None:
        self.detections[f"{detector}/{kind}"] += 1

    def acted(self, action: str, ok: bool) -> None:
        return None

    def contained(self, seconds: float) -> None:
        return None

    def windows_failed(self) -> None:
        return None

    def saw(self, d: Decision) -> None:
        self.checks += 1
        self.outcomes[str(d.reason)] += 1
        if d.chain is None or d.risk is None:
            return
        row = self.busiest.setdefault(d.chain.actor, Counter())
        for name in ("patients", "user_patients", "rate", "denials", "token_denials"):
            row[name] = max(row[name], getattr(d.risk, name))


def plan(days: int, rng: random.Random) -> list[Task]:
    tasks: list[Task] = []
    for day in range(days):
        midnight = MONDAY + day * 86400
        if day % 7 < 5:
            tasks += _clinic(midnight, rng)
        tasks += _admissions(midnight, rng)
        tasks += _billing(midnight, rng)
    return sorted(tasks)


def _clinic(midnight: float, rng: random.Random) -> list[Task]:
    tasks, at = [], midnight + 8 * 3600 + rng.uniform(0, 900)
    for visit in range(rng.randint(16, 20)):
        patient = f"p-{rng.randint(1000, 99999)}"
        chain = ("orchestrator", "scribe") if visit % 3 == 0 else ("scribe",)
        task = Task(
            at, "dr-alice", chain, DOCUMENTATION, (f'Patient::"{patient}"', "read", "write")
        )
        t = at + 60
        for _ in range(rng.randint(2, 3)):
            task.requests.append((t, "GET", f"/patients/{patient}/records"))
            t += rng.uniform(60, 300)
        for _ in range(rng.randint(1, 2)):
            task.requests.append((t, "POST", f"/patients/{patient}/notes"))
            t += rng.uniform(30, 120)
        tasks.append(task)
        at += rng.uniform(20 * 60, 27 * 60)
    for _ in range(rng.randint(1, 2)):  # reaching for a chart it holds no grant for
        when = midnight + rng.uniform(9 * 3600, 16 * 3600)
        stray = Task(when, "dr-alice", ("scribe",), DOCUMENTATION, ())
        stray.requests.append((when, "GET", f"/patients/p-{rng.randint(1000, 99999)}/records"))
        tasks.append(stray)
    return tasks


def _admissions(midnight: float, rng: random.Random) -> list[Task]:
    tasks = []
    for _ in range(rng.randint(6, 10)):
        at, patient = midnight + rng.uniform(0, 86000), f"p-{rng.randint(1000, 99999)}"
        task = Task(at, "dr-alice", ("med-reconciler",), RECONCILIATION,
                    (f'Patient::"{patient}"', "read"), 900)  # fmt: skip
        for i in range(rng.randint(2, 4)):
            task.requests.append((at + 30 + i * rng.uniform(60, 180), "GET",
                                  f"/patients/{patient}/medications"))  # fmt: skip
        tasks.append(task)
    return tasks


def _billing(midnight: float, rng: random.Random) -> list[Task]:
    tasks, at = [], midnight + 3600
    for _ in range(rng.randint(30, 50)):
        claim = f"c-{rng.randint(10000, 99999)}"
        task = Task(at, "bob", ("billing-bot",), "billing", (f'Claim::"{claim}"', "read"), 600)
        task.requests.append((at + 5, "GET", f"/claims/{claim}"))
        tasks.append(task)
        at += rng.uniform(60, 110)
    return tasks


async def simulate(days: int, rng: random.Random) -> Counts:
    clock, counts, issuer = Clock(), Counts(), DemoIssuer("ES256", kid="bench-fp")
    bundle = policy_load.load(ROOT / "policies")
    agents = EmbeddedAgentStore()
    await seed(agents, bundle.agents, int(clock()))
    scribe = await agents.get_agent("scribe")
    assert scribe is not None
    await agents.put_agent(dataclasses.replace(scribe, hours="Mon-Fri 07:00-19:00"))
    grants, windows = EmbeddedGrantStore(clock), EmbeddedWindows(clock)
    responder = Responder(settings=SETTINGS, windows=windows, agents=agents, grants=grants,
                          audit=NullAudit(), observer=counts, clock=clock)  # fmt: skip
    monitor = Monitor(SETTINGS, windows, responder, StoreRegistry(agents), counts, clock)
    keys = jwks.StaticKeys(
        jwks.parse_jwks(json.dumps({"keys": [issuer.public_jwk]}), ("ES256",), "fp")
    )
    pipeline = assemble(ident=IdentitySettings(), keys=keys, bundle=bundle,
                        registry=StoreRegistry(agents), store=grants, audit=NullAudit(),
                        clock=clock, detect=monitor)  # fmt: skip
    requests: list[tuple[float, str, str, str]] = []
    for n, task in enumerate(plan(days, rng)):
        if task.grant:
            resource, *actions = task.grant
            await grants.put(Grant(f"g-{n}", task.agents[-1], task.user, tuple(actions),
                                   (resource,), task.purpose, "dr-alice", int(task.at),
                                   int(task.at) + task.grant_ttl))  # fmt: skip
        for at, method, path in task.requests:
            iat = int(at - rng.uniform(0, 60))
            token = issuer.access_token(task.user, list(task.agents), purpose=task.purpose,
                                        iat=iat, exp=iat + 600)  # fmt: skip
            requests.append((at, method, path, token))
    for at, method, path, token in sorted(requests):
        clock.now = at
        decision = await pipeline.check(
            CheckInput(method, path, "ehr", {"authorization": [f"Bearer {token}"]})
        )
        counts.saw(decision)
        await monitor.flush()
        await responder.drain()
    return counts


def report(counts: Counts, days: int) -> str:
    s = SETTINGS
    fired = sum(counts.detections.values())
    lines = [
        "# False positives of the default detectors",
        "",
        f"{days} simulated days of the hospital's normal work: {counts.checks} checks "
        f"({', '.join(f'{n} {r}' for r, n in counts.outcomes.most_common())}).",
        "",
        f"Detections: {fired} ({fired / max(counts.checks, 1):.4%} of checks)"
        + (": " + ", ".join(f"{n} {k}" for k, n in counts.detections.items()) if fired else "."),
        "",
        "Busiest value each agent reached, against the line it would have to cross:",
        "",
        "| agent | patients in 10 min | per user | rate (baselines) | denials / min | per token |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for agent, row in sorted(counts.busiest.items()):
        lines.append(
            f"| {agent} | {row['patients']} / {s.breadth_patients} | {row['user_patients']} "
            f"/ {s.breadth_user_patients or 'off'} | {row['rate']} / {s.rate_factor} | "
            f"{row['denials']} / {s.probing_denials} | {row['token_denials']} / "
            f"{s.probing_token_denials} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    counts = asyncio.run(simulate(args.days, random.Random(args.seed)))
    print(report(counts, args.days))
    if args.json:
        result: dict[str, Any] = {
            "days": args.days, "checks": counts.checks, "outcomes": dict(counts.outcomes),
            "detections": dict(counts.detections), "busiest": counts.busiest,
        }  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
