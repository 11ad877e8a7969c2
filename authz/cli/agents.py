"""`lasthop agents register|list|show|update|suspend|resume|deregister` over the admin API."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from authz._proto import agents_pb2 as pb
from authz.cli.admin import admin_client, admin_options, message_dict


def add_commands(sub: Any) -> None:
    agents = sub.add_parser("agents", help="the agent registry").add_subparsers(
        dest="agents_command", required=True
    )
    common = admin_options()

    register = agents.add_parser("register", parents=[common], help="register an agent")
    register.add_argument("agent_id")
    register.add_argument("--owner", required=True, help="the accountable human")
    register.add_argument("--risk", type=int, required=True, help="0 to 100")
    register.add_argument(
        "--purpose", action="append", default=[], help="a purpose it may act for; repeatable"
    )
    register.add_argument("--description", default="")
    register.add_argument(
        "--spiffe-id", default="", help="the workload it runs as, e.g. spiffe://td/ns/x/sa/y"
    )
    register.add_argument("--hours", default="", help='working hours, e.g. "Mon-Fri 07:00-19:00"')
    register.set_defaults(func=cmd_register)

    lst = agents.add_parser("list", parents=[common], help="list agents")
    lst.add_argument("--owner", default="")
    lst.add_argument("--status", choices=("", "active", "suspended"), default="")
    lst.set_defaults(func=cmd_list)

    update = agents.add_parser("update", parents=[common], help="change an agent's fields")
    update.add_argument("agent_id")
    update.add_argument("--owner")
    update.add_argument("--risk", type=int)
    update.add_argument("--description")
    update.add_argument("--spiffe-id", help='its workload\'s SPIFFE ID; "" removes it')
    update.add_argument("--hours", help='working hours; "" clears them')
    update.add_argument(
        "--purpose", action="append", help="replaces the allowed purposes; repeatable"
    )
    update.add_argument("--clear-purposes", action="store_true")
    update.set_defaults(func=cmd_update)

    for name, verb in (
        ("show", "show one agent"),
        ("suspend", "deny everything it does"),
        ("resume", "undo a suspension"),
        ("deregister", "remove it and revoke its grants"),
    ):
        one = agents.add_parser(name, parents=[common], help=verb)
        one.add_argument("agent_id")
        one.set_defaults(func=cmd_one, action=name)


def _print(agents: list[pb.Agent], output: str) -> None:
    if output == "json":
        print(json.dumps([message_dict(a) for a in agents], indent=2))
        return
    print(
        f"{'ID':<18} {'OWNER':<12} {'RISK':>4} {'TIER':<7} {'STATUS':<10} {'REGISTERED':<17} "
        f"{'BY':<14} PURPOSES"
    )
    for a in agents:
        when = (
            datetime.fromtimestamp(a.created_at, UTC).strftime("%Y-%m-%d %H:%M")
            if a.created_at
            else "-"
        )
        print(
            f"{a.id:<18} {a.owner:<12} {a.risk:>4} {a.risk_tier:<7} {a.status:<10} "
            f"{when:<17} {a.registered_by or '-':<14} {','.join(a.allowed_purposes) or '-'}"
        )


def cmd_register(args: argparse.Namespace) -> int:
    agent = admin_client(args).register_agent(
        pb.RegisterAgentRequest(
            id=args.agent_id,
            owner=args.owner,
            risk=args.risk,
            allowed_purposes=args.purpose,
            description=args.description,
            spiffe_id=args.spiffe_id,
            hours=args.hours,
        )
    )
    _print([agent], args.output)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _print(admin_client(args).list_agents(args.owner, args.status), args.output)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    request = pb.UpdateAgentRequest(id=args.agent_id)
    if args.owner is not None:
        request.owner = args.owner
    if args.risk is not None:
        request.risk = args.risk
    if args.description is not None:
        request.description = args.description
    if args.spiffe_id is not None:
        request.spiffe_id = args.spiffe_id
    if args.hours is not None:
        request.hours = args.hours
    if args.purpose is not None or args.clear_purposes:
        request.allowed_purposes.extend(args.purpose or [])
        request.set_allowed_purposes = True
    _print([admin_client(args).update_agent(request)], args.output)
    return 0


def cmd_one(args: argparse.Namespace) -> int:
    client = admin_client(args)
    call = {
        "show": client.get_agent,
        "suspend": client.suspend_agent,
        "resume": client.resume_agent,
        "deregister": client.deregister_agent,
    }[args.action]
    _print([call(args.agent_id)], args.output)
    return 0
