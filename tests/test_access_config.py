"""The `[access]` settings: defaults, durations, overrides, and each refusal naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz import config
from authz.errors import ConfigError


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Settings:
    path = tmp_path / "lasthop.toml"
    path.write_text(text)
    return config.load(path, env or {})


def test_defaults_serve_one_machine() -> None:
    access = config.load(None, {}).access
    assert (access.pending_ttl, access.break_glass_max_ttl, access.webhook_url) == (300, 900, "")


def test_durations_and_overrides(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[access]\npending_ttl = "2m"\nbreak_glass_max_ttl = "30m"\n'
        'webhook_url = "https://inbox.hospital.test/lasthop"\nwebhook_secret_file = "s"\n',
        {"LASTHOP_ACCESS_PENDING_TTL": "10m", "LASTHOP_ACCESS_WEBHOOK_ATTEMPTS": "3"},
    )
    access = settings.access
    assert (access.pending_ttl, access.break_glass_max_ttl, access.webhook_attempts) == (
        600,
        1800,
        3,
    )


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        (
            'webhook_url = "http://inbox.hospital.test/x"\nwebhook_secret_file = "s"',
            "webhook_url",
            "https",
        ),
        ('webhook_url = "https://inbox.hospital.test/x"', "webhook_secret_file", "required"),
        ('pending_ttl = "soon"', "pending_ttl", "is not a duration"),
        ('break_glass_max_ttl = "25h"', "break_glass_max_ttl", "between 1 and 86400"),
        ("webhook_attempts = 0", "webhook_attempts", "between 1 and 20"),
        ("surprise = 1", "surprise", "unknown key"),
    ],
)
def test_each_bad_value_names_its_key(tmp_path: Path, text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f"[access]\n{text}\n")
    assert err.value.key == f"access.{key}" and says in str(err.value)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/inbox", "http://localhost/inbox", "http://[::1]:9/x"]
)
def test_plain_http_only_to_loopback(tmp_path: Path, url: str) -> None:
    text = f'[access]\nwebhook_url = "{url}"\nwebhook_secret_file = "s"\n'
    assert load(tmp_path, text).access.webhook_url == url
