"""`lasthop access request|list|show|approve|deny|end-task`: just-in-time access over the admin API.

Tokens: `request` (and `show` or `end-task` when given one) use the agent's own
delegated token, from `--token-file`, LASTHOP_TOKEN_FILE or LASTHOP_TOKEN;
`list`, `show`, `approve`, `deny` and `end-task` otherwise use an approver's
or admin's, from `--admin-token-file`, LASTHOP_ADMIN_TOKEN_FILE or
LASTHOP_ADMIN_TOKEN. `--output json` prints one object per request (`id`,
`status`, `grant_id` once approved, and every other field).

Exit codes (`authz.cli.conventions`): 0 approved, or pending without --wait
(and every other verb that succeeds); 1 refused, denied, expired, cancelled
or still pending after --wait; 2 bad input; 3 no such request; 4 a token the
API refused, or not yours to decide; 5 the API or its store unavailable.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from authz import config
from authz._proto import access_pb2 as pb
from authz.cli.access_client import AccessClient
from authz.cli.admin import admin_address, admin_options, message_dict
from authz.cli.conventions import Exit, print_json, read_secret
from authz.errors import UsageError


def add_commands(sub: Any) -> None:
    access = sub.add_parser("access", help="request, approve and end just-in-time access")
    verbs = access.add_subparsers(dest="access_command", required=True)
    common = admin_options()
    agent = argparse.ArgumentParser(add_help=False)
    agent.add_argument(
        "--token-file",
        help="a file holding the agent's own token, - for stdin (else LASTHOP_TOKEN_FILE, "
        "else LASTHOP_TOKEN)",
    )

    ask = verbs.add_parser("request", parents=[common, agent], help="ask for a grant")
    ask.add_argument("--action", required=True)
    ask.add_argument("--resource", required=True, help='Cedar entity, e.g. Medications::"p-1001"')
    ask.add_argument("--purpose", required=True)
    ask.add_argument("--ttl", required=True, help="30s, 15m or 2h")
    ask.add_argument("--max-uses", type=int, default=0, help="0: unlimited")
    ask.add_argument("--txn", default="", help="bind the grant to this task")
    ask.add_argument("--reason", default="", help="why, in the agent's words")
    ask.add_argument("--break-glass", action="store_true", help="emergency access (needs --reason)")
    ask.add_argument("--wait", type=float, default=0, help="wait this many seconds for a person")
    ask.set_defaults(func=cmd_request)

    lst = verbs.add_parser("list", parents=[common], help="list requests you may see")
    lst.add_argument("--status", default="", help="pending, approved, refused, denied, ...")
    lst.add_argument("--user", default="")
    lst.set_defaults(func=cmd_list)

    show = verbs.add_parser("show", parents=[common, agent], help="show one request")
    show.add_argument("request_id")
    show.set_defaults(func=cmd_show)

    approve = verbs.add_parser("approve", parents=[common], help="approve a pending request")
    approve.add_argument("request_id")
    approve.add_argument("--ttl", default="", help="shorter than asked, e.g. 10m")
    approve.set_defaults(func=cmd_approve)

    deny = verbs.add_parser("deny", parents=[common], help="deny a pending request")
    deny.add_argument("request_id")
    deny.add_argument("--reason", required=True)
    deny.set_defaults(func=cmd_deny)

    end = verbs.add_parser(
        "end-task", parents=[common, agent], help="revoke every grant bound to a task"
    )
    end.add_argument("txn")
    end.set_defaults(func=cmd_end_task)


def _duration(text: str, flag: str) -> int:
    try:
        return config.parse_duration(text)
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None


def _agent_token(args: argparse.Namespace) -> str:
    return read_secret(args.token_file, "LASTHOP_TOKEN_FILE", "LASTHOP_TOKEN", "agent token")


def _admin_token(args: argparse.Namespace) -> str:
    return read_secret(
        args.admin_token_file, "LASTHOP_ADMIN_TOKEN_FILE", "LASTHOP_ADMIN_TOKEN", "admin token"
    )


def _client(args: argparse.Namespace, agent: bool) -> AccessClient:
    """A client with the agent's token (`agent`), else an approver's or admin's."""
    address = admin_address(args).removeprefix("grpc://").removeprefix("http://")
    if agent:
        token = _agent_token(args)
        if not token:
            raise UsageError(
                "no agent token: pass --token-file FILE, or set LASTHOP_TOKEN_FILE or LASTHOP_TOKEN"
            )
        return AccessClient(address, token)
    token = _admin_token(args)
    if not token:
        raise UsageError(
            "no approver or admin token: pass --admin-token-file FILE, or set "
            "LASTHOP_ADMIN_TOKEN_FILE or LASTHOP_ADMIN_TOKEN"
        )
    return AccessClient(address, token)


