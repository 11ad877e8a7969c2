"""`lasthop audit verify|disclosures|keygen` and `lasthop receipt verify`.

Exit codes (`authz.cli.conventions`): 0 the trail (or receipt) verifies / the
report was written; 1 it does not verify (the first broken record, or the reason,
is printed); 2 bad usage or unreadable input, 3 a file named does not exist, with
the reason on stderr. Every verb takes `--output text|json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from authz import config
from authz.audit import disclosures, receipts
from authz.audit import setup as audit_setup
from authz.audit import verify as audit_verify
from authz.audit.files import (
    by_trail,
    live_of,
    rotated_files,
    trail_files,
    worker_trail,
    worker_trails,
)
from authz.audit.signing import SigningKey, read_jwks
from authz.cli.conventions import HANDLED, Exit, add_output, exit_code, print_json
from authz.errors import JwksError, ReceiptError, UsageError

EXIT_BROKEN = Exit.NO
SHOW_BYTES = 600

Command = Callable[[argparse.Namespace], int]


def add_commands(audit: Any) -> None:
    """Register under `lasthop audit` (the subparsers of the `audit` command)."""
    verify = audit.add_parser(
        "verify", help="check every hash, the sequence and every checkpoint signature of a trail"
    )
    verify.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="the trail's live file (its rotated files are included), "
        "rotated files, or a directory of trails (default with --config: audit.path)",
    )
    _key_options(verify)
    verify.add_argument(
        "--checkpoints",
        action="append",
        type=Path,
        default=None,
        help="the anchors file (default: PATH.checkpoints when it exists)",
    )
    verify.add_argument(
        "--partial",
        action="store_true",
        help="the files may start after seq 1 (earlier files archived)",
    )
    add_output(verify)
    verify.set_defaults(func=_guarded(cmd_verify))

    disc = audit.add_parser(
        "disclosures", help="the accounting of disclosures of PHI (45 CFR 164.528) from the trail"
    )
    disc.add_argument("--user", default="", help="on whose behalf the agents acted")
    disc.add_argument("--patient", default="", help='the patient id (Patient::"ID")')
    disc.add_argument("--since", help="from this date or ISO time (inclusive)")
    disc.add_argument("--until", help="to this date (inclusive) or ISO time (exclusive)")
    disc.add_argument(
        "--trail",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="trail files (default: the configured audit.path and its rotations)",
    )
    add_output(disc, "csv")
    _key_options(disc)
    disc.set_defaults(func=_guarded(cmd_disclosures))

    keygen = audit.add_parser("keygen", help="create an Ed25519 key for audit.signing_key")
    keygen.add_argument("file", type=Path)
    add_output(keygen)
    keygen.set_defaults(func=_guarded(cmd_keygen))


def add_receipt_command(sub: Any) -> None:
    """Register `lasthop receipt verify` (top-level subparsers)."""
    receipt = sub.add_parser("receipt", help="verify a signed decision receipt offline")
    verbs = receipt.add_subparsers(dest="receipt_command", required=True)
    verify = verbs.add_parser("verify", help="check a receipt's signature and what it binds")
    verify.add_argument("receipt", help="the x-lasthop-receipt value, or - to read stdin")
    verify.add_argument("--jwks", type=Path, required=True, help="Lasthop's receipts JWKS")
    verify.add_argument("--method", default="")
    verify.add_argument("--path", default="", help="the request path (the query is ignored)")
    verify.add_argument("--host", default="")
    verify.add_argument("--body", type=Path, help="a file holding the request body")
    verify.add_argument(
        "--require-fresh",
        action="store_true",
        help="also refuse an expired receipt (as an upstream would)",
    )
    add_output(verify)
    verify.set_defaults(func=_guarded(cmd_receipt_verify))


def _key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jwks", type=Path, help="Lasthop's public keys (audit.jwks_path)")
    p.add_argument(
        "--config",
        help="take audit.path, audit.jwks_path and audit.checkpoints_path from this config",
    )


def _guarded(command: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (JwksError, *HANDLED) as err:
            print(f"lasthop: {err}", file=sys.stderr)
            return Exit.USAGE if isinstance(err, JwksError) else exit_code(err)

    return run


# --- audit verify ------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    settings = config.load(args.config) if args.config else None
    if not args.paths:
        if settings is None:
            raise UsageError("name the trail: PATH, or --config to take audit.path")
        args.paths = [audit_setup.trail_path(settings)]
    trails = by_trail(expand(args.paths))
    if args.checkpoints and len(trails) > 1:
        raise UsageError(
            f"--checkpoints names the anchors of one trail; {len(trails)} trails were given "
            f"({', '.join(str(live_of(t[-1])) for t in trails)})"
        )
    keys = _keys(args, settings, required=True)
    verified = []
    for files in trails:
        anchors = _anchors(args, settings, live_of(files[-1]))
        verified.append((audit_verify.verify(files, keys, anchors, partial=args.partial), anchors))
    broken = any(report.problem is not None for report, _ in verified)
    if args.output == "json":
        shown = [_verify_json(report, anchors) for report, anchors in verified]
        print_json(shown[0] if len(shown) == 1 else {"ok": not broken, "trails": shown})
    else:
        for report, anchors in verified:
            _print_verified(report, anchors, len(verified) > 1)
    return EXIT_BROKEN if broken else Exit.OK


def _print_verified(report: audit_verify.Report, anchors: list[Path], named: bool) -> None:
    """One trail's result; `named`: prefixed with its live file (several trails verified)."""
    prefix = f"{live_of(report.files[-1])}: " if named and report.files else ""
    if report.problem is not None:
        print(f"{prefix}BROKEN: {report.problem}")
        where = report.problem.where
        if where is not None and where.file.exists() and where.file.name != "":
            print(f"record: {_line(where)}")
        return
    print(prefix + summary(report, anchors))
    for note in report.notes:
        print(f"note: {note}")


