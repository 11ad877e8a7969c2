"""Settings: read once at start-up from one TOML file plus `LASTHOP_<SECTION>_<KEY>` overrides.

Every value is cast strictly; an unknown key, a wrong type or a bad value
raises `ConfigError` naming the key, and the server does not start.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from authz import spiffe
from authz.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:9191"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9192"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_METHOD_OVERRIDES = ("x-http-method-override", "x-http-method", "x-method-override")
MAX_THREADS = 1024
DEFAULT_STORE_TIMEOUT_MS = 50  # well under Envoy's usual 200 ms ext_authz timeout
# Every check is answered within this, safely under the 250 ms ext_authz timeout in
# envoy/sidecar.yaml, so Envoy never answers for Lasthop with its own timeout.
DEFAULT_CHECK_DEADLINE_MS = 200

REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_DURATION = re.compile(r"(\d+)(s|m|h)")
_UNIT = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> int:
    """`30s`, `15m`, `2h` -> seconds. Raises ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"`{text}` is not a duration like 30s, 15m or 2h")
    return int(match.group(1)) * _UNIT[match.group(2)]


@dataclass(frozen=True)
class ServerSettings:
    listen: str = DEFAULT_LISTEN
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    metrics_listen: str = DEFAULT_METRICS_LISTEN
    health_listen: str = ""  # grpc.health.v1 alone, for probes; empty: only beside `listen`
    shutdown_grace_seconds: float = 5.0
    log_format: str = "text"  # or "json": one object per line with a stable `event` name
    log_level: str = "info"  # debug (a line per decision), info, warning or error
    latency_budget_ms: int = 10  # the p99 check latency the shipped alert holds Lasthop to
    # TLS: PEM files, reloaded when they change. Empty is plaintext: loopback or unix: only.
    tls_cert: str = ""  # TLS for `listen`: the certificate chain (PEM), leaf first; empty: none
    tls_key: str = ""  # the private key (PEM) of `tls_cert`
    tls_client_ca: str = ""  # mTLS on `listen`: clients need a certificate this CA signed
    admin_tls_cert: str = ""  # TLS for `admin_listen`, so admin tokens never cross in clear
    admin_tls_key: str = ""  # the private key (PEM) of `admin_tls_cert`
    admin_tls_client_ca: str = ""  # mTLS on `admin_listen`: clients need a cert this CA signed
    method_override_headers: tuple[str, ...] = DEFAULT_METHOD_OVERRIDES
    check_deadline_ms: int = DEFAULT_CHECK_DEADLINE_MS  # a check not decided by then: 503
    threads: int = 32  # Check handler threads (grpcio's threaded server); 0: grpc.aio


@dataclass(frozen=True)
class IdentitySettings:
    issuer: str = "https://idp.example.org"
    audiences: tuple[str, ...] = ("ehr-api",)
    jwks: str = "keys/jwks.json"
    jwks_refresh_seconds: int = 300
    jwks_refetch_min_seconds: int = 30  # unknown-kid reloads of a URL at most this often; 1-3600
    jwks_ca_file: str = ""  # CAs (PEM) for an https JWKS URL; empty: the system's
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: int = 30
    max_token_lifetime: int = 3600
    max_chain_depth: int = 4
    bind_peer: bool = False
    spiffe_trust_domain: str = ""  # with bind_peer: peers must come from this trust domain
    spiffe_id_template: str = ""
    txn_token_issuers: tuple[str, ...] = ()  # empty: the access-token issuer


@dataclass(frozen=True)
class PoliciesSettings:
    dir: str = "policies"
    mode: str = "enforce"  # or "dry-run": policy and grant denials are logged, not enforced
    allow_dry_run: bool = False  # dry-run refuses to start without this
    reload_interval_seconds: float = 1.0  # poll the directory for changes; 0: never reload


@dataclass(frozen=True)
class StoreSettings:
    redis_url: str = ""
    redis_cluster: bool = False  # or a redis+cluster:// URL
    timeout_ms: int = DEFAULT_STORE_TIMEOUT_MS  # the check path's Redis socket timeout
    admin_timeout_ms: int = 1000  # the admin and access APIs' (not on the check path)
    cache_ttl_ms: int = 5000  # local grant/agent cache bound; 0: no cache
    revoke_replicas: int = 0  # WAIT for this many replicas on revoke and suspend
    revoke_wait_ms: int = 100
    use_replicas: int = 0  # WAIT for this many replicas before a counted use is allowed
    sentinel_password: str = ""  # AUTH to the Sentinels (Redis's own is in redis_url)


