"""CLI conventions: exit codes by kind of failure, `--version`, one `--output text|json` on
every verb that prints, secrets off argv; and the policy author's `-k`, coverage, fixture
errors, `check` with a bare policy directory."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.audit.signing import SigningKey, write_jwks
from authz.cli import main as cli
from authz.cli.conventions import Exit, exit_code
from authz.errors import AdminError, UsageError
from tests.audit_helpers import write_trail
from tests.test_cli_policy import (  # noqa: F401 (_no_lasthop_env: an autouse fixture)
    READ_GRANT,
    RECORDS,
    SCRIBE_CLAIMS,
    Site,
    _no_lasthop_env,
    run,
)

POLICIES = Path(__file__).resolve().parent.parent / "policies"
SILENT = {("serve",), ("demo",)}  # run servers; they print a ready line, not a report


def verbs(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from verbs(child, (*path, name))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("lasthop ")


def test_every_verb_that_prints_has_one_output_option_text_or_json() -> None:
    """Issue 18: `--output {table,json}`, `{text,json}` and `--format {md,json,csv}` sat
    side by side, and `validate --format` meant something else."""
    found = list(verbs(cli.parser()))
    assert len(found) > 20
    for path, parser in found:
        options = {o: a for a in parser._actions for o in a.option_strings}
        assert "--format" not in options, path
        if path in SILENT:
            continue
        output = options.get("--output")
        assert output is not None, f"`lasthop {' '.join(path)}` has no --output"
        assert output.default == "text" and {"text", "json"} <= set(output.choices or ()), path


def test_no_secret_is_required_on_the_command_line() -> None:
    """Issue 18: `--admin-token` put the admin token on argv (ps, shell history)."""
    for path, parser in verbs(cli.parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if "token" in option and not option.endswith("-file"):
                    assert option == "--token" and not action.required, (path, option)


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (AdminError("not_found", "no grant `g-1`"), Exit.NOT_FOUND),
        (AdminError("unauthenticated", "token_expired"), Exit.UNAUTHENTICATED),
        (AdminError("permission_denied", "needs lasthop:admin"), Exit.UNAUTHENTICATED),
        (AdminError("unavailable", "connection refused"), Exit.UNAVAILABLE),
        (AdminError("deadline_exceeded", "slow"), Exit.UNAVAILABLE),
        (AdminError("invalid_argument", "bad ttl"), Exit.USAGE),
        (UsageError("bad"), Exit.USAGE),
        (FileNotFoundError("`x`: no such file"), Exit.NOT_FOUND),
    ],
)
def test_each_kind_of_failure_has_its_exit_code(err: Exception, code: Exit) -> None:
    assert exit_code(err) == code


def test_the_exit_codes_are_distinct_and_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert len({int(c) for c in Exit}) == len(Exit) == 6
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code in Exit:
        assert f"  {int(code)}  " in out


def test_unreachable_admin_api_is_unavailable_and_usage_is_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("not-checked-before-the-call\n")
    code, _, err = run(
        capsys, "grants", "list", "--admin-url", "127.0.0.1:1", "--admin-token-file", str(token)
    )
    assert code == Exit.UNAVAILABLE, err
    assert run(capsys, "grants", "issue", "--agent", "a", "--user", "u", "--action", "read",
               "--resource", "x", "--purpose", "p", "--ttl", "forever",
               "--admin-url", "127.0.0.1:1")[0] == Exit.USAGE  # fmt: skip
    monkeypatch.setenv("LASTHOP_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    code, _, err = run(capsys, "grants", "list", "--admin-url", "127.0.0.1:1")
    assert code == Exit.USAGE and "cannot read the admin token" in err


def test_audit_verify_has_json_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = SigningKey.generate()
    trail, jwks = tmp_path / "decisions.jsonl", tmp_path / "receipts.json"
    write_trail(trail, key, 5)
    write_jwks(jwks, key)
    code, out, _ = run(
        capsys, "audit", "verify", str(trail), "--jwks", str(jwks), "--output", "json"
    )
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["records"] > 0 and doc["problem"] is None
    code, _, err = run(capsys, "audit", "verify", str(tmp_path / "nope.jsonl"), "--jwks", str(jwks))
    assert code == Exit.NOT_FOUND and "nope.jsonl" in err


# --- policy authoring -------------------------------------------------------------------------


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def test_policy_test_json_and_dash_k(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "test", str(POLICIES), "-k", "BILLING", "--output", "json")
    doc = json.loads(out)
    names = [t["name"] for t in doc["tests"]]
    assert code == 0 and names and all("billing" in n.lower() for n in names)
    assert doc["failed"] == 0 and doc["passed"] == len(names)
    code, _, err = run(capsys, "policy", "test", str(POLICIES), "-k", "no-such-test")
    assert code == Exit.USAGE and "no test matches `no-such-test`" in err


def test_the_coverage_line_names_a_policy_no_test_exercises(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    code, out, _ = run(capsys, "policy", "test", str(POLICIES))
    assert code == 0 and "coverage: 11 of 11 policies decided a test; 6 of 6 routes" in out
    (copy / "untested.cedar").write_text(UNTESTED, encoding="utf-8")
    code, out, _ = run(capsys, "policy", "test", str(copy))
    coverage = next(line for line in out.splitlines() if line.startswith("coverage:"))
    assert "11 of 12 policies decided a test; never: auditor-reads-claims;" in coverage
    assert code == 0


UNTESTED = """\
@id("auditor-reads-claims")
permit (principal == Agent::"auditor", action == Action::"read", resource is Claim);
"""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ('{"principal": "Agent::\\"scribe\\"", "action": "read"}', "missing key 'resource'"),
        (
            '{"principal": "scribe", "action": "read", "resource": "Records::\\"p\\"",'
            ' "context": {}}',
            "is not a Cedar entity reference",
        ),  # fmt: skip
    ],
)
def test_a_malformed_fixture_names_its_file_and_exits_2(
    capsys: pytest.CaptureFixture[str], copy: Path, content: str, message: str
) -> None:
    """Issue 18: a malformed fixture crashed `policy test` with a traceback and exit 1."""
    path = copy / "tests" / "ALLOW" / "broken.json"
    path.write_text(content, encoding="utf-8")
    code, out, err = run(capsys, "policy", "test", str(copy))
    assert code == Exit.USAGE, (out, err)
    assert err.startswith(f"lasthop: {path}: ") and message in err
    assert "Traceback" not in err


def test_check_takes_a_bare_policy_directory(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18: `check` needed a config file even to try claims against a directory."""
    code, out, err = run(
        capsys, "check", "--policies", str(POLICIES), "--claims", json.dumps(SCRIBE_CLAIMS),
        "--method", "GET", "--path", RECORDS, "--grant", json.dumps(READ_GRANT),
        "--output", "json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["decision"] == "allow"
    code, _, err = run(
        capsys, "check", "--policies", str(POLICIES), "--token", "x", "--method", "GET",
        "--path", RECORDS,
    )  # fmt: skip
    assert code == Exit.USAGE and "pass --config too" in err


def test_check_reads_a_token_from_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = Site(tmp_path)
    token_file = tmp_path / "token"
    token = site.issuer.access_token("dr-alice", ["scribe"], purpose="clinical-documentation")
    token_file.write_text(token + "\n")
    code, doc, _ = site.check(capsys, "--token-file", str(token_file))
    assert code == 1 and doc["reason"] == "no_grant" and "verified" in doc["token"]