def _verify_json(report: audit_verify.Report, anchors: list[Path]) -> dict[str, Any]:
    problem = report.problem
    return {
        "ok": problem is None,
        "records": report.records,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "files": [str(f) for f in report.files],
        "checkpoints": report.checkpoints,
        "last_checkpoint": report.last_checkpoint,
        "kids": sorted(report.kids),
        "anchors": [str(a) for a in anchors],
        "notes": report.notes,
        "problem": None
        if problem is None
        else {
            "kind": problem.kind,
            "seq": problem.seq,
            "message": problem.message,
            "file": str(problem.where.file) if problem.where else None,
            "line": problem.where.line if problem.where else None,
        },
    }


def summary(report: audit_verify.Report, anchors: list[Path]) -> str:
    text = (
        f"ok: {report.records} records, seq {report.first_seq} to {report.last_seq}, "
        f"in {len(report.files)} file(s); {report.checkpoints} checkpoint(s) signed by "
        f"{', '.join(sorted(report.kids)) or 'no key'}"
    )
    if report.checkpoints:
        after = report.last_seq - report.last_checkpoint
        text += f"; the last at seq {report.last_checkpoint}"
        if after:
            text += f", {after} record(s) after it covered by the hash chain only"
    if anchors:
        text += f"; anchors checked: {', '.join(map(str, anchors))}"
    else:
        text += "; no anchors file: a truncation after the last checkpoint cannot be seen"
    return text


