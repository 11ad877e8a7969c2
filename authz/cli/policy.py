"""`lasthop policy validate|test` and `lasthop check`: the policy author's commands.

Exit codes (`authz.cli.conventions`): 0 success (or allow, for `check`), 1 a
failed test, a file `fmt --check` would change, or a deny; 2 bad input,
including a malformed fixture or scenario (named with its file).
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import cedarpy

from authz import config
from authz.access import fixtures as approval_fixtures
from authz.check import delegation, grants, mcp
from authz.check import keys as jwks
from authz.check.identity import bearer_token
from authz.cli.conventions import Exit, add_output, print_json, read_secret
from authz.errors import LasthopError, UsageError
from authz.model import CheckInput, Decision, Grant, RiskTiers
from authz.policy import fixtures as policy_fixtures
from authz.policy import load as policy_load
from authz.policy.approval import APPROVAL_DIR
from authz.policy.scenarios import SCENARIO_FILE
from authz.server import offline, offline_access


def add_commands(sub: Any) -> None:
    pol = sub.add_parser("policy", help="validate, format and test a policy directory")
    verbs = pol.add_subparsers(dest="policy_command", required=True)
    validate = verbs.add_parser(
        "validate",
        help="parse and validate schema, policies, entities "
        "and routes; every error names its file and line",
    )
    validate.add_argument("dir", nargs="?", default="policies")
    add_output(validate)
    validate.set_defaults(func=cmd_validate)

    fmt = verbs.add_parser("fmt", help="rewrite every .cedar file in Cedar's own format")
    fmt.add_argument("dir", nargs="?", default="policies")
    fmt.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file would change"
    )
    add_output(fmt)
    fmt.set_defaults(func=cmd_fmt)

    test = verbs.add_parser(
        "test",
        help="run the ALLOW/DENY fixtures and the scenarios, and the approval policies' "
        "APPROVE/PERSON/REFUSE fixtures and scenarios",
    )
    test.add_argument("dir", nargs="?", default="policies")
    test.add_argument("--config", help="take identity settings from this config")
    test.add_argument(
        "-k", dest="pattern", default="", help="run only tests whose name contains PATTERN"
    )
    test.add_argument("--junit", type=Path, help="write a JUnit XML report here")
    add_output(test)
    test.set_defaults(func=cmd_test)

    check = sub.add_parser("check", help="evaluate one request offline and explain it")
    check.add_argument("--config", help="identity settings and policies.dir from this config")
    check.add_argument(
        "--policies", help="the policy directory (default: the config's policies.dir)"
    )
    who = check.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="a bearer token, verified against identity.jwks")
    who.add_argument(
        "--token-file", help="a file holding the bearer token (- for stdin), kept off argv"
    )
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
    add_output(check)
    check.set_defaults(func=cmd_check)


def cmd_validate(args: argparse.Namespace) -> int:
    bundle = policy_load.load(Path(args.dir))
    summary = {
        "policies": len(bundle.policies),
        "shadow": sum(p.mode == "shadow" for p in bundle.policies.values()),
        "agents": len(bundle.agents),
        "routes": len(bundle.routes.routes),
        "mcp_tools": sum(len(e.tools) for e in bundle.routes.mcp.values()),
        "approval_policies": bundle.approval.count if bundle.approval else 0,
        "approval_shadow": len(bundle.approval.shadow) if bundle.approval else 0,
        "version": bundle.version,
    }
    if args.output == "json":
        print_json({"ok": True, **summary})
        return 0
    print(
        f"ok: {summary['policies']} policies ({summary['shadow']} shadow), "
        f"{summary['approval_policies']} approval policies ({summary['approval_shadow']} shadow), "
        f"{summary['agents']} agents, {summary['routes']} routes, "
        f"{summary['mcp_tools']} MCP tools, version {summary['version']}"
    )
    return 0


def cmd_fmt(args: argparse.Namespace) -> int:
    """Cedar's formatter over every .cedar file; `--check`: report, exit 1, change nothing."""
    directory = Path(args.dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"`{directory}`: no such policy directory")
    changed = []
    for path in sorted(directory.rglob("*.cedar")):
        text = path.read_text(encoding="utf-8")
        try:
            formatted = cedarpy.format_policies(text)
        except ValueError as err:
            raise UsageError(
                f"{path}: cannot format: {err} (run `lasthop policy validate`)"
            ) from None
        if formatted != text:
            changed.append(path)
            if not args.check:
                path.write_text(formatted, encoding="utf-8")
    if args.output == "json":
        print_json({"changed": [str(p) for p in changed], "check": args.check})
    for path in changed if args.output == "text" else ():
        print(f"{path}: {'would reformat' if args.check else 'reformatted'}")
    return Exit.NO if changed and args.check else Exit.OK


