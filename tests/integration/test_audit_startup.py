"""`lasthop serve` refuses to start without a usable signing key or trail, naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer

pytestmark = pytest.mark.integration


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTHOP_")}
    return subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def config(tmp_path: Path) -> Path:
    jwks = DemoIssuer("ES256", kid="it-audit-start").write_jwks(tmp_path / "keys" / "jwks.json")
    return devstack.write_config(tmp_path, jwks)


def assert_refused(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert needle in result.stderr, result.stderr[-2000:]
    assert "lasthop ready" not in result.stdout and "Traceback" not in result.stderr


def test_no_signing_key(tmp_path: Path) -> None:
    path = config(tmp_path)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("signing_key")]
    path.write_text("\n".join(lines) + "\n")
    assert_refused(serve(path), "config `audit.signing_key`: must name an Ed25519")


def test_a_signing_key_that_is_not_ed25519(tmp_path: Path) -> None:
    path = config(tmp_path)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "keys" / "audit-signing.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert_refused(serve(path), "config `audit.signing_key`:")


def test_a_trail_whose_last_record_was_edited(tmp_path: Path) -> None:
    path = config(tmp_path)
    trail = tmp_path / "audit" / "decisions.jsonl"
    trail.parent.mkdir()
    trail.write_text('{"seq":1,"prev":"00","hash":"00","type":"decision"}\n')
    assert_refused(serve(path), "config `audit.path`:")
