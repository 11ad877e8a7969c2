"""What detection is told: `[detect]`, an agent's working hours, the alert webhook, scenario risk.

Every bad value is refused at start-up (or by the admin API, or by `policy test`)
with a message naming it, and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from authz import config
from authz.access import webhook
from authz.detect.respond import WEBHOOK_ATTEMPTS, WebhookReport, alert_body
from authz.errors import ConfigError, PolicyLoadError, ScenarioError
from authz.model import Agent, WorkingHours
from authz.policy import load as policy_load
from authz.policy import scenarios
from tests.conftest import POLICIES

# --- [detect] ---------------------------------------------------------------------------------


def test_defaults_watch_every_check_and_alert() -> None:
    d = config.load(None, environ={}).detect
    assert d.enabled and d.breadth_patients == 25 and d.breadth_window == 600
    assert (d.breadth_response, d.rate_response, d.probing_response) == ("alert",) * 3
    assert d.novelty_response == "record" and d.novelty_learning == 86400


def test_the_example_section_and_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "lasthop.toml"
    path.write_text('[detect]\nbreadth_window = "10m"\nbreadth_response = "suspend"\n')
    d = config.load(path, environ={"LASTHOP_DETECT_RATE_WINDOW": "30s"}).detect
    assert (d.breadth_window, d.breadth_response, d.rate_window) == (600, "suspend", 30)


@pytest.mark.parametrize(
    ("toml", "key", "says"),
    [
        ('breadth_response = "ban"', "detect.breadth_response", "`ban` is not one of"),
        ("breadth_window = 0", "detect.breadth_window", "between 1 and"),
        ('rate_baseline = "1m"', "detect.rate_baseline", "twice detect.rate_window"),
        ("rate_factor = 1", "detect.rate_factor", "between 2 and 1000"),
        ("probing_denials = -1", "detect.probing_denials", "between 0 and"),
        ('breadth_entity = "patient"', "detect.breadth_entity", "is not an entity type"),
        ('webhook_url = "ftp://x"', "detect.webhook_url", "must be https"),
        ('webhook_url = "http://siem.test/x"', "detect.webhook_url", "only to loopback"),
        ('webhook_url = "https://x/hook"', "detect.webhook_secret_file", "is required"),
        ('cooldown = "10 minutes"', "detect.cooldown", "is not a duration"),
        ("hunting = true", "detect.hunting", "unknown key"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_key(
    tmp_path: Path, toml: str, key: str, says: str
) -> None:
    path = tmp_path / "lasthop.toml"
    path.write_text(f"[detect]\n{toml}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    assert info.value.key == key and says in str(info.value)


def test_a_bad_environment_override_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(None, environ={"LASTHOP_DETECT_BREADTH_PATIENTS": "many"})
    assert info.value.key == "LASTHOP_DETECT_BREADTH_PATIENTS"


def test_an_unusable_webhook_secret_stops_start_up_naming_detects_key(tmp_path: Path) -> None:
    key = "detect.webhook_secret_file"
    with pytest.raises(ConfigError) as missing:
        webhook.read_secret(tmp_path / "nope", key)
    assert missing.value.key == key and "cannot read" in str(missing.value)
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        webhook.read_secret(short, key)


# --- working hours ----------------------------------------------------------------------------


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("hours", "inside", "outside"),
    [
        ("07:00-19:00", "2026-11-30T07:00:00+00:00", "2026-11-30T19:00:00+00:00"),
        ("Mon-Fri 07:00-19:00", "2026-12-04T12:00:00+00:00", "2026-12-05T12:00:00+00:00"),
        ("22:00-06:00", "2026-11-30T05:59:00+00:00", "2026-11-30T06:00:00+00:00"),
        ("Fri 22:00-06:00", "2026-12-05T01:00:00+00:00", "2026-12-06T01:00:00+00:00"),
        ("Fri-Mon 09:00-10:00", "2026-11-30T09:30:00+00:00", "2026-12-01T09:30:00+00:00"),
        ("Mon-Fri 08:00-17:00, Sat 09:00-12:00", "2026-12-05T10:00:00+00:00",
         "2026-12-05T13:00:00+00:00"),
        ("09:00-17:00 America/New_York", "2026-11-30T15:00:00+00:00", "2026-11-30T13:00:00+00:00"),
        ("00:00-24:00", "2026-11-30T23:59:59+00:00", ""),
    ],
)  # fmt: skip
def test_working_hours(hours: str, inside: str, outside: str) -> None:
    declared = WorkingHours.parse(hours)
    assert declared.contains(at(inside))
    if outside:
        assert not declared.contains(at(outside))


@pytest.mark.parametrize(
    ("hours", "says"),
    [
        ("9-5", "is not a span like"),
        ("07:00-07:00", "the range is empty"),
        ("25:00-26:00", "times run from 00:00 to 24:00"),
        ("Mon-Fry 07:00-19:00", "days are Mon"),
        ("07:00-19:00 Mars/Olympus", "unknown time zone `Mars/Olympus`"),
        ("07:00-19:00,", "is not a span like"),
    ],
)
def test_bad_working_hours_name_the_problem(hours: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        WorkingHours.parse(hours)
    with pytest.raises(ValueError, match=r"agent `night-bot`: `hours`: "):
        Agent("night-bot", "dr-alice", 10, "active", hours=hours).check()


def test_a_seed_with_bad_hours_is_refused_with_its_file_and_line(tmp_path: Path) -> None:
    import shutil

    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    entities = directory / "entities.json"
    entities.write_text(
        entities.read_text().replace('"risk": 20, ', '"risk": 20, "hours": "9-5", ', 1)
    )
    with pytest.raises(PolicyLoadError) as info:
        policy_load.load(directory)
    assert "agent `scribe`: `hours`: `9-5` is not a span" in str(info.value)
    assert info.value.line is not None
    entities.write_text(entities.read_text().replace('"9-5"', '"Mon-Fri 07:00-19:00"'))
    assert policy_load.load(directory).agents["scribe"].hours == "Mon-Fri 07:00-19:00"


# --- the webhook ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[int, dict[str, str], bytes]], list[int]]]:
    """A local receiver answering with the statuses queued in `script` (then 204)."""
    got: list[tuple[int, dict[str, str], bytes]] = []
    script: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = script.pop(0) if script else 204
            got.append((status, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got, script
    finally:
        server.shutdown()
        server.server_close()


SECRET = b"0123456789abcdef-secret"


def _hook(url: str, acted: list[tuple[str, bool]]) -> webhook.Webhook:
    class Observer:
        def acted(self, action: str, ok: bool) -> None:
            acted.append((action, ok))

        def detected(self, detector: str, kind: str, response: str) -> None:
            return None

        def contained(self, seconds: float) -> None:
            return None

        def windows_failed(self) -> None:
            return None

    report = WebhookReport(Observer())
    return webhook.Webhook(url, SECRET, attempts=WEBHOOK_ATTEMPTS, timeout=2.0, observer=report)


def test_an_alert_is_signed_as_the_access_webhook_signs(receiver: Any) -> None:
    """Standard Webhooks: a receiver verifies detection's alerts as it does access requests'."""
    url, got, _ = receiver
    detail = {"agent": "scribe", "detector": "breadth", "kind": "patients"}
    body = alert_body(detail, 1767225600.0)
    assert asyncio.run(_hook(url, []).deliver(body))
    ((status, headers, sent),) = got
    doc = json.loads(sent)
    assert status == 204 and sent == body
    assert doc == {
        "type": "detection.threat_detected",
        "timestamp": doc["timestamp"],
        "data": detail,
    }
    assert doc["timestamp"].startswith("2026-01-01T00:00:00")
    message_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    assert message_id.startswith("msg_") and abs(timestamp - time.time()) < 60
    assert headers["webhook-signature"] == webhook.sign(SECRET, message_id, timestamp, sent)
    assert headers["webhook-signature"] != webhook.sign(
        b"another-secret-16b", message_id, timestamp, sent
    )


def test_a_failing_receiver_is_retried_then_counted_failed(
    receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook, "FIRST_BACKOFF", 0.01)
    url, got, script = receiver
    acted: list[tuple[str, bool]] = []
    hook = _hook(url, acted)
    script.extend([500, 503])
    assert asyncio.run(hook.deliver(b"{}"))
    assert [s for s, _, _ in got] == [500, 503, 204] and acted == [("webhook", True)]
    assert len({h["webhook-id"] for _, h, _ in got}) == 1  # one message, retried
    script.extend([500] * WEBHOOK_ATTEMPTS)
    assert not asyncio.run(hook.deliver(b"{}"))
    assert acted[-1] == ("webhook", False) and len(acted) == 2
    dead = _hook("http://127.0.0.1:9/hook", acted)
    assert not asyncio.run(dead.deliver(b"{}")) and acted[-1] == ("webhook", False)


# --- scenario risk ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("risk", "says"),
    [
        ("{ probing = 3 }", "unknown risk key `probing`"),
        ('{ denials = "many" }', "risk `denials` must be int"),
        ("{ off_hours = 1 }", "risk `off_hours` must be bool"),
        ("3", "`risk` must be a table"),
    ],
)
def test_a_scenario_with_a_bad_risk_table_names_it(tmp_path: Path, risk: str, says: str) -> None:
    path = tmp_path / "scenarios.toml"
    path.write_text(
        f'[[scenario]]\nname = "x"\nmethod = "GET"\npath = "/"\nexpect = "deny"\n'
        f'reason = "no_route"\nrisk = {risk}\n'
    )
    with pytest.raises(ScenarioError, match=says):
        scenarios.load(path)
