"""What every admin-API command shares: where the API is, the token (from a file or the
environment, never argv), and `--output`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from authz import config
from authz.cli.admin_client import AdminClient, ClientTls
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
    common.add_argument(
        "--admin-ca",
        help="CA certificate (PEM) of a TLS admin listener (else LASTHOP_ADMIN_CA); "
        "a grpcs:// URL without one uses the system's CAs",
    )
    common.add_argument(
        "--admin-cert", help="client certificate (PEM) for mTLS (else LASTHOP_ADMIN_CERT)"
    )
    common.add_argument("--admin-key", help="its private key (PEM) (else LASTHOP_ADMIN_KEY)")
    common.add_argument("--config", help="read server.admin_listen from this config")
    add_output(common)
    return common


def admin_address(args: argparse.Namespace) -> str:
    if args.admin_url:
        return str(args.admin_url)
    if os.environ.get("LASTHOP_ADMIN_URL"):
        return os.environ["LASTHOP_ADMIN_URL"]
    if args.config:
        server = config.load(args.config).server
        return f"grpcs://{server.admin_listen}" if server.admin_tls_cert else server.admin_listen
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
    address = admin_address(args)
    secure = address.startswith(("grpcs://", "https://"))
    for scheme in ("grpcs://", "https://", "grpc://", "http://"):
        address = address.removeprefix(scheme)
    return AdminClient(address, token, client_tls(args, secure))


def client_tls(args: argparse.Namespace, secure: bool) -> ClientTls | None:
    """TLS settings from the flags, else the environment; None for a plaintext channel."""
    ca = _pem(getattr(args, "admin_ca", None), "--admin-ca", "LASTHOP_ADMIN_CA")
    cert = _pem(getattr(args, "admin_cert", None), "--admin-cert", "LASTHOP_ADMIN_CERT")
    key = _pem(getattr(args, "admin_key", None), "--admin-key", "LASTHOP_ADMIN_KEY")
    if bool(cert) != bool(key):
        raise UsageError("--admin-cert and --admin-key go together")
    if not (secure or ca or cert):
        return None
    return ClientTls(ca=ca, cert=cert, key=key)


def _pem(value: str | None, flag: str, env: str) -> bytes | None:
    path = value or os.environ.get(env, "")
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{flag}: cannot read `{path}`: {err.strerror}") from None


def message_dict(message: Any) -> dict[str, object]:
    result: dict[str, object] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result
