"""Approval scenarios run in process: the server's access requests and pipeline, minus gRPC.

Each scenario gets a fresh pipeline (`server.offline`), embedded grant and
request stores and a memory audit sink; its token is minted with the
throwaway key `server.offline` trusts. See `access.scenarios` for the file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.access import requests as requests_module
from authz.access import scenarios
from authz.access.requests import AccessRequests
from authz.check.delegation import act_claim
from authz.config import AccessSettings, GrantsSettings, IdentitySettings
from authz.errors import AccessRequestError, LasthopError
from authz.model import CheckInput, split_target
from authz.policy.load import PolicyBundle
from authz.policy.scenarios import ScenarioResult
from authz.server import offline
from authz.stores.embedded import SeededRegistry
from authz.stores.requests import EmbeddedAccessStore


def run_scenarios(
    bundle: PolicyBundle,
    ident: IdentitySettings,
    path: Path,
    selected: Callable[[str], bool] = lambda _: True,
) -> list[ScenarioResult]:
    if bundle.approval is None or not path.exists():
        return []
    signer = offline.ClaimsSigner(ident)
    alerts = logging.getLogger(requests_module.__name__)
    level = alerts.level
    alerts.setLevel(logging.ERROR)  # a scenario's break-glass is no operator's alert
    try:
        return [_run(bundle, ident, signer, s) for s in scenarios.load(path) if selected(s["name"])]
    finally:
        alerts.setLevel(level)


def _run(
    bundle: PolicyBundle,
    ident: IdentitySettings,
    signer: offline.ClaimsSigner,
    scenario: dict[str, Any],
) -> ScenarioResult:
    now = time.time()
    env = offline.build(bundle, ident, signer.keys, clock=lambda: now)
    requests = AccessRequests(
        store=EmbeddedAccessStore(lambda: now),
        grants=env.store,
        registry=SeededRegistry(bundle.agents),
        bundle=lambda: bundle,
        audit=env.audit,
        settings=AccessSettings(),
        max_ttl=GrantsSettings().max_ttl,
        tiers=env.pipeline.options.tiers,
        clock=lambda: now,
    )
    claims = scenarios.claims_of(scenario)
    act = act_claim(scenario.get("agents", []))
    token = signer.token({**claims, "act": act} if act else claims, now)
    headers = {"authorization": [f"Bearer {token}"]}

    async def go() -> tuple[str, str]:
        caller = await env.pipeline.identify(CheckInput("", "", "", headers))
        made = await requests.request(caller, scenarios.ask_of(scenario))
        got = scenarios.describe(made, scenario)
        if made.status == "approved" and scenario.get("check"):
            method, _, target = str(scenario["check"]).partition(" ")
            check = CheckInput(method, split_target(target)[0], "ehr.internal", headers)
            decision = await env.pipeline.check(check)
            if not decision.allowed:
                got += f", but `{scenario['check']}` was denied {decision.reason}"
        return got, made.detail

    try:
        got, detail = asyncio.run(go())
    except AccessRequestError as err:
        got, detail = f"error {err.code}", err.detail
    except LasthopError as err:
        got, detail = f"error {err.reason}", err.detail
    return scenarios.result(scenario, got, detail)