@dataclass(frozen=True)
class RegistrySettings:
    medium_risk_from: int = 30  # risk_tier: low below this
    high_risk_from: int = 70  # risk_tier: high from this


@dataclass(frozen=True)
class GrantsSettings:
    max_ttl: int = 8 * 3600


@dataclass(frozen=True)
class TracingSettings:
    enabled: bool = False  # OpenTelemetry: a span per check (needs the `otel` extra)
    endpoint: str = ""  # OTLP/gRPC collector; empty: OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4317
    service_name: str = "lasthop"  # the spans' `service.name`
    sample_ratio: float = 1.0  # for checks that arrive without a sampled-or-not parent


@dataclass(frozen=True)
class ConnectionsSettings:
    """Database connections, decided through Envoy's network ext_authz (docs/databases.md)."""

    max_duration_seconds: int = 300  # the listener's max_downstream_connection_duration; 1-86400


@dataclass(frozen=True)
class AdminSettings:
    audience: str = "lasthop-admin"


@dataclass(frozen=True)
class AccessSettings:
    pending_ttl: int = 300  # an access request no one decides expires after this; up to 1 day
    break_glass_max_ttl: int = 900  # no break-glass grant lasts longer; up to 1 day
    max_wait_seconds: int = 300  # the longest a caller may wait for a decision; 0 to 3600
    webhook_url: str = ""  # POST pending and break-glass requests here (https, or http to loopback)
    webhook_secret_file: str = ""  # the webhook's signing secret; required with the URL
    webhook_timeout_ms: int = 2000  # one delivery try; 1 to 60000
    webhook_attempts: int = 5  # tries per notification, 0.5 s apart, doubling; 1 to 20


_FSYNC_INTERVAL = re.compile(r"(\d+)ms")
MAX_FSYNC_INTERVAL_MS = 10_000


@dataclass(frozen=True)
class AuditSettings:
    path: str = "audit/decisions.jsonl"
    queue_size: int = 10_000
    signing_key: str = ""  # Ed25519 private key, PEM; `serve` refuses to start without one
    jwks_path: str = ""  # the public keys (receipts, checkpoints); empty: beside `path`
    checkpoints_path: str = ""  # a copy of every checkpoint; empty: `<path>.checkpoints`
    fsync: str = "always"  # "always", or at most every N ms: "50ms"
    checkpoint_records: int = 1000
    checkpoint_seconds: int = 60
    rotate_bytes: int = 128 * 1024 * 1024  # 0: never rotate
    receipts: bool = True
    receipt_ttl_seconds: int = 60

    @property
    def fsync_interval_seconds(self) -> float:
        """0.0 for `always`; raises ValueError on anything but `always` or `<N>ms`."""
        if self.fsync == "always":
            return 0.0
        match = _FSYNC_INTERVAL.fullmatch(self.fsync)
        if not match or not 1 <= int(match.group(1)) <= MAX_FSYNC_INTERVAL_MS:
            raise ValueError(
                f"must be `always` or an interval from 1ms to "
                f"{MAX_FSYNC_INTERVAL_MS}ms such as `50ms`, got `{self.fsync}`"
            )
        return int(match.group(1)) / 1000


RESPONSES = ("record", "alert", "approve", "suspend", "revoke")  # each does all before it