def cmd_test(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    bundle = policy_load.load(directory)
    ident = config.load(args.config).identity if args.config else config.IdentitySettings()
    pattern = args.pattern.lower()

    def selected(name: str) -> bool:
        return pattern in name.lower()

    rows: list[Row] = []
    covered: set[str] = set()
    for fixture in policy_fixtures.run_all(bundle, directory / "tests", selected):
        message = f"expected {fixture.expected}, got {fixture.got}"
        rows.append(Row("fixtures", policy_fixtures.name(fixture.path), fixture.passed, message))
        covered.update(fixture.policies)
    scenario_file = directory / "tests" / SCENARIO_FILE
    reached: set[str] = set()
    for scenario in offline.run_scenarios(bundle, ident, scenario_file, selected):
        message = f"expected {scenario.expected}, got {scenario.got}: {scenario.detail}"
        rows.append(Row("scenarios", scenario.name, scenario.passed, message))
        covered.update(scenario.policies)
        reached.add(scenario.route)
    rows.extend(_approval_rows(bundle, ident, directory / APPROVAL_DIR / "tests", selected))
    if not rows:
        raise UsageError(
            f"no test matches `{args.pattern}`"
            if pattern
            else f"no fixtures under {directory / 'tests'} and no {SCENARIO_FILE}"
        )
    coverage = _coverage(bundle, covered, reached)
    if args.junit:
        _write_junit(args.junit, rows)
    failed = sum(not r.passed for r in rows)
    if args.output == "json":
        tests = [r._asdict() for r in rows]
        print_json(
            {"passed": len(rows) - failed, "failed": failed, "tests": tests, "coverage": coverage}
        )
    else:
        _print_tests(rows, coverage, partial=bool(pattern))
    return Exit.NO if failed else Exit.OK


def _approval_rows(
    bundle: policy_load.PolicyBundle,
    ident: config.IdentitySettings,
    tests: Path,
    selected: Callable[[str], bool],
) -> list[Row]:
    """The approval policies' fixtures and scenarios (`approval/tests/`)."""
    rows = []
    for fixture in approval_fixtures.run_all(bundle, tests):
        name = policy_fixtures.name(fixture.path)
        if selected(name):
            message = f"expected {fixture.expected}, got {fixture.got}"
            rows.append(Row("approval", name, fixture.passed, message))
    for scenario in offline_access.run_scenarios(bundle, ident, tests / SCENARIO_FILE, selected):
        message = f"expected {scenario.expected}, got {scenario.got}: {scenario.detail}"
        rows.append(Row("approval-scenarios", scenario.name, scenario.passed, message))
    return rows


class Row(NamedTuple):
    suite: str
    name: str
    passed: bool
    message: str


def _coverage(
    bundle: policy_load.PolicyBundle, covered: set[str], reached: set[str]
) -> dict[str, list[str]]:
    """What no test exercised: policies that never decided (or held, for shadow ones) and
    routes no scenario reached."""
    routes = [f"{r.method} {r.template}" for r in bundle.routes.routes]
    policies = sorted(info.id for info in bundle.policies.values())
    return {
        "policies_never_exercised": [p for p in policies if p not in covered],
        "routes_never_exercised": [r for r in routes if r not in reached],
        "policies": policies,
        "routes": routes,
    }


def _print_tests(rows: list[Row], coverage: dict[str, list[str]], partial: bool) -> None:
    for row in rows:
        print(
            f"{'PASS' if row.passed else 'FAIL'}  {row.suite:<9} {row.name}"
            + ("" if row.passed else f"\n      {row.message}")
        )
    failed = sum(not r.passed for r in rows)
    print(f"\n{len(rows) - failed} passed, {failed} failed")
    never, routes = coverage["policies_never_exercised"], coverage["routes_never_exercised"]
    scope = " (of the tests selected)" if partial else ""
    print(
        f"coverage{scope}: {len(coverage['policies']) - len(never)} of "
        f"{len(coverage['policies'])} policies decided a test"
        + (f"; never: {', '.join(never)}" if never else "")
        + f"; {len(coverage['routes']) - len(routes)} of {len(coverage['routes'])} routes "
        "reached by a scenario" + (f"; never: {', '.join(routes)}" if routes else "")
    )


def _write_junit(path: Path, rows: list[Row]) -> None:
    root = ET.Element("testsuites")
    for suite_name in dict.fromkeys(r.suite for r in rows):
        cases = [r for r in rows if r.suite == suite_name]
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"lasthop.{suite_name}",
            tests=str(len(cases)),
            failures=str(sum(not r.passed for r in cases)),
        )
        for _, name, passed, message in cases:
            case = ET.SubElement(suite, "testcase", classname=f"lasthop.{suite_name}", name=name)
            if not passed:
                ET.SubElement(case, "failure", message=message).text = message
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def cmd_check(args: argparse.Namespace) -> int:
    if not args.config and not args.policies:
        raise UsageError("name the policies: --policies DIR, or --config FILE")
    settings = config.load(args.config) if args.config else config.load(None)
    directory = Path(args.policies) if args.policies else settings.path(settings.policies.dir)
    bundle = policy_load.load(directory)
    now = time.time()
    if args.token or args.token_file:
        if not args.config:
            raise UsageError("--token is verified against identity.jwks: pass --config too")
        keys: jwks.KeySource = jwks.load(settings.identity, settings.base_dir)
        raw = args.token or read_secret(args.token_file, "", "", "token")
        token, source = raw.removeprefix("Bearer "), "verified against identity.jwks"
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