def expand(paths: list[Path]) -> list[Path]:
    """Files of the trails named: a live file brings its rotated files and the trails of the
    other workers beside it (`--workers`); a directory, its trails."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            lives = sorted(p for p in path.iterdir() if p.suffix == ".jsonl" and p.is_file())
            if not lives:
                raise UsageError(f"`{path}` holds no *.jsonl trail")
            for live in lives:
                files.extend(trail_files(live))
        elif path.is_file():
            lives = worker_trails(path) if live_of(path) == path else [path]
            for live in lives:
                files.extend([*rotated_files(live), live])
        else:
            raise FileNotFoundError(f"`{path}`: no such file or directory")
    return files


def _keys(
    args: argparse.Namespace, settings: config.Settings | None, required: bool
) -> dict[str, Ed25519PublicKey] | None:
    if args.jwks is not None:
        return read_jwks(args.jwks)
    if settings is not None:
        path = audit_setup.jwks_path(settings)
        if path.exists() or required:
            return read_jwks(path)
    if required:
        raise UsageError(
            "no public keys to check checkpoint signatures: pass --jwks FILE "
            "(audit.jwks_path) or --config"
        )
    return None


def _anchors(args: argparse.Namespace, settings: config.Settings | None, live: Path) -> list[Path]:
    """The anchors files of the trail whose live file is `live`."""
    if args.checkpoints:
        for path in args.checkpoints:
            if not path.is_file():
                raise UsageError(f"--checkpoints: `{path}` not found")
        return list(args.checkpoints)
    found = [live.with_name(f"{live.name}.checkpoints")]
    if settings is not None:
        configured = audit_setup.trail_path(settings)
        for worker, path in enumerate(worker_trails(configured)):
            if path.resolve() == live.resolve():
                found.append(worker_trail(audit_setup.checkpoints_path(settings), worker))
    unique = {p.resolve(): p for p in found if p.is_file()}
    return list(unique.values())


def _line(where: audit_verify.Location) -> str:
    with where.file.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == where.line:
                text = raw.decode("ascii", "replace").rstrip("\n")
                return text if len(text) <= SHOW_BYTES else text[:SHOW_BYTES] + "..."
    return "(gone)"


# --- audit disclosures -------------------------------------------------------------------------


def cmd_disclosures(args: argparse.Namespace) -> int:
    if not args.user and not args.patient:
        raise UsageError("name whose disclosures: --user U, --patient ID, or both")
    settings = config.load(args.config) if args.config else None
    if args.trail:
        files = expand(args.trail)
    else:
        live = audit_setup.trail_path(settings or config.load(None))
        files = [f for trail in worker_trails(live) for f in trail_files(trail)]
        if not files:
            raise UsageError(f"no audit trail at `{live}`: pass --trail or --config")
    window = disclosures.Window(
        since=disclosures.parse_day(args.since) if args.since else None,
        until=disclosures.parse_day(args.until, end=True) if args.until else None,
    )
    keys = _keys(args, settings, required=False)
    verified: list[Path] = []
    for trail in by_trail(files):
        report = audit_verify.verify(trail, keys, partial=True)
        if report.problem is not None:
            print(
                f"lasthop: the trail does not verify, so it cannot account for disclosures: "
                f"{report.problem}",
                file=sys.stderr,
            )
            return EXIT_BROKEN
        verified.extend(report.files)
    if keys is None:
        print(
            "lasthop: note: hashes and sequence verified; checkpoint signatures not "
            "checked (pass --jwks)",
            file=sys.stderr,
        )
    rows = disclosures.account(disclosures.read_records(verified), args.user, args.patient, window)
    fmt = "md" if args.output == "text" else args.output
    sys.stdout.write(disclosures.render(rows, fmt, _title(args)))
    return 0


def _title(args: argparse.Namespace) -> str:
    parts = [f"user {args.user}"] if args.user else []
    if args.patient:
        parts.append(f"patient {args.patient}")
    if args.since or args.until:
        parts.append(f"from {args.since or 'the start'} to {args.until or 'now'}")
    return "Accounting of disclosures: " + ", ".join(parts)


# --- audit keygen ------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.file.exists():
        raise UsageError(f"`{args.file}` exists; not overwriting a key")
    key = SigningKey.generate()
    key.write_pem(args.file)
    if args.output == "json":
        print_json({"file": str(args.file), "kid": key.kid, "public_jwk": key.jwk})
        return 0
    print(f"wrote {args.file} (mode 0600), kid {key.kid}\npublic JWK: {json.dumps(key.jwk)}")
    return 0


# --- receipt verify ----------------------------------------------------------------------------


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    token = sys.stdin.read().strip() if args.receipt == "-" else args.receipt.strip()
    binding = receipts.Binding(
        method=args.method,
        path=args.path,
        host=args.host,
        body=args.body.read_bytes() if args.body else None,
    )
    keys = read_jwks(args.jwks)
    try:
        claims = receipts.verify(
            token, keys, binding, now=time.time() if args.require_fresh else None
        )
    except ReceiptError as err:
        if args.output == "json":
            print_json({"valid": False, "reason": err.reason, "detail": err.detail})
        else:
            print(f"INVALID: {err}")
        return EXIT_BROKEN
    checked = [name for name in ("method", "path", "host") if getattr(args, name)]
    if args.body:
        checked.append("body")
    kid = receipts.signer(token)
    if args.output == "json":
        print_json({"valid": True, "kid": kid, "checked": checked, "claims": claims})
        return 0
    print(f"valid: signed by {kid}; binding checked: {', '.join(checked) or 'none'}")
    print(json.dumps(claims, indent=2, sort_keys=True))
    return 0
