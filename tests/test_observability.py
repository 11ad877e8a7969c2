"""What an SRE reads on day one: log lines with stable events, metrics, the start-up summary."""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from authz import config
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.server import app as app_module
from authz.server import logs
from authz.server.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


# --- log lines --------------------------------------------------------------------------------


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("authz.test").makeRecord(
        "authz.test", logging.WARNING, __file__, 1, msg, args, None, extra=extra
    )
    return record


def test_a_json_line_names_its_event_and_carries_its_fields() -> None:
    line = logs.JsonFormatter().format(
        _record("store: %s", "redis", event="server.store", trace_id="ab" * 16)
    )
    doc = json.loads(line)
    assert doc["event"] == "server.store" and doc["level"] == "warning"
    assert doc["message"] == "store: redis" and doc["trace_id"] == "ab" * 16
    assert doc["time"].endswith("Z") and "\n" not in line


def test_a_library_line_takes_its_loggers_name_as_event() -> None:
    record = logging.getLogger("grpc._cython").makeRecord(
        "grpc._cython", logging.ERROR, __file__, 1, "boom", (), None
    )
    assert json.loads(logs.JsonFormatter().format(record))["event"] == "grpc._cython"
    assert logs.TextFormatter().format(record).endswith("ERROR grpc._cython: boom")


def test_configure_sets_the_format_and_the_level() -> None:
    stream = io.StringIO()
    root, ours = logging.getLogger(), logging.getLogger("authz")
    before = (list(root.handlers), root.level, ours.level)
    try:
        logs.configure(config.ServerSettings(log_format="json", log_level="warning"), stream)
        logging.getLogger("authz.x").info("hidden", extra={"event": "x.hidden"})
        logging.getLogger("authz.x").warning("shown", extra={"event": "x.shown"})
        logs.configure(config.ServerSettings(log_format="json", log_level="debug"), stream)
        logging.getLogger("authz.x").debug("ours", extra={"event": "x.ours"})
        logging.getLogger("asyncio").debug("a library's debug line stays out")
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
        ours.setLevel(before[2])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["x.shown", "x.ours"]


def _log_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted((ROOT / "authz").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("debug", "info", "warning", "error", "exception")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
            ):
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return calls


def _event_of(call: ast.Call) -> str | None:
    extra = next((k.value for k in call.keywords if k.arg == "extra"), None)
    if isinstance(extra, ast.Dict):
        for key, value in zip(extra.keys, extra.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "event":
                return str(value.value) if isinstance(value, ast.Constant) else None
        return None
    if isinstance(extra, ast.Call) and extra.args and isinstance(extra.args[0], ast.Constant):
        return str(extra.args[0].value)  # _fields("check.failed", ...)
    return None


def test_every_log_line_lasthop_writes_names_a_stable_event() -> None:
    calls = _log_calls()
    assert len(calls) > 20
    missing = [where for where, call in calls if not _event_of(call)]
    assert missing == []
    for _, call in calls:
        event = _event_of(call) or ""
        assert event.count(".") == 1 and event == event.lower(), event


# --- metrics ----------------------------------------------------------------------------------


def _exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_process_platform_and_build_metrics_are_exported() -> None:
    text = _exposition(Metrics(CollectorRegistry()))
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert f"\n{name}" in text, name
    assert 'lasthop_build_info{python="' in text


def test_every_labelled_counter_starts_at_zero_for_every_value() -> None:
    """Issue 18: the reload failure series was born at 1, so `increase()` in
    LasthopPolicyReloadFailing never saw the first failure after a restart."""
    text = _exposition(Metrics(CollectorRegistry()))
    assert 'lasthop_policy_reload_total{result="failure"} 0.0' in text
    assert 'lasthop_policy_reload_total{result="success"} 0.0' in text
    assert 'lasthop_store_errors_total{op="grants"} 0.0' in text
    assert 'lasthop_cache_requests_total{cache="agents",result="miss"} 0.0' in text


# --- the server's own summary -----------------------------------------------------------------


def _app(tmp_path: Path, env: dict[str, str]) -> app_module.App:
    jwks = DemoIssuer("ES256", kid="obs").write_jwks(tmp_path / "keys" / "jwks.json")
    return app_module.build(
        config.load(devstack.write_config(tmp_path, jwks), environ=env), CollectorRegistry()
    )


def test_the_summary_names_the_store_policy_audit_path_and_fsync(tmp_path: Path) -> None:
    app = _app(tmp_path, {"LASTHOP_AUDIT_FSYNC": "50ms"})
    summary = app.summary()
    assert summary["store"].startswith("embedded (single process only")
    assert summary["policy_version"] == app.pipeline.bundle.version
    assert summary["audit_path"] == str(tmp_path / "audit" / "decisions.jsonl")
    assert (summary["audit_fsync"], summary["tracing"]) == ("50ms", "off")


def test_cache_sizes_and_the_latency_budget_are_exported(tmp_path: Path) -> None:
    app = _app(tmp_path, {"LASTHOP_SERVER_LATENCY_BUDGET_MS": "25"})
    text = _exposition(app.metrics)
    for cache in ("decisions", "tokens", "cedar_outcomes", "grants", "agents"):
        assert f'lasthop_cache_entries{{cache="{cache}"}} 0.0' in text, cache
    assert "lasthop_check_latency_budget_seconds 0.025" in text


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://:hunter2@10.1.2.3:6379/2", "redis single server: 10.1.2.3:6379 db 2"),
        (
            "rediss+sentinel://:hunter2@s1:26379,s2:26379/mymaster",
            "redis sentinel (TLS): service `mymaster` via s1:26379,s2:26379",
        ),
        ("redis+cluster://n1:7000", "redis cluster: seeds n1:7000"),
    ],
)
def test_the_store_is_named_with_its_topology_and_never_its_password(url: str, words: str) -> None:
    settings = config.load(None, environ={"LASTHOP_STORE_REDIS_URL": url})
    assert app_module.store_topology(settings) == words
