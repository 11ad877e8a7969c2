"""authz.server.tls: the listeners' certificate files, checked at start-up and on change.

Issue 11, item 12. Start-up with a bad file stops naming its setting; a
changed file is loaded for the next handshake; a renewal that does not load
(half-written, a key that is not the certificate's) keeps the current one.
Through a real Envoy and `lasthop serve`: tests/integration/test_listeners.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authz import config
from authz.errors import ConfigError
from authz.server import tls
from tests.tls import TestCA


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


def files(ca: TestCA, name: str = "lasthop", client_ca: bool = True) -> tls.TlsFiles:
    leaf = ca.issue(name)
    return tls.TlsFiles("server.tls", leaf.cert, leaf.key, ca.path if client_ca else None)


def test_good_files_load(ca: TestCA) -> None:
    pem = tls.load(files(ca))
    assert pem.cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert pem.client_ca == ca.path.read_bytes()
    assert tls.credentials(files(ca, "other")) is not None


@pytest.mark.parametrize(
    "breakage, key",
    [
        ("missing-cert", "server.tls_cert"),
        ("not-pem-cert", "server.tls_cert"),
        ("missing-key", "server.tls_key"),
        ("not-pem-key", "server.tls_key"),
        ("another-key", "server.tls_key"),
        ("not-pem-ca", "server.tls_client_ca"),
    ],
)
def test_a_bad_file_stops_start_up_naming_its_setting(
    ca: TestCA, tmp_path: Path, breakage: str, key: str
) -> None:
    f = files(ca)
    other = ca.issue("other")
    if breakage == "missing-cert":
        f.cert.unlink()
    elif breakage == "not-pem-cert":
        f.cert.write_text("not a certificate")
    elif breakage == "missing-key":
        f.key.unlink()
    elif breakage == "not-pem-key":
        f.key.write_text("not a key")
    elif breakage == "another-key":
        f.key.write_bytes(other.key.read_bytes())
    else:
        assert f.client_ca is not None
        f.client_ca.write_text("not a CA")
    with pytest.raises(ConfigError) as err:
        tls.load(f)
    assert err.value.key == key


def test_the_fetcher_returns_a_new_configuration_only_when_the_files_change(ca: TestCA) -> None:
    f = files(ca)
    reloader = tls._Reloader(f)
    first = reloader.current
    assert reloader() is None  # nothing changed: gRPC keeps what it has
    renewed = ca.issue("renewed")
    f.key.write_bytes(renewed.key.read_bytes())
    assert reloader() is None  # the key alone is not the certificate's: refused, kept
    f.cert.write_bytes(renewed.cert.read_bytes())
    fresh = reloader()
    assert fresh is not None and fresh is not first
    assert reloader() is None


def test_files_for_reads_the_settings_of_each_listener(tmp_path: Path) -> None:
    toml = tmp_path / "lasthop.toml"
    toml.write_text('[server]\nadmin_tls_cert = "a.crt"\nadmin_tls_key = "a.key"\n')
    settings = config.load(toml, environ={})
    assert tls.files_for(settings, admin=False) is None
    admin = tls.files_for(settings, admin=True)
    assert admin == tls.TlsFiles("server.admin_tls", tmp_path / "a.crt", tmp_path / "a.key", None)
