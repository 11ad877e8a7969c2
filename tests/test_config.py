"""authz.config: defaults, TOML keys, LASTHOP_<SECTION>_<KEY> overrides, and every refusal."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from authz import config
from authz.errors import ConfigError

FULL = """\
[server]
listen = "127.0.0.1:19191"
admin_listen = "0.0.0.0:19192"
metrics_listen = "[::1]:19464"
shutdown_grace_seconds = 2.5

[identity]
issuer = "https://login.hospital.test"
audiences = ["ehr-api", "pharmacy-api"]
jwks = "https://login.hospital.test/.well-known/jwks.json"
jwks_refresh_seconds = 120
algorithms = ["ES256", "PS256"]
leeway_seconds = 10
max_token_lifetime = "2h"
max_chain_depth = 8
bind_peer = true
spiffe_trust_domain = "hospital.test"
txn_token_issuers = ["https://txn.hospital.test"]

[policies]
dir = "/etc/lasthop/policies"

[store]
redis_url = "redis://redis.internal:6379/2"
timeout_ms = 25

[grants]
max_ttl = "90m"

[admin]
audience = "hospital-admin"

[audit]
path = "/var/log/lasthop/decisions.jsonl"
queue_size = 500
"""


def write(tmp_path: Path, text: str, name: str = "lasthop.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> config.Settings:
    return config.load(write(tmp_path, text), environ={} if environ is None else environ)


# --- defaults -----------------------------------------------------------------------------


def test_defaults_with_no_file() -> None:
    s = config.load(None, environ={})
    assert s.server.listen == "127.0.0.1:9191"
    assert s.server.admin_listen == "127.0.0.1:9192"
    assert s.server.metrics_listen == "127.0.0.1:9464"
    assert s.server.shutdown_grace_seconds == 5.0
    assert s.identity.issuer == "https://idp.example.org"
    assert s.identity.audiences == ("ehr-api",)
    assert s.identity.jwks == "keys/jwks.json"
    assert s.identity.algorithms == ("RS256", "ES256", "EdDSA")
    assert s.identity.leeway_seconds == 30
    assert s.identity.max_chain_depth == 4
    assert s.identity.max_token_lifetime == 3600
    assert s.identity.bind_peer is False
    assert s.identity.spiffe_trust_domain == ""
    assert s.identity.txn_token_issuers == ()
    assert s.policies.dir == "policies"
    assert s.store.redis_url == ""
    assert s.store.timeout_ms == 50
    assert s.server.check_deadline_ms == 200  # under the 250 ms timeout in envoy/sidecar.yaml
    assert s.store.use_replicas == 0
    assert s.store.sentinel_password == ""
    assert s.grants.max_ttl == 8 * 3600
    assert s.admin.audience == "lasthop-admin"
    assert s.audit.path == "audit/decisions.jsonl"
    assert s.audit.queue_size == 10_000
    assert s.base_dir == Path.cwd()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    s = load_text(tmp_path, "")
    assert s == dataclasses.replace(config.load(None, environ={}), base_dir=tmp_path.resolve())


# --- every key from TOML --------------------------------------------------------------------


def test_every_key_read_from_toml(tmp_path: Path) -> None:
    s = load_text(tmp_path, FULL)
    assert s.server.listen == "127.0.0.1:19191"
    assert s.server.admin_listen == "0.0.0.0:19192"
    assert s.server.metrics_listen == "[::1]:19464"
    assert s.server.shutdown_grace_seconds == 2.5
    assert s.identity.issuer == "https://login.hospital.test"
    assert s.identity.audiences == ("ehr-api", "pharmacy-api")
    assert s.identity.jwks == "https://login.hospital.test/.well-known/jwks.json"
    assert s.identity.jwks_refresh_seconds == 120
    assert s.identity.algorithms == ("ES256", "PS256")
    assert s.identity.leeway_seconds == 10
    assert s.identity.max_token_lifetime == 7200
    assert s.identity.max_chain_depth == 8
    assert s.identity.bind_peer is True
    assert s.identity.spiffe_trust_domain == "hospital.test"
    assert s.identity.txn_token_issuers == ("https://txn.hospital.test",)
    assert s.policies.dir == "/etc/lasthop/policies"
    assert s.store.redis_url == "redis://redis.internal:6379/2"
    assert s.store.timeout_ms == 25
    assert s.grants.max_ttl == 5400
    assert s.admin.audience == "hospital-admin"
    assert s.audit.path == "/var/log/lasthop/decisions.jsonl"
    assert s.audit.queue_size == 500


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[identity]\nmax_token_lifetime = "30s"', 30),
        ('[identity]\nmax_token_lifetime = "15m"', 900),
        ("[identity]\nmax_token_lifetime = 600", 600),
    ],
)
def test_duration_keys_take_a_duration_or_seconds(tmp_path: Path, toml: str, expected: int) -> None:
    assert load_text(tmp_path, toml).identity.max_token_lifetime == expected


def test_design_example_loads(tmp_path: Path) -> None:
    text = """\
