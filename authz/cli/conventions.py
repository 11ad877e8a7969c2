"""What every `lasthop` verb shares: exit codes, `--output text|json`, secrets off argv.

Exit codes (the same for every verb; `lasthop --help` and the CLI reference list them):

    0  success (for `check`: allowed)
    1  the answer is no: denied, a trail or receipt that does not verify, a failed
       policy test, files `policy fmt --check` would change
    2  usage: a bad argument, option, config or input file (nothing was changed)
    3  not found: the grant, agent or file named does not exist
    4  unauthenticated or forbidden: the admin API refused the token
    5  unavailable: the admin API (or its store) could not be reached in time

Secrets (admin and agent tokens) come from an environment variable or a file,
never only from the command line, where `ps` and shell history would keep them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from enum import IntEnum
from pathlib import Path
from typing import Any

from authz.errors import AdminError, ConfigError, UsageError


class Exit(IntEnum):
    OK = 0
    NO = 1
    USAGE = 2
    NOT_FOUND = 3
    UNAUTHENTICATED = 4
    UNAVAILABLE = 5


MEANING = {
    Exit.OK: "success (for `check`: allowed)",
    Exit.NO: "the answer is no: denied, does not verify, a policy test failed, "
    "`policy fmt --check` would change files",
    Exit.USAGE: "usage: a bad argument, option, config or input file; nothing was changed",
    Exit.NOT_FOUND: "not found: the grant, agent or file named does not exist",
    Exit.UNAUTHENTICATED: "unauthenticated or forbidden: the admin API refused the token",
    Exit.UNAVAILABLE: "unavailable: the admin API or its store could not be reached in time",
}

# gRPC status (lowercase, as AdminError carries it) -> exit code; anything else is usage.
_ADMIN_CODES = {
    "not_found": Exit.NOT_FOUND,
    "unauthenticated": Exit.UNAUTHENTICATED,
    "permission_denied": Exit.UNAUTHENTICATED,
    "unavailable": Exit.UNAVAILABLE,
    "deadline_exceeded": Exit.UNAVAILABLE,
}

HANDLED = (UsageError, ConfigError, AdminError, ValueError, OSError)


def exit_code(err: BaseException) -> Exit:
    """The exit code for an error a verb let out (one of HANDLED)."""
    if isinstance(err, AdminError):
        return _ADMIN_CODES.get(err.code, Exit.USAGE)
    if isinstance(err, FileNotFoundError):
        return Exit.NOT_FOUND
    return Exit.USAGE


def epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {int(code)}  {MEANING[code]}" for code in Exit)


def add_output(parser: argparse.ArgumentParser, *extra: str) -> None:
    """The one `--output` option: text for people, json for programs (plus `extra` forms)."""
    parser.add_argument(
        "--output",
        choices=("text", "json", *extra),
        default="text",
        help="text for people (default), json for programs",
    )


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def read_secret(file: str | None, env_file: str, env_value: str, what: str) -> str:
    """A secret from `--...-file FILE` (`-`: stdin), else the `env_file` variable naming a
    file, else the `env_value` variable; "" when none is given."""
    path = file or os.environ.get(env_file, "")
    if path:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise UsageError(f"cannot read the {what} from `{path}`: {err.strerror}") from None
        secret = text.strip()
        if not secret:
            raise UsageError(f"`{path}` holds no {what}")
        return secret
    return os.environ.get(env_value, "").strip()