@dataclass(frozen=True)
class DetectSettings:
    enabled: bool = True  # run the detectors on every check; false: risk holds token facts only
    cooldown: int = 600  # a detector fires at most once per agent and kind in this time
    breadth_entity: str = "Patient"  # breadth counts the resource or its ancestor of this type
    breadth_window: int = 600  # sliding window of the breadth counts
    breadth_patients: int = 25  # distinct entities one agent asks for in the window; 0: off
    breadth_user_patients: int = 0  # ... one agent for one user; 0: off
    breadth_response: str = "alert"  # record, alert, approve, suspend or revoke
    rate_window: int = 60  # requests per agent are counted per window of this length
    rate_baseline: int = 3600  # the horizon of the agent's own moving average
    rate_factor: int = 10  # fire above this many times the agent's baseline...
    rate_min: int = 300  # ...and above this many requests in one window; 0: off
    rate_response: str = "alert"  # record, alert, approve, suspend or revoke
    probing_window: int = 60  # sliding window of the denial counts
    probing_denials: int = 20  # denials of one agent in the window; 0: off
    probing_token_denials: int = 10  # denials of one token in the window; 0: off
    probing_response: str = "alert"  # record, alert, approve, suspend or revoke
    novelty_learning: int = 86400  # an agent's first period teaches its habits; 0: novelty off
    novelty_response: str = "record"  # record, alert, approve, suspend or revoke
    hours_response: str = "alert"  # record, alert, approve, suspend or revoke
    hygiene_token_lifetime: int = 1800  # flag tokens living longer (exp - iat); 0: off
    hygiene_require_jti: bool = True  # flag tokens without `jti`
    hygiene_response: str = "alert"  # record, alert, approve, suspend or revoke
    approval_ttl: int = 86400  # how long an `approve` response holds for an agent
    webhook_url: str = ""  # POST every alert here, signed (https, or http to loopback)
    webhook_secret_file: str = ""  # the webhook's signing secret; required with the URL
    webhook_timeout_ms: int = 2000  # per delivery attempt


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    identity: IdentitySettings
    policies: PoliciesSettings
    store: StoreSettings
    registry: RegistrySettings
    grants: GrantsSettings
    admin: AdminSettings
    audit: AuditSettings
    tracing: TracingSettings
    base_dir: Path  # relative paths in the file resolve against its directory
    access: AccessSettings = AccessSettings()
    detect: DetectSettings = DetectSettings()
    connections: ConnectionsSettings = ConnectionsSettings()

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "identity": IdentitySettings,
    "policies": PoliciesSettings,
    "store": StoreSettings,
    "registry": RegistrySettings,
    "grants": GrantsSettings,
    "admin": AdminSettings,
    "audit": AuditSettings,
    "tracing": TracingSettings,
    "access": AccessSettings,
    "detect": DetectSettings,
    "connections": ConnectionsSettings,
}
# Keys that once existed, and why they are gone.
_RETIRED = {
    "audit.on_failure": "is gone: Lasthop never allows a request it cannot record; remove the key",
}
_DURATION_KEYS = {
    "identity.max_token_lifetime",
    "grants.max_ttl",
    "detect.cooldown",
    "detect.breadth_window",
    "detect.rate_window",
    "detect.rate_baseline",
    "detect.probing_window",
    "detect.novelty_learning",
    "detect.hygiene_token_lifetime",
    "detect.approval_ttl",
    "access.pending_ttl",
    "access.break_glass_max_ttl",
}
# `LASTHOP_*` variables that are not settings: the CLI's, and the scripts'. Any other
# `LASTHOP_*` variable that names no setting stops start-up: a typo must not pass silently.
CLIENT_VARIABLES = {
    "LASTHOP_ADMIN_URL": "the admin API address the CLI calls",
    "LASTHOP_ADMIN_TOKEN": "the admin bearer token the CLI sends",
    "LASTHOP_ADMIN_TOKEN_FILE": "a file holding the admin bearer token the CLI sends",
    "LASTHOP_ADMIN_CA": "the CA certificate the CLI verifies a TLS admin listener with",
    "LASTHOP_ADMIN_CERT": "the client certificate the CLI presents to an mTLS admin listener",
    "LASTHOP_ADMIN_KEY": "the private key of that client certificate",
    "LASTHOP_FUZZ_EXAMPLES": "tests/test_fuzz.py: more (and random) examples than the suite's",
    "LASTHOP_TOKEN": "the agent's own delegated token `lasthop access` sends",
    "LASTHOP_TOKEN_FILE": "a file holding the agent's own delegated token `lasthop access` sends",
    "LASTHOP_VENV": "the virtualenv scripts/test and scripts/demo install into",
}


