"""The `lasthop` command line. Errors go to stderr, and the exit code says which kind
(`authz.cli.conventions`): 2 bad usage, 3 not found, 4 refused token, 5 unavailable."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from authz import config, version
from authz._proto import grants_pb2 as pb
from authz.audit import shadow_report
from authz.cli import access as cli_access
from authz.cli import agents as cli_agents
from authz.cli import audit as cli_audit
from authz.cli import policy as cli_policy
from authz.cli import posture as cli_posture
from authz.cli.admin import admin_client, admin_options, message_dict
from authz.cli.admin_client import AdminClient
from authz.cli.conventions import HANDLED, Exit, epilog, exit_code
from authz.errors import PolicyLoadError, UsageError


def _admin(args: argparse.Namespace) -> AdminClient:
    return admin_client(args)


def _grant_dict(grant: pb.Grant) -> dict[str, object]:
    return message_dict(grant)


def _print_grants(grants: list[pb.Grant], output: str) -> None:
    if output == "json":
        print(json.dumps([_grant_dict(g) for g in grants], indent=2))
        return
    now = int(time.time())
    print(
        f"{'ID':<20} {'AGENT':<16} {'USER':<12} {'ACTIONS':<12} {'PURPOSE':<26} "
        f"{'REMAINING':>9} {'USES':>7}  RESOURCES"
    )
    for g in grants:
        uses = f"{g.uses}/{g.max_uses}" if g.max_uses else f"{g.uses}/-"
        left = max(0, g.expires_at - now)
        print(
            f"{g.id:<20} {g.agent:<16} {g.user:<12} {','.join(g.actions):<12} "
            f"{g.purpose:<26} {left // 60:>6}m{left % 60:02d}s {uses:>7}  "
            f"{' '.join(g.resources)}"
        )


def cmd_grants_issue(args: argparse.Namespace) -> int:
    try:
        ttl = config.parse_duration(args.ttl)
    except ValueError as err:
        raise UsageError(f"--ttl: {err}") from None
    if args.max_uses < 0:
        raise UsageError("--max-uses must be 0 (unlimited) or positive")
    client = _admin(args)
    grant = client.issue(
        pb.IssueGrantRequest(
            agent=args.agent,
            user=args.user,
            actions=args.action,
            resources=args.resource,
            purpose=args.purpose,
            ttl_seconds=ttl,
            max_uses=args.max_uses,
        )
    )
    if args.output == "json":
        print(json.dumps(_grant_dict(grant), indent=2))
    else:
        print(
            f"issued {grant.id}: {grant.agent} for {grant.user}, {','.join(grant.actions)} on "
            f"{' '.join(grant.resources)}, purpose {grant.purpose}, expires in {ttl} s"
        )
    return 0


def cmd_grants_revoke(args: argparse.Namespace) -> int:
    grant = _admin(args).revoke(args.grant_id)
    if args.output == "json":
        print(json.dumps(_grant_dict(grant), indent=2))
    else:
        print(f"{'already revoked' if grant.already_revoked else 'revoked'} {grant.id}")
    return 0


def cmd_grants_list(args: argparse.Namespace) -> int:
    _print_grants(_admin(args).list(args.agent, args.user), args.output)
    return 0


def cmd_grants_show(args: argparse.Namespace) -> int:
    _print_grants([_admin(args).get(args.grant_id)], args.output)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from authz.server import logs, workers
    from authz.server.app import build
    from authz.server.serve import serve

    settings = config.load(args.config)
    workers.check(settings, args.workers)
    logs.configure(settings.server)
    if args.workers > 1:
        return workers.supervise(args.config, settings, args.workers)
    return asyncio.run(serve(build(settings), shared_ports=args.worker is not None))


def cmd_demo(args: argparse.Namespace) -> int:
    from authz.dev.demo import run_demo

    return run_demo(keep_running=args.keep_running, directory=args.dir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lasthop",
        description="Point-of-use authorization for AI agents: an Envoy ext_authz sidecar.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"lasthop {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_authz, admin and metrics listeners")
    serve.add_argument("--config", required=True, help="TOML config file")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the ext_authz port, each with its own audit trail (needs Redis)",
    )
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by --workers
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run Envoy + Lasthop + the demo EHR, and walk a scenario")
    demo.add_argument("--keep-running", action="store_true", help="stay up after the scenario")
    demo.add_argument(
        "--dir",
        type=Path,
        help="write and keep everything here (new or empty; default: a new "
        "temporary directory, named at the end)",
    )
    demo.set_defaults(func=cmd_demo)

    cli_policy.add_commands(sub)
    cli_agents.add_commands(sub)
    cli_access.add_commands(sub)
    cli_posture.add_command(sub)

    audit = sub.add_parser("audit", help="verify and read the audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    cli_audit.add_commands(audit)
    shadow_report.add_command(audit)
    cli_audit.add_receipt_command(sub)

    grants = sub.add_parser("grants", help="issue, list and revoke session grants").add_subparsers(
        dest="grants_command", required=True
    )
    common = admin_options()

    issue = grants.add_parser("issue", parents=[common], help="issue a grant")
    issue.add_argument("--agent", required=True)
    issue.add_argument("--user", required=True)
    issue.add_argument("--action", action="append", required=True, help="repeatable")
    issue.add_argument(
        "--resource",
        action="append",
        required=True,
        help='Cedar entity, e.g. Patient::"p-1001"; repeatable',
    )
    issue.add_argument("--purpose", required=True)
    issue.add_argument("--ttl", required=True, help="30s, 15m or 2h")
    issue.add_argument("--max-uses", type=int, default=0, help="0: unlimited")
    issue.set_defaults(func=cmd_grants_issue)

    revoke = grants.add_parser("revoke", parents=[common], help="revoke a grant")
    revoke.add_argument("grant_id")
    revoke.set_defaults(func=cmd_grants_revoke)

    show = grants.add_parser("show", parents=[common], help="show one grant")
    show.add_argument("grant_id")
    show.set_defaults(func=cmd_grants_show)

    lst = grants.add_parser("list", parents=[common], help="list live grants")
    lst.add_argument("--agent", default="")
    lst.add_argument("--user", default="")
    lst.set_defaults(func=cmd_grants_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except PolicyLoadError as err:
        print(f"lasthop: {err}", file=sys.stderr)
        return Exit.USAGE
    except HANDLED as err:
        print(f"lasthop: {err}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
