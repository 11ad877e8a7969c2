"""What every admin-API command shares: where the API is, the token (from a file or the
environment, never argv), and `--output`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from google.protobuf.json_format import MessageToDict

from authz import config
from authz.cli.admin_client import AdminClient
from authz.cli.conventions import add_output, read_secret
from authz.errors import UsageError


def admin_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin-url", help="admin API host:port (else LASTHOP_ADMIN_URL)")
    common.add_argument(
        "--admin-token-file",
        help="a file holding the admin bearer token, - for stdin (else "
        "LASTHOP_ADMIN_TOKEN_FILE, else LASTHOP_ADMIN_TOKEN)",
    )
    common.add_argument("--config", help="read server.admin_listen from this config")
    add_output(common)
    return common


def admin_address(args: argparse.Namespace) -> str:
    if args.admin_url:
        return str(args.admin_url)
    if os.environ.get("LASTHOP_ADMIN_URL"):
        return os.environ["LASTHOP_ADMIN_URL"]
    if args.config:
        return config.load(args.config).server.admin_listen
    raise UsageError("no admin address: pass --admin-url, set LASTHOP_ADMIN_URL, or pass --config")


def admin_client(args: argparse.Namespace) -> AdminClient:
    token = read_secret(
        args.admin_token_file, "LASTHOP_ADMIN_TOKEN_FILE", "LASTHOP_ADMIN_TOKEN", "admin token"
    )
    if not token:
        raise UsageError(
            "no admin token: pass --admin-token-file FILE, or set LASTHOP_ADMIN_TOKEN_FILE "
            "or LASTHOP_ADMIN_TOKEN"
        )
    address = admin_address(args).removeprefix("grpc://").removeprefix("http://")
    return AdminClient(address, token)


def message_dict(message: Any) -> dict[str, object]:
    result: dict[str, object] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result