def load(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (None: defaults only), apply environment overrides, validate."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError("--config", f"file `{file}` not found") from err
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError("--config", f"`{file}` is not valid TOML: {err}") from err
        base_dir = file.resolve().parent
    for name in raw:
        if name not in _SECTIONS:
            raise ConfigError(name, f"unknown section; expected one of {sorted(_SECTIONS)}")
    _refuse_unknown_variables(env)
    sections = {
        name: _section(name, cls, raw.get(name, {}), env) for name, cls in _SECTIONS.items()
    }
    settings = Settings(**sections, base_dir=base_dir)
    _validate(settings)
    return settings


def setting_variables() -> dict[str, str]:
    """Every `LASTHOP_<SECTION>_<KEY>` a setting reads -> its dotted key."""
    return {
        f"LASTHOP_{name.upper()}_{f.name.upper()}": f"{name}.{f.name}"
        for name, cls in _SECTIONS.items()
        for f in fields(cls)
    }


def _refuse_unknown_variables(env: Mapping[str, str]) -> None:
    """A `LASTHOP_*` variable that is neither a setting nor the CLI's is a typo: stop."""
    known = setting_variables()
    for name in sorted(env):
        if not name.startswith("LASTHOP_") or name in known or name in CLIENT_VARIABLES:
            continue
        close = difflib.get_close_matches(name, [*known, *CLIENT_VARIABLES], n=1, cutoff=0.85)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise ConfigError(
            name, f"unknown environment variable: no setting reads it (unset it){hint}"
        )


def _section(name: str, cls: type[Any], values: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(name, "must be a table")
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if f"{name}.{key}" in _RETIRED:
            raise ConfigError(f"{name}.{key}", _RETIRED[f"{name}.{key}"])
        if key not in known:
            raise ConfigError(f"{name}.{key}", f"unknown key; expected one of {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, f in known.items():
        dotted = f"{name}.{key}"
        env_name = f"LASTHOP_{name.upper()}_{key.upper()}"
        default = f.default
        if env_name in env:
            kwargs[key] = _from_env(env_name, env[env_name], default, dotted)
        elif key in values:
            kwargs[key] = _cast(dotted, values[key], default)
    return cls(**kwargs)


def _from_env(env_name: str, text: str, default: Any, dotted: str) -> Any:
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(env_name, f"`{text}` is not true or false")
        return text.lower() in ("true", "1")
    if isinstance(default, tuple):
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return parse_duration(text) if dotted in _DURATION_KEYS else int(text)
        except ValueError:
            if dotted in _DURATION_KEYS:
                try:
                    return int(text)
                except ValueError:
                    pass
            raise ConfigError(env_name, f"`{text}` is not an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(env_name, f"`{text}` is not a number") from None
    return text


def _cast(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got `{value!r}`")
        return value
    if isinstance(default, int):
        if key in _DURATION_KEYS and isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError as err:
                raise ConfigError(key, str(err)) from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(key, f"must be an integer, got `{value!r}`")
        return value
    if isinstance(default, float):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(key, f"must be a number, got `{value!r}`")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, "must be a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got `{value!r}`")
    return value


def _validate(s: Settings) -> None:
    _validate_server(s.server)
    _validate_identity(s.identity)
    _validate_store(s.store)
    _validate_registry(s.registry)
    _positive("grants.max_ttl", s.grants.max_ttl)
    _validate_audit(s.audit)
    if not s.admin.audience:
        raise ConfigError("admin.audience", "must not be empty")
    _validate_policies(s.policies)
    _validate_tracing(s.tracing)
    _validate_access(s.access)
    _validate_detect(s.detect)
    _range("connections.max_duration_seconds", s.connections.max_duration_seconds, 1, 86_400)


def _validate_server(s: ServerSettings) -> None:
    _range("server.threads", s.threads, 0, MAX_THREADS)
    for key, addr in (("server.listen", s.listen), ("server.admin_listen", s.admin_listen)):
        if addr.startswith(UNIX_PREFIX):
            unix_path(key, addr)
        else:
            split_address(key, addr)
    split_address("server.metrics_listen", s.metrics_listen)
    for prefix, cert, key, ca in (
        ("server.tls", s.tls_cert, s.tls_key, s.tls_client_ca),
        ("server.admin_tls", s.admin_tls_cert, s.admin_tls_key, s.admin_tls_client_ca),
    ):
        if bool(cert) != bool(key):
            missing = f"{prefix}_key" if cert else f"{prefix}_cert"
            raise ConfigError(missing, f"{prefix}_cert and {prefix}_key go together")
        if ca and not cert:
            raise ConfigError(f"{prefix}_client_ca", f"needs {prefix}_cert and {prefix}_key")
    for name in s.method_override_headers:
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(
                "server.method_override_headers",
                f"`{name}` is not a lowercase header name (letters, digits, `-`)",
            )
    if s.health_listen:
        split_address("server.health_listen", s.health_listen)
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(
            "server.log_format", f"`{s.log_format}` is not one of {list(LOG_FORMATS)}"
        )
    if s.log_level not in LOG_LEVELS:
        raise ConfigError("server.log_level", f"`{s.log_level}` is not one of {list(LOG_LEVELS)}")
    _range("server.latency_budget_ms", s.latency_budget_ms, 1, 10_000)
    _range("server.check_deadline_ms", s.check_deadline_ms, 1, 60_000)


def _validate_tracing(t: TracingSettings) -> None:
    if t.endpoint and not t.endpoint.startswith(("http://", "https://")):
        raise ConfigError("tracing.endpoint", f"`{t.endpoint}` must be an http:// or https:// URL")
    if not t.service_name:
        raise ConfigError("tracing.service_name", "must not be empty")
    if not 0.0 <= t.sample_ratio <= 1.0:
        raise ConfigError(
            "tracing.sample_ratio", f"must be between 0 and 1, got `{t.sample_ratio}`"
        )


def _validate_identity(i: IdentitySettings) -> None:
    if not i.issuer:
        raise ConfigError("identity.issuer", "must not be empty")
    if not i.audiences:
        raise ConfigError("identity.audiences", "must name at least one audience")
    if not i.algorithms:
        raise ConfigError("identity.algorithms", "must name at least one algorithm")
    for alg in i.algorithms:
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(
                "identity.algorithms",
                f"`{alg}` is not allowed; use asymmetric ones from {sorted(ASYMMETRIC_ALGORITHMS)}",
            )
    if not i.jwks:
        raise ConfigError("identity.jwks", "must be a file path or an https URL")
    if i.jwks.startswith("http://"):
        raise ConfigError("identity.jwks", "a JWKS URL must use https")
    _positive("identity.jwks_refresh_seconds", i.jwks_refresh_seconds)
    _range("identity.jwks_refetch_min_seconds", i.jwks_refetch_min_seconds, 1, 3600)
    if i.jwks_ca_file and not i.jwks.startswith("https://"):
        raise ConfigError("identity.jwks_ca_file", "is for an https `identity.jwks` URL only")
    _range("identity.leeway_seconds", i.leeway_seconds, 0, 300)
    _positive("identity.max_token_lifetime", i.max_token_lifetime)
    _range("identity.max_chain_depth", i.max_chain_depth, 1, 16)
    _validate_spiffe(i)


def _validate_spiffe(i: IdentitySettings) -> None:
    if i.spiffe_trust_domain:
        try:
            spiffe.trust_domain(i.spiffe_trust_domain)
        except ValueError as err:
            raise ConfigError("identity.spiffe_trust_domain", str(err)) from None
    try:
        spiffe_binding(i)
    except ValueError as err:
        raise ConfigError("identity.spiffe_id_template", str(err)) from None


def spiffe_binding(i: IdentitySettings) -> spiffe.Binding:
    """Which SPIFFE ID each agent must present; raises ValueError on a bad template."""
    return spiffe.Binding(trust_domain=i.spiffe_trust_domain, template=i.spiffe_id_template)


def _validate_store(s: StoreSettings) -> None:
    _range("store.timeout_ms", s.timeout_ms, 1, 10_000)
    _range("store.admin_timeout_ms", s.admin_timeout_ms, 1, 60_000)
    url = s.redis_url
    if url and not url.startswith(REDIS_SCHEMES):
        raise ConfigError(
            "store.redis_url", f"`{url}` must start with one of {', '.join(REDIS_SCHEMES)}"
        )
    if s.redis_cluster and not url:
        raise ConfigError("store.redis_cluster", "needs store.redis_url")
    _range("store.cache_ttl_ms", s.cache_ttl_ms, 0, 60_000)
    _range("store.revoke_replicas", s.revoke_replicas, 0, 16)
    _range("store.revoke_wait_ms", s.revoke_wait_ms, 1, 10_000)
    _range("store.use_replicas", s.use_replicas, 0, 16)
    sentinel = url.startswith(("redis+sentinel://", "rediss+sentinel://"))
    if s.sentinel_password and not sentinel:
        raise ConfigError("store.sentinel_password", "needs a redis+sentinel:// store.redis_url")


def _validate_registry(r: RegistrySettings) -> None:
    _range("registry.medium_risk_from", r.medium_risk_from, 0, 100)
    _range("registry.high_risk_from", r.high_risk_from, 0, 100)
    if r.medium_risk_from > r.high_risk_from:
        raise ConfigError("registry.medium_risk_from", "must not exceed registry.high_risk_from")


def _validate_policies(p: PoliciesSettings) -> None:
    if not p.dir:
        raise ConfigError("policies.dir", "must not be empty")
    if p.mode not in ("enforce", "dry-run"):
        raise ConfigError("policies.mode", f"`{p.mode}` is not enforce or dry-run")
    if p.mode == "dry-run" and not p.allow_dry_run:
        raise ConfigError(
            "policies.mode",
            "dry-run enforces no policy or grant; it refuses to "
            "start unless policies.allow_dry_run = true",
        )
    if p.reload_interval_seconds < 0:
        raise ConfigError("policies.reload_interval_seconds", "must be 0 (off) or positive")


def _validate_audit(a: AuditSettings) -> None:
    _positive("audit.queue_size", a.queue_size)
    if not a.path:
        raise ConfigError("audit.path", "must not be empty")
    try:
        _ = a.fsync_interval_seconds
    except ValueError as err:
        raise ConfigError("audit.fsync", str(err)) from None
    _positive("audit.checkpoint_records", a.checkpoint_records)
    _range("audit.checkpoint_seconds", a.checkpoint_seconds, 1, 86_400)
    if a.rotate_bytes and a.rotate_bytes < 1024:
        raise ConfigError(
            "audit.rotate_bytes", f"must be 0 (never) or at least 1024, got `{a.rotate_bytes}`"
        )
    _range("audit.receipt_ttl_seconds", a.receipt_ttl_seconds, 1, 3600)


def _validate_detect(d: DetectSettings) -> None:
    for name in ("breadth", "rate", "probing", "novelty", "hours", "hygiene"):
        response = getattr(d, f"{name}_response")
        if response not in RESPONSES:
            raise ConfigError(f"detect.{name}_response", f"`{response}` is not one of {RESPONSES}")
    for key in ("cooldown", "breadth_window", "rate_window", "probing_window", "approval_ttl"):
        _range(f"detect.{key}", getattr(d, key), 1, 7 * 86400)
    if d.rate_baseline < 2 * d.rate_window:
        raise ConfigError("detect.rate_baseline", "must be at least twice detect.rate_window")
    _range("detect.rate_factor", d.rate_factor, 2, 1000)
    for key in ("breadth_patients", "breadth_user_patients", "rate_min"):
        _range(f"detect.{key}", getattr(d, key), 0, 1_000_000)
    for key in ("probing_denials", "probing_token_denials"):
        _range(f"detect.{key}", getattr(d, key), 0, 1_000_000)
    _range("detect.novelty_learning", d.novelty_learning, 0, 365 * 86400)
    _range("detect.hygiene_token_lifetime", d.hygiene_token_lifetime, 0, 365 * 86400)
    if not re.fullmatch(r"[A-Z][A-Za-z0-9_]*", d.breadth_entity):
        raise ConfigError("detect.breadth_entity", f"`{d.breadth_entity}` is not an entity type")
    _range("detect.webhook_timeout_ms", d.webhook_timeout_ms, 1, 60_000)
    _check_webhook("detect", d.webhook_url, d.webhook_secret_file)


UNIX_PREFIX = "unix:"


def unix_path(key: str, addr: str) -> str:
    """`unix:/abs/path` -> `/abs/path`; the socket's directory must exist when serving."""
    path = addr.removeprefix(UNIX_PREFIX)
    if not path.startswith("/") or path.startswith("//") or "\x00" in path:
        raise ConfigError(key, f"`{addr}` is not `unix:/absolute/path`")
    if len(path.encode()) > 107:
        raise ConfigError(key, f"`{addr}`: a Unix socket path is at most 107 bytes")
    return path


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _validate_access(a: AccessSettings) -> None:
    _range("access.pending_ttl", a.pending_ttl, 1, 86_400)
    _range("access.break_glass_max_ttl", a.break_glass_max_ttl, 1, 86_400)
    _range("access.max_wait_seconds", a.max_wait_seconds, 0, 3600)
    _range("access.webhook_timeout_ms", a.webhook_timeout_ms, 1, 60_000)
    _range("access.webhook_attempts", a.webhook_attempts, 1, 20)
    _check_webhook("access", a.webhook_url, a.webhook_secret_file)


def _check_webhook(section: str, url: str, secret_file: str) -> None:
    """A webhook URL is https, or plain http to loopback; it needs its signing secret."""
    if not url:
        return
    host = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    loopback = host.rpartition(":")[0] in LOOPBACK_HOSTS or host in LOOPBACK_HOSTS
    if not url.startswith("https://") and not (url.startswith("http://") and loopback):
        raise ConfigError(
            f"{section}.webhook_url", f"`{url}` must be https (plain http only to loopback)"
        )
    if not secret_file:
        raise ConfigError(
            f"{section}.webhook_secret_file",
            f"is required with {section}.webhook_url: the signing secret",
        )


def split_address(key: str, addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"`{addr}` is not host:port")
    return host.strip("[]"), int(port)


def _positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be positive, got `{value}`")


def _range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}, got `{value}`")
