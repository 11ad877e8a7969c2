"""The demo's just-in-time access scenario, run after the grants scenario of `lasthop demo`.

The commands it shows are what each party would run (`med-reconciler$ lasthop access
...`); the demo makes the same calls through the API, while Lasthop runs.

Both are about patient p-2002, admitted after the earlier parts of the demo.

1. The medication reconciler, working on one admission (its task, `txn`), is
   denied `no_grant`; the denial names the action, resource and purpose a grant
   would need. It asks for exactly that, bound to its task; the approval
   policies approve it at once; the read succeeds; the task ends and so does
   the grant.
2. The scribe asks to file a note; policy wants the clinician it works for.
   The request waits in dr-alice's inbox until she approves it; the agent,
   waiting on it, gets the grant and files the note.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from authz._proto import access_pb2 as pb
from authz.cli.access_client import AccessClient
from authz.dev import demo
from authz.dev.tokens import DemoIssuer

PATIENT = "p-2002"  # a patient no earlier part of the demo granted anything on
MEDICATIONS = f"/patients/{PATIENT}/medications"
NOTES = f"/patients/{PATIENT}/notes"


def _show(title: str, method: str, path: str, outcome: demo.Outcome) -> demo.Outcome:
    print(f"\n- {title}\n  {method} {path}\n  -> {outcome.status} {outcome.reason}")
    return outcome


def scenario(base: str, admin_address: str, issuer: DemoIssuer) -> list[demo.Outcome]:
    """Both stories; the outcome of each request through Envoy, in order."""
    print("\nJust-in-time access: agents ask for what a task needs; policy or a person decides.")
    return [*_reconciler(base, admin_address, issuer), *_scribe(base, admin_address, issuer)]


def _reconciler(base: str, address: str, issuer: DemoIssuer) -> list[demo.Outcome]:
    txn = f"admission-{uuid.uuid4().hex[:8]}"
    token = issuer.access_token(
        "dr-alice", ["med-reconciler"], purpose="medication-reconciliation", txn=txn
    )
    outcomes = [
        _show(
            f"med-reconciler reconciles {PATIENT}'s medications at admission (task {txn}), "
            "no grant",
            "GET",
            MEDICATIONS,
            demo.request(base, "GET", MEDICATIONS, token),
        )
    ]
    needs: Any = outcomes[0].body.get("needs", {})
    print(f"     the denial says what a grant would need: {needs}")
    agent = AccessClient(address, token)
    started = time.perf_counter()
    made = agent.request(
        pb.RequestAccessRequest(
            action=needs["action"],
            resource=needs["resource"],
            purpose=needs["purpose"],
            ttl_seconds=900,
            max_uses=50,
            txn=txn,
        )
    )
    took = (time.perf_counter() - started) * 1000
    print(
        f"\nmed-reconciler$ lasthop access request --action {needs['action']} "
        f"--resource '{needs['resource']}' "
        f"--purpose {needs['purpose']} --ttl 15m --max-uses 50 --txn {txn}\n"
        f"  {made.id} {made.status} by {made.decided_by} in {took:.1f} ms: grant {made.grant_id}, "
        "bound to the task"
    )
    outcomes.append(
        _show(
            "med-reconciler retries",
            "GET",
            MEDICATIONS,
            demo.request(base, "GET", MEDICATIONS, token),
        )
    )
    ended = agent.end_task(txn)
    print(
        f"\nmed-reconciler$ lasthop access end-task {txn}\n"
        f"  revoked {', '.join(ended.revoked_grants)}"
    )
    outcomes.append(
        _show(
            "med-reconciler after its task ended",
            "GET",
            MEDICATIONS,
            demo.request(base, "GET", MEDICATIONS, token),
        )
    )
    agent.close()
    return outcomes


def _scribe(base: str, address: str, issuer: DemoIssuer) -> list[demo.Outcome]:
    token = issuer.access_token("dr-alice", ["scribe"], purpose="clinical-documentation")
    outcomes = [
        _show(
            "scribe files the visit note, no grant to write",
            "POST",
            NOTES,
            demo.request(base, "POST", NOTES, token),
        )
    ]
    needs: Any = outcomes[0].body.get("needs", {})
    agent = AccessClient(address, token)
    made = agent.request(
        pb.RequestAccessRequest(
            action=needs["action"],
            resource=needs["resource"],
            purpose=needs["purpose"],
            ttl_seconds=600,
            reason="file the note of today's visit",
        )
    )
    print(
        f"\nscribe$ lasthop access request --action write --resource '{needs['resource']}' "
        f"--purpose {needs['purpose']} --ttl 10m --wait 60\n"
        f"  {made.id} {made.status}: {', '.join(made.approvers)} may approve "
        f"(policy {', '.join(made.policies)}); the scribe waits"
    )
    waited: list[pb.AccessRequest] = []
    waiter = threading.Thread(target=lambda: waited.append(agent.get(made.id, wait=60)))
    waiter.start()
    clinician = AccessClient(address, issuer.admin_token("dr-alice", "lasthop:approver"))
    inbox = clinician.list(status="pending")
    print(
        f"\ndr-alice$ lasthop access list --status pending      # her inbox\n"
        f"  {len(inbox)} pending:"
    )
    for item in inbox:
        print(f"  {item.id}: {item.agent} asks to {item.action} {item.resource}: {item.reason}")
    approved = clinician.approve(made.id)
    print(f"\ndr-alice$ lasthop access approve {made.id}\n  grant {approved.grant_id}")
    waiter.join(65)
    got = waited[0] if waited else made
    print(f"  the scribe's wait ends: {got.status} by {got.decided_by}")
    outcomes.append(
        _show("scribe files the note", "POST", NOTES, demo.request(base, "POST", NOTES, token))
    )
    clinician.close()
    agent.close()
    return outcomes