[server]
listen = "127.0.0.1:9191"
admin_listen = "127.0.0.1:9192"
metrics_listen = "127.0.0.1:9464"

[identity]
issuer = "https://idp.example.org"
audiences = ["ehr-api"]
jwks = "keys/jwks.json"
algorithms = ["RS256", "ES256", "EdDSA"]
leeway_seconds = 30
max_chain_depth = 4

[policies]
dir = "policies"

[store]
redis_url = ""

[audit]
path = "audit/decisions.jsonl"
"""
    s = load_text(tmp_path, text)
    assert s.identity.algorithms == ("RS256", "ES256", "EdDSA")
    assert s.store.redis_url == ""


# --- environment overrides -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "section", "key", "expected"),
    [
        ({"LASTHOP_SERVER_LISTEN": "127.0.0.1:7000"}, "server", "listen", "127.0.0.1:7000"),
        (
            {"LASTHOP_IDENTITY_ISSUER": "https://other.test"},
            "identity",
            "issuer",
            "https://other.test",
        ),
        (
            {"LASTHOP_STORE_REDIS_URL": "redis://127.0.0.1:6380/0"},
            "store",
            "redis_url",
            "redis://127.0.0.1:6380/0",
        ),
        ({"LASTHOP_IDENTITY_LEEWAY_SECONDS": "45"}, "identity", "leeway_seconds", 45),
        ({"LASTHOP_STORE_TIMEOUT_MS": "200"}, "store", "timeout_ms", 200),
        ({"LASTHOP_AUDIT_QUEUE_SIZE": "7"}, "audit", "queue_size", 7),
        ({"LASTHOP_SERVER_SHUTDOWN_GRACE_SECONDS": "0.5"}, "server", "shutdown_grace_seconds", 0.5),
        ({"LASTHOP_IDENTITY_BIND_PEER": "true"}, "identity", "bind_peer", True),
        ({"LASTHOP_IDENTITY_BIND_PEER": "TRUE"}, "identity", "bind_peer", True),
        ({"LASTHOP_IDENTITY_BIND_PEER": "1"}, "identity", "bind_peer", True),
        ({"LASTHOP_IDENTITY_BIND_PEER": "false"}, "identity", "bind_peer", False),
        ({"LASTHOP_IDENTITY_BIND_PEER": "0"}, "identity", "bind_peer", False),
        (
            {"LASTHOP_IDENTITY_AUDIENCES": "ehr-api, billing-api ,x"},
            "identity",
            "audiences",
            ("ehr-api", "billing-api", "x"),
        ),
        ({"LASTHOP_IDENTITY_ALGORITHMS": "ES256"}, "identity", "algorithms", ("ES256",)),
        (
            {"LASTHOP_IDENTITY_SPIFFE_TRUST_DOMAIN": "h.test"},
            "identity",
            "spiffe_trust_domain",
            "h.test",
        ),
        (
            {"LASTHOP_IDENTITY_TXN_TOKEN_ISSUERS": "https://a.test,https://b.test"},
            "identity",
            "txn_token_issuers",
            ("https://a.test", "https://b.test"),
        ),
        ({"LASTHOP_IDENTITY_MAX_TOKEN_LIFETIME": "1h"}, "identity", "max_token_lifetime", 3600),
        ({"LASTHOP_IDENTITY_MAX_TOKEN_LIFETIME": "120"}, "identity", "max_token_lifetime", 120),
        ({"LASTHOP_GRANTS_MAX_TTL": "90m"}, "grants", "max_ttl", 5400),
        ({"LASTHOP_GRANTS_MAX_TTL": "30s"}, "grants", "max_ttl", 30),
        ({"LASTHOP_ADMIN_AUDIENCE": "ops"}, "admin", "audience", "ops"),
        ({"LASTHOP_POLICIES_DIR": "/srv/policies"}, "policies", "dir", "/srv/policies"),
        ({"LASTHOP_AUDIT_PATH": "/srv/audit.jsonl"}, "audit", "path", "/srv/audit.jsonl"),
    ],
)
def test_env_overrides(env: dict[str, str], section: str, key: str, expected: Any) -> None:
    s = config.load(None, environ=env)
    assert getattr(getattr(s, section), key) == expected


def test_env_beats_the_file(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        FULL,
        environ={"LASTHOP_IDENTITY_LEEWAY_SECONDS": "5", "LASTHOP_GRANTS_MAX_TTL": "1h"},
    )
    assert s.identity.leeway_seconds == 5
    assert s.grants.max_ttl == 3600
    assert s.identity.max_chain_depth == 8  # untouched keys keep the file's value


def test_env_values_are_validated_like_file_values() -> None:
    with pytest.raises(ConfigError, match="identity.leeway_seconds"):
        config.load(None, environ={"LASTHOP_IDENTITY_LEEWAY_SECONDS": "301"})
    with pytest.raises(ConfigError, match="identity.audiences"):
        config.load(None, environ={"LASTHOP_IDENTITY_AUDIENCES": " , "})


def test_unrelated_environment_is_ignored() -> None:
    env = {"HOME": "/root", "LASTHOP_ADMIN_URL": "127.0.0.1:1", "LASTHOP_ADMIN_TOKEN": "t"}
    s = config.load(None, environ=env)
    assert s.server.listen == "127.0.0.1:9191"


def test_a_misspelled_override_stops_start_up_naming_it() -> None:
    """Issue 18: `LASTHOP_STORE_REDIS_ULR` was ignored, and the server started on the
    embedded store; every replica of a fleet would have held private grants."""
    with pytest.raises(ConfigError) as caught:
        config.load(None, environ={"LASTHOP_STORE_REDIS_ULR": "redis://10.0.0.1:6379/0"})
    assert caught.value.key == "LASTHOP_STORE_REDIS_ULR"
    assert "did you mean `LASTHOP_STORE_REDIS_URL`" in str(caught.value)
    with pytest.raises(ConfigError, match="`LASTHOP_NOPE_X`: unknown environment variable"):
        config.load(None, environ={"LASTHOP_NOPE_X": "1"})


def test_every_setting_has_its_variable_and_none_collides_with_the_clients() -> None:
    variables = config.setting_variables()
    assert variables["LASTHOP_STORE_REDIS_URL"] == "store.redis_url"
    assert variables["LASTHOP_SERVER_LOG_FORMAT"] == "server.log_format"
    assert not set(variables) & set(config.CLIENT_VARIABLES)


@pytest.mark.parametrize(
    ("env_name", "value"),
    [
        ("LASTHOP_IDENTITY_LEEWAY_SECONDS", "thirty"),
        ("LASTHOP_STORE_TIMEOUT_MS", "5.5"),
        ("LASTHOP_AUDIT_QUEUE_SIZE", ""),
        ("LASTHOP_IDENTITY_MAX_CHAIN_DEPTH", "1h"),
        ("LASTHOP_GRANTS_MAX_TTL", "1d"),
        ("LASTHOP_IDENTITY_BIND_PEER", "yes"),
        ("LASTHOP_SERVER_SHUTDOWN_GRACE_SECONDS", "soon"),
    ],
)
def test_bad_env_value_names_the_env_variable(env_name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(None, environ={env_name: value})
    assert info.value.key == env_name
    assert env_name in str(info.value)


# --- paths ----------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc" / "lasthop"
    sub.mkdir(parents=True)
    s = config.load(write(sub, '[policies]\ndir = "policies"\n'), environ={})
    assert s.base_dir == sub.resolve()
    assert s.path(s.policies.dir) == sub.resolve() / "policies"
    assert s.path(s.audit.path) == sub.resolve() / "audit" / "decisions.jsonl"
    assert s.path("/abs/file") == Path("/abs/file")


def test_relative_paths_without_a_file_resolve_against_cwd() -> None:
    s = config.load(None, environ={})
    assert s.path("policies") == Path.cwd() / "policies"


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        # unknown section and key
        ("[serverr]\nlisten = '127.0.0.1:1'", "serverr"),
        ("[server]\nlistenn = '127.0.0.1:1'", "server.listenn"),
        ("[identity]\nleeway = 3", "identity.leeway"),
        ("server = 1", "server"),
        # wrong types
        ('[identity]\nleeway_seconds = "30"', "identity.leeway_seconds"),
        ("[identity]\nleeway_seconds = 1.5", "identity.leeway_seconds"),
        ("[identity]\nbind_peer = 1", "identity.bind_peer"),
        ('[identity]\nbind_peer = "true"', "identity.bind_peer"),
        ("[identity]\nmax_chain_depth = true", "identity.max_chain_depth"),
        ("[store]\ntimeout_ms = false", "store.timeout_ms"),
        ("[server]\nshutdown_grace_seconds = true", "server.shutdown_grace_seconds"),
        ("[server]\nlisten = 9191", "server.listen"),
        ('[identity]\naudiences = "ehr-api"', "identity.audiences"),
        ("[identity]\naudiences = [1]", "identity.audiences"),
        ('[grants]\nmax_ttl = "1d"', "grants.max_ttl"),
        ('[identity]\nmax_token_lifetime = "0s"', "identity.max_token_lifetime"),
        # out of range
        ("[identity]\nleeway_seconds = 301", "identity.leeway_seconds"),
        ("[identity]\nleeway_seconds = -1", "identity.leeway_seconds"),
        ("[identity]\nmax_chain_depth = 0", "identity.max_chain_depth"),
        ("[identity]\nmax_chain_depth = 17", "identity.max_chain_depth"),
        ("[store]\ntimeout_ms = 0", "store.timeout_ms"),
        ("[store]\ntimeout_ms = 10001", "store.timeout_ms"),
        ("[grants]\nmax_ttl = 0", "grants.max_ttl"),
        ("[audit]\nqueue_size = 0", "audit.queue_size"),
        ("[identity]\njwks_refresh_seconds = 0", "identity.jwks_refresh_seconds"),
        # algorithms
        ('[identity]\nalgorithms = ["HS256"]', "identity.algorithms"),
        ('[identity]\nalgorithms = ["RS256", "none"]', "identity.algorithms"),
        ("[identity]\nalgorithms = []", "identity.algorithms"),
        # empties
        ("[identity]\naudiences = []", "identity.audiences"),
        ('[identity]\nissuer = ""', "identity.issuer"),
        ('[identity]\njwks = ""', "identity.jwks"),
        ('[audit]\npath = ""', "audit.path"),
        ('[admin]\naudience = ""', "admin.audience"),
        ('[policies]\ndir = ""', "policies.dir"),
        # URLs and addresses
        ('[identity]\njwks = "http://idp.example.org/jwks.json"', "identity.jwks"),
        ('[server]\nlisten = "9191"', "server.listen"),
        ('[server]\nlisten = "host:port"', "server.listen"),
        ('[server]\nadmin_listen = ":9192"', "server.admin_listen"),
        ('[server]\nmetrics_listen = "127.0.0.1:70000"', "server.metrics_listen"),
        ('[store]\nredis_url = "http://x"', "store.redis_url"),
        # issue 11: listeners, TLS, method overrides, keys, SPIFFE binding
        ('[server]\nlisten = "unix:relative.sock"', "server.listen"),
        ('[server]\nadmin_listen = "unix:"', "server.admin_listen"),
        ('[server]\nmetrics_listen = "unix:/run/m.sock"', "server.metrics_listen"),
        ('[server]\ntls_cert = "c.pem"', "server.tls_key"),
        ('[server]\ntls_key = "k.pem"', "server.tls_cert"),
        ('[server]\ntls_client_ca = "ca.pem"', "server.tls_client_ca"),
        ('[server]\nadmin_tls_client_ca = "ca.pem"', "server.admin_tls_client_ca"),
        ('[server]\nmethod_override_headers = ["X-HTTP-Method"]', "server.method_override_headers"),
        ('[server]\nmethod_override_headers = ["x method"]', "server.method_override_headers"),
        ("[identity]\njwks_refetch_min_seconds = 0", "identity.jwks_refetch_min_seconds"),
        ('[identity]\njwks_ca_file = "ca.pem"', "identity.jwks_ca_file"),
        ('[identity]\nspiffe_trust_domain = "Cluster.local"', "identity.spiffe_trust_domain"),
        ('[identity]\nspiffe_id_template = "spiffe://td/sa/scribe"', "identity.spiffe_id_template"),
        (
            '[identity]\nspiffe_id_template = "spiffe://{trust_domain}/sa/{agent}"',
            "identity.spiffe_id_template",
        ),
        (
            '[identity]\nspiffe_id_template = "spiffe://td/ns/{namespace}/sa/{agent}"',
            "identity.spiffe_id_template",
        ),
        # fleet (issue 12)
        ("[server]\ncheck_deadline_ms = 0", "server.check_deadline_ms"),
        ("[server]\ncheck_deadline_ms = 60001", "server.check_deadline_ms"),
        ('[server]\ncheck_deadline_ms = "200ms"', "server.check_deadline_ms"),
        ("[store]\nuse_replicas = -1", "store.use_replicas"),
        ("[store]\nuse_replicas = 17", "store.use_replicas"),
        ('[store]\nsentinel_password = "pw"', "store.sentinel_password"),
        (
            '[store]\nredis_url = "redis://r:6379/0"\nsentinel_password = "pw"',
            "store.sentinel_password",
        ),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, toml)
    assert info.value.key == key
    assert f"`{key}`" in str(info.value)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://r.test:6380", "unix:///run/redis.sock"]
)
def test_redis_url_schemes_accepted(tmp_path: Path, url: str) -> None:
    assert load_text(tmp_path, f'[store]\nredis_url = "{url}"').store.redis_url == url


@pytest.mark.parametrize(
    ("toml", "section", "key", "value"),
    [
        ("[identity]\nleeway_seconds = 300", "identity", "leeway_seconds", 300),
        ("[identity]\nleeway_seconds = 0", "identity", "leeway_seconds", 0),
        ("[identity]\nmax_chain_depth = 1", "identity", "max_chain_depth", 1),
        ("[identity]\nmax_chain_depth = 16", "identity", "max_chain_depth", 16),
        ("[store]\ntimeout_ms = 1", "store", "timeout_ms", 1),
        ("[server]\nshutdown_grace_seconds = 3", "server", "shutdown_grace_seconds", 3.0),
        ("[server]\ncheck_deadline_ms = 1", "server", "check_deadline_ms", 1),
        ("[store]\nuse_replicas = 16", "store", "use_replicas", 16),
        (
            '[store]\nredis_url = "rediss+sentinel://s:26379/m"\nsentinel_password = "pw"',
            "store",
            "sentinel_password",
            "pw",
        ),
    ],
)
def test_boundary_values_accepted(
    tmp_path: Path, toml: str, section: str, key: str, value: Any
) -> None:
    assert getattr(getattr(load_text(tmp_path, toml), section), key) == value


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    assert info.value.key == "--config"
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lasthop.toml"
    path.write_bytes(b'[identity]\nissuer = "https://\xff.test"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path, environ={})


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    assert info.value.key == "--config"
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


# --- parse_duration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1s", 1),
        (" 5m ", 300),
    ],
)
def test_parse_duration_ok(text: str, seconds: int) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["0s", "0m", "1d", "15", "", "m", "1.5h", "-5m", "5 m", "5M", "h1"]
)
def test_parse_duration_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        config.parse_duration(text)


def test_a_unix_socket_and_a_spiffe_template_are_accepted(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        '[server]\nlisten = "unix:/run/lasthop/authz.sock"\n'
        '[identity]\nspiffe_trust_domain = "cluster.local"\n'
        'spiffe_id_template = "spiffe://{trust_domain}/ns/agents/sa/{agent}"\n',
    )
    assert s.server.listen == "unix:/run/lasthop/authz.sock"
    binding = config.spiffe_binding(s.identity)
    assert str(binding.expected("scribe")) == "spiffe://cluster.local/ns/agents/sa/scribe"


def test_default_deadline_is_under_the_sidecars_ext_authz_timeout() -> None:
    """Lasthop must answer before Envoy answers for it: the shipped sidecar's ext_authz
    timeout leaves room for the audit record and the gRPC round trip after the deadline."""
    sidecar = (Path(__file__).resolve().parent.parent / "envoy" / "sidecar.yaml").read_text()
    found = re.search(r"envoy_grpc: \{ cluster_name: lasthop \}\s+timeout: ([0-9.]+)s", sidecar)
    assert found, "no ext_authz grpc_service timeout in envoy/sidecar.yaml"
    envoy_ms = float(found.group(1)) * 1000
    assert envoy_ms - 50 >= config.DEFAULT_CHECK_DEADLINE_MS, (envoy_ms, "too little room")
