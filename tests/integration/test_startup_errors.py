"""A bad config or a bad policy stops `lasthop serve` at start-up, naming the key or file:line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from tests.integration.conftest import _close_lasthop, port_open

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0


def _config(tmp_path: Path, policies: Path = devstack.POLICIES, identity_line: str = "") -> Path:
    jwks = DemoIssuer("ES256", kid="it-startup").write_jwks(tmp_path / "keys" / "jwks.json")
    config = devstack.write_config(tmp_path, jwks, policies=policies)
    if identity_line:
        text = config.read_text()
        assert text.count("[identity]\n") == 1
        config.write_text(text.replace("[identity]\n", f"[identity]\n{identity_line}\n"))
    return config


def _serve(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LASTHOP_")}
    return subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        env={**base, **(env or {})},
    )


def _assert_refused(result: subprocess.CompletedProcess[str], config: Path, needle: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert needle in result.stderr, result.stderr[-2000:]
    assert "lasthop ready" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    server = tomllib.loads(config.read_text())["server"]
    for key in ("listen", "admin_listen", "metrics_listen"):
        assert not port_open(server[key]), f"{key} {server[key]} is listening"


@pytest.mark.parametrize(
    ("identity_line", "key"),
    [
        pytest.param('leeway_seconds = "thirty"', "identity.leeway_seconds", id="leeway-string"),
        pytest.param('isuer = "https://idp.example.org"', "identity.isuer", id="unknown-key"),
        pytest.param('algorithms = ["HS256"]', "identity.algorithms", id="hmac-algorithm"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, identity_line: str, key: str) -> None:
    config = _config(tmp_path, identity_line=identity_line)
    _assert_refused(_serve(config), config, f"`{key}`")


def test_bad_env_override_names_the_variable(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = _serve(config, env={"LASTHOP_STORE_TIMEOUT_MS": "abc"})
    _assert_refused(result, config, "LASTHOP_STORE_TIMEOUT_MS")


def test_a_misspelled_variable_stops_start_up_naming_it(tmp_path: Path) -> None:
    """Issue 18: `LASTHOP_STORE_REDIS_ULR` was ignored and the server started on the
    embedded store, saying nothing."""
    config = _config(tmp_path)
    result = _serve(config, env={"LASTHOP_STORE_REDIS_ULR": "redis://127.0.0.1:1/0"})
    _assert_refused(result, config, "`LASTHOP_STORE_REDIS_ULR`: unknown environment variable")
    assert "did you mean `LASTHOP_STORE_REDIS_URL`?" in result.stderr


def test_the_ready_line_names_store_policy_audit_and_fsync(tmp_path: Path) -> None:
    config = _config(tmp_path)
    lasthop = devstack.LasthopServer(config, env={"LASTHOP_AUDIT_FSYNC": "20ms"})
    try:
        ready = lasthop.ready
        assert ready["store"].startswith("embedded (single process only")
        assert re.fullmatch(r"[0-9a-f]{16}", ready["policy_version"])
        assert ready["audit_path"] == str(tmp_path / "audit" / "decisions.jsonl")
        assert (ready["audit_fsync"], ready["tracing"]) == ("20ms", "off")
    finally:
        _close_lasthop(lasthop)
    first = lasthop.log_path.read_text().splitlines()[0]
    assert "WARNING server.store: store: embedded (single process only" in first


def _broken_policies(tmp_path: Path, file: str, line: int, old: str, new: str) -> Path:
    policies = tmp_path / "policies"
    shutil.copytree(devstack.POLICIES, policies)
    path = policies / file
    lines = path.read_text().split("\n")
    assert old in lines[line - 1], (file, line, lines[line - 1])
    lines[line - 1] = lines[line - 1].replace(old, new)
    path.write_text("\n".join(lines))
    return policies


@pytest.mark.parametrize(
    ("file", "line", "old", "new"),
    [
        pytest.param(
            "scribe-read-records.cedar", 5, "action ==", "action ===", id="syntax-operator"
        ),
        pytest.param("scribe-read-records.cedar", 3, "permit (", "permitt (", id="syntax-effect"),
        pytest.param(
            "high-risk-agents-never-write.cedar",
            11,
            "principal.risk_tier ",
            "principal.risk_teir ",
            id="unknown-attribute",
        ),
    ],
)
def test_bad_policy_names_file_and_line(
    tmp_path: Path, file: str, line: int, old: str, new: str
) -> None:
    policies = _broken_policies(tmp_path, file, line, old, new)
    config = _config(tmp_path, policies=policies)
    result = _serve(config)
    assert result.returncode != 0, result.stderr[-2000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(rf"{re.escape(file)}:{line}(?::\d+)?: ", result.stderr), (
        f"expected `{file}:{line}` in stderr:\n{result.stderr[-2000:]}"
    )
    _assert_refused(result, config, file)


def test_an_unreadable_webhook_secret_names_the_key(tmp_path: Path) -> None:
    config = _config(tmp_path)
    env = {
        "LASTHOP_ACCESS_WEBHOOK_URL": "http://127.0.0.1:9/inbox",
        "LASTHOP_ACCESS_WEBHOOK_SECRET_FILE": str(tmp_path / "no-such-secret"),
    }
    _assert_refused(_serve(config, env=env), config, "`access.webhook_secret_file`")
