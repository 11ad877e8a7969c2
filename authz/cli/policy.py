"""`lasthop policy validate|test` and `lasthop check`: the policy author's commands.

Exit codes: 0 success (or allow, for `check`), 1 a failed test, a
formatting difference or a deny, 2 bad input (printed by cli.main).
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cedarpy

from authz import config
from authz.check import delegation, grants, mcp
from authz.check import keys as jwks
from authz.check.identity import bearer_token
from authz.errors import LasthopError, ScenarioError, UsageError
from authz.model import CheckInput, Decision, Grant, RiskTiers
from authz.policy import fixtures as policy_fixtures
from authz.policy import load as policy_load
from authz.policy.scenarios import SCENARIO_FILE
from authz.server import offline


def add_commands(sub: Any) -> None:
    pol = sub.add_parser("policy", help="validate and test a policy directory").add_subparsers(
        dest="policy_command", required=True
    )
    validate = pol.add_parser(
        "validate",
        help="parse and validate schema, policies, entities "
        "and routes; every error names its file and line",
    )
    validate.add_argument("dir", nargs="?", default="policies")
    validate.add_argument(
        "--format",
        action="store_true",
        help="also check that every .cedar file is in Cedar's format",
    )
    validate.set_defaults(func=cmd_validate)

    test = pol.add_parser("test", help="run the ALLOW/DENY fixtures and the scenarios")
    test.add_argument("dir", nargs="?", default="policies")
    test.add_argument("--config", help="take identity settings from this config")
    test.add_argument("--junit", type=Path, help="write a JUnit XML report here")
    test.set_defaults(func=cmd_test)

    check = sub.add_parser("check", help="evaluate one request offline and explain it")
    check.add_argument("--config", required=True)
    who = check.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="a bearer token, verified against identity.jwks")
    who.add_argument("--claims", help="token claims as JSON (signature not checked)")
    check.add_argument("--method", help="default: POST with --tool or --body")
    check.add_argument("--path", required=True, help="e.g. /patients/p-1001/records, or /mcp")
    body = check.add_mutually_exclusive_group()
    body.add_argument("--tool", help="an MCP tool call: its name (POST to --path as JSON-RPC)")
    body.add_argument("--body", help="the request body as Envoy would send it; @FILE reads a file")
    check.add_argument(
        "--arguments", default="{}", help='the tool\'s arguments as JSON: {"patient_id": "p-1001"}'
    )
    check.add_argument("--header", action="append", default=[], help="NAME:VALUE, repeatable")
    check.add_argument(
        "--grant",
        action="append",
        default=[],
        help='grant as JSON: {"actions": [...], "resources": [...], "purpose": '
        '..., "agent"?, "user"?, "ttl"?, "max_uses"?}; repeatable',
    )
    check.add_argument("--output", choices=("text", "json"), default="text")
    check.set_defaults(func=cmd_check)


def cmd_validate(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    bundle = policy_load.load(directory)
    print(
        f"ok: {len(bundle.policies)} policies "
        f"({sum(p.mode == 'shadow' for p in bundle.policies.values())} shadow), "
        f"{len(bundle.agents)} agents, {len(bundle.routes.routes)} routes, "
        f"{sum(len(e.tools) for e in bundle.routes.mcp.values())} MCP tools, "
        f"version {bundle.version}"
    )
    if not args.format:
        return 0
    unformatted = [
        p
        for p in sorted(directory.glob("*.cedar"))
        if cedarpy.format_policies(p.read_text(encoding="utf-8")) != p.read_text()
    ]
    for path in unformatted:
        print(f"{path}: not in Cedar format (see cedarpy.format_policies)")
    return 1 if unformatted else 0


def cmd_test(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    bundle = policy_load.load(directory)
    ident = config.load(args.config).identity if args.config else config.IdentitySettings()
    rows: list[tuple[str, str, bool, str]] = []  # (suite, name, passed, message)
    for fixture in policy_fixtures.run_all(bundle, directory / "tests"):
        rows.append(
            (
                "fixtures",
                f"{fixture.path.parent.name}/{fixture.path.stem}",
                fixture.passed,
                f"expected {fixture.expected}, got {fixture.got}",
            )
        )
    try:
        scenarios = offline.run_scenarios(bundle, ident, directory / "tests" / SCENARIO_FILE)
    except ScenarioError as err:
        raise UsageError(str(err)) from err
    for scenario in scenarios:
        rows.append(
            (
                "scenarios",
                scenario.name,
                scenario.passed,
                f"expected {scenario.expected}, got {scenario.got}: {scenario.detail}",
            )
        )
    if not rows:
        raise UsageError(f"no fixtures under {directory / 'tests'} and no {SCENARIO_FILE}")
    for suite, name, passed, message in rows:
        print(
            f"{'PASS' if passed else 'FAIL'}  {suite:<9} {name}"
            + ("" if passed else f"\n      {message}")
        )
    failed = sum(not r[2] for r in rows)
    print(f"\n{len(rows) - failed} passed, {failed} failed")
    if args.junit:
        _write_junit(args.junit, rows)
    return 1 if failed else 0


def _write_junit(path: Path, rows: list[tuple[str, str, bool, str]]) -> None:
    root = ET.Element("testsuites")
    for suite_name in ("fixtures", "scenarios"):
        cases = [r for r in rows if r[0] == suite_name]
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"lasthop.{suite_name}",
            tests=str(len(cases)),
            failures=str(sum(not r[2] for r in cases)),
        )
        for _, name, passed, message in cases:
            case = ET.SubElement(suite, "testcase", classname=f"lasthop.{suite_name}", name=name)
            if not passed:
                ET.SubElement(case, "failure", message=message).text = message
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def cmd_check(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    bundle = policy_load.load(settings.path(settings.policies.dir))
    now = time.time()
    if args.token:
        keys: jwks.KeySource = jwks.load(
            settings.identity.jwks, settings.base_dir, settings.identity.algorithms, 3600
        )
        token, source = args.token.removeprefix("Bearer "), "verified against identity.jwks"
    else:
        signer = offline.ClaimsSigner(settings.identity)
        keys, token = signer.keys, signer.token(_json_object(args.claims, "--claims"), now)
        source = "claims given on the command line (signature not checked)"
    env = offline.build(
        bundle,
        settings.identity,
        keys,
        clock=lambda: now,
        dry_run=settings.policies.mode == "dry-run",
        tiers=RiskTiers(settings.registry.medium_risk_from, settings.registry.high_risk_from),
    )
    user, actor = _chain_of(env, token)
    held = [_grant(spec, i, user, actor, int(now)) for i, spec in enumerate(args.grant)]
    headers = {"authorization": [f"Bearer {token}"]}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise UsageError(f"--header `{item}` is not NAME:VALUE")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    body = _body_of(args)
    method = args.method or ("POST" if body is not None else "")
    if not method:
        raise UsageError("--method is required unless --tool or --body is given")
    request = offline.request_of(method.upper(), args.path, "lasthop-check", headers, body)
    decision = offline.run_check(env, request, held)
    report = _explain(decision, request, held, source, bundle, now)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0 if decision.allowed else 1


def _body_of(args: argparse.Namespace) -> bytes | None:
    """The body `--tool`/`--arguments` or `--body` describe; None when neither is given."""
    if args.tool:
        return mcp.call_body(args.tool, _json_object(args.arguments, "--arguments"))
    if args.arguments != "{}":
        raise UsageError("--arguments needs --tool")
    if args.body is None:
        return None
    if args.body.startswith("@"):
        try:
            return Path(args.body[1:]).read_bytes()
        except OSError as err:
            raise UsageError(f"--body `{args.body}`: {err.strerror}") from err
    return str(args.body).encode("utf-8")


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UsageError(f"{option} is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object")
    return value


def _chain_of(env: offline.Offline, token: str) -> tuple[str, str]:
    """(user, current actor) for defaulting grants; empty when the token does not verify."""
    try:
        claims = env.pipeline.verifier.verify(bearer_token([f"Bearer {token}"]))
        chain = delegation.read_chain(claims, env.pipeline.options.max_chain_depth)
    except LasthopError:
        return "", ""
    return chain.user, chain.actor


def _grant(spec_text: str, index: int, user: str, actor: str, now: int) -> Grant:
    try:
        spec = json.loads(spec_text)
        return Grant(
            id=f"g-check-{index}",
            agent=spec.get("agent", actor),
            user=spec.get("user", user),
            actions=tuple(spec["actions"]),
            resources=tuple(spec["resources"]),
            purpose=spec["purpose"],
            issued_by="lasthop-check",
            issued_at=now,
            expires_at=now + int(spec.get("ttl", 900)),
            max_uses=int(spec.get("max_uses", 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UsageError(
            f"--grant `{spec_text}`: needs JSON with actions, resources and purpose ({err})"
        ) from err


def _explain(
    d: Decision,
    req: CheckInput,
    held: list[Grant],
    source: str,
    bundle: policy_load.PolicyBundle,
    now: float,
) -> dict[str, Any]:
    route = d.route
    considered = []
    for g in held:
        covers = route is not None and grants.covers(g, route)
        considered.append(
            {
                "id": g.id,
                "agent": g.agent,
                "user": g.user,
                "actions": list(g.actions),
                "resources": list(g.resources),
                "purpose": g.purpose,
                "covers": covers,
                "live": g.expires_at > now,
                "purpose_matches": d.intent is not None and g.purpose == d.intent.purpose,
                "selected": d.grant is not None and d.grant.id == g.id,
            }
        )
    effects = {info.id: info.effect for info in bundle.policies.values()}
    return {
        "request": {"method": req.method, "path": req.path},
        "token": source,
        "chain": (
            {
                "user": d.chain.user,
                "agents": list(d.chain.agents),
                "actor": d.chain.actor,
                "rendered": d.chain.render(),
            }
            if d.chain
            else None
        ),
        "intent": (
            {"purpose": d.intent.purpose, "txn": d.intent.txn, "source": d.intent.source}
            if d.intent
            else None
        ),
        "route": (
            {
                "template": route.template,
                "action": route.action,
                "resource": str(route.resource),
                "parents": [str(p) for p in route.parents],
                "phi": route.phi,
                "tool": route.mcp.tool if route.mcp else "",
            }
            if route
            else None
        ),
        "grants": considered,
        "cedar_request": d.cedar,
        "policies": [{"id": p, "effect": effects.get(p, "?")} for p in d.policies],
        "shadow": [{"policy": p, "effect": e} for p, e in d.shadow],
        "decision": "allow" if d.allowed else "deny",
        "status": d.status,
        "reason": d.reason,
        "detail": d.detail,
        "policy_version": bundle.version,
    }


def _print_report(r: dict[str, Any]) -> None:
    print(f"request    {r['request']['method']} {r['request']['path']}")
    print(f"token      {r['token']}")
    chain, intent = r["chain"], r["intent"]
    print(
        "chain      " + (f"{chain['rendered']} (current actor: {chain['actor']})" if chain else "-")
    )
    print(
        "intent     "
        + (
            f"purpose={intent['purpose']} txn={intent['txn']} (from {intent['source']})"
            if intent
            else "-"
        )
    )
    route = r["route"]
    if route:
        parents = f" in {', '.join(route['parents'])}" if route["parents"] else ""
        print(
            f"route      {route['template']} -> {route['action']} on {route['resource']}{parents}"
            f"{' (PHI: needs a grant)' if route['phi'] else ''}"
        )
    else:
        print("route      -")
    if not r["grants"]:
        print("grants     none given")
    for g in r["grants"]:
        marks = [k for k in ("covers", "live", "purpose_matches", "selected") if g[k]]
        print(
            f"grant      {g['id']}: {g['agent']} for {g['user']}, {','.join(g['actions'])} on "
            f"{' '.join(g['resources'])} for {g['purpose']}  [{', '.join(marks) or 'no match'}]"
        )
    if r["cedar_request"]:
        print(f"cedar      {json.dumps(r['cedar_request'], sort_keys=True)}")
    policies = ", ".join(f"{p['id']} ({p['effect']})" for p in r["policies"]) or "none"
    print(f"policies   {policies}")
    if r["shadow"]:
        print("shadow     " + ", ".join(f"{s['policy']} ({s['effect']})" for s in r["shadow"]))
    verdict = "ALLOW" if r["decision"] == "allow" else f"DENY {r['status']}"
    print(f"decision   {verdict} {r['reason']}: {r['detail']}")