def _wants_agent(args: argparse.Namespace) -> bool:
    """show and end-task: the agent's token when one is given, else the admin token."""
    return bool(args.token_file or os.environ.get("LASTHOP_TOKEN_FILE")) or (
        bool(os.environ.get("LASTHOP_TOKEN")) and not _admin_token(args)
    )


def cmd_request(args: argparse.Namespace) -> int:
    if args.max_uses < 0:
        raise UsageError("--max-uses must be 0 (unlimited) or positive")
    if args.wait < 0:
        raise UsageError("--wait must be 0 or more seconds")
    client = _client(args, agent=True)
    made = client.request(
        pb.RequestAccessRequest(
            action=args.action,
            resource=args.resource,
            purpose=args.purpose,
            ttl_seconds=_duration(args.ttl, "--ttl"),
            max_uses=args.max_uses,
            txn=args.txn,
            reason=args.reason,
            break_glass=args.break_glass,
        )
    )
    if made.status == "pending" and args.wait > 0:
        made = client.get(made.id, wait=args.wait)
    _print([made], args.output, one=True)
    ok = made.status == "approved" or (made.status == "pending" and args.wait == 0)
    return Exit.OK if ok else Exit.NO


def cmd_list(args: argparse.Namespace) -> int:
    _print(_client(args, agent=False).list(args.status, args.user), args.output)
    return Exit.OK


def cmd_show(args: argparse.Namespace) -> int:
    _print([_client(args, _wants_agent(args)).get(args.request_id)], args.output, one=True)
    return Exit.OK


def cmd_approve(args: argparse.Namespace) -> int:
    ttl = _duration(args.ttl, "--ttl") if args.ttl else 0
    _print([_client(args, agent=False).approve(args.request_id, ttl)], args.output, one=True)
    return Exit.OK


def cmd_deny(args: argparse.Namespace) -> int:
    _print([_client(args, agent=False).deny(args.request_id, args.reason)], args.output, one=True)
    return Exit.OK


def cmd_end_task(args: argparse.Namespace) -> int:
    ended = _client(args, _wants_agent(args)).end_task(args.txn)
    if args.output == "json":
        print_json(message_dict(ended))
        return Exit.OK
    grants = ", ".join(ended.revoked_grants) or "none"
    requests = ", ".join(ended.cancelled_requests) or "none"
    print(f"task {ended.txn} ended: revoked grants {grants}; cancelled requests {requests}")
    return Exit.OK


def _print(requests: list[pb.AccessRequest], output: str, one: bool = False) -> None:
    if output == "json":
        found = [message_dict(r) for r in requests]
        print_json(found[0] if one else found)
        return
    for r in requests:
        print(_line(r))


def _line(r: pb.AccessRequest) -> str:
    what = (
        f"{r.agent} for {r.user}: {r.action} {r.resource} for {r.purpose}, {r.ttl_seconds} s, "
        f"{r.max_uses or 'unlimited'} uses" + (f", task {r.txn}" if r.txn else "")
    )
    flag = " BREAK-GLASS" if r.break_glass else ""
    if r.status == "approved":
        return f"{r.id} approved{flag}: grant {r.grant_id} by {r.decided_by}; {what}"
    if r.status == "pending":
        left = max(0, r.expires_at - int(time.time()))
        who = ", ".join(r.approvers) or "no one"
        return f"{r.id} pending{flag}: {who} may approve (expires in {left} s); {what}"
    return f"{r.id} {r.status}{flag}: {r.outcome}: {r.detail}; by {r.decided_by}; {what}"
