"""`[[database]]` in the route table (`authz.policy.databases`) and `connections.*` in the
config: what loads, and every refusal naming the file or the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz import config
from authz.errors import ConfigError, PolicyLoadError, RouteError
from authz.model import EntityRef
from authz.policy import routes

ACTIONS = frozenset({"read", "connect"})
LISTENER = "spiffe://cluster.local/ns/ehr/sa/ehr-db"
GOOD = f"""\
[[database]]
listener = "{LISTENER}"
resource = 'Database::"ehr"'
"""


def load(tmp_path: Path, text: str) -> routes.RouteTable:
    path = tmp_path / "routes.toml"
    path.write_text(text, encoding="utf-8")
    return routes.load(path, ACTIONS)


def test_a_database_alone_is_a_route_table_and_connect_is_its_default_action(
    tmp_path: Path,
) -> None:
    found = load(tmp_path, GOOD).databases.resolve(LISTENER)
    assert (found.action, found.resource, found.phi) == (
        "connect",
        EntityRef("Database", "ehr"),
        True,
    )
    assert found.template == LISTENER  # what the audit record and explanations show


def test_the_listener_is_matched_whole(tmp_path: Path) -> None:
    table = load(tmp_path, GOOD)
    for other in (LISTENER + "x", LISTENER.upper(), LISTENER.rsplit("/", 1)[0], "ehr-db"):
        with pytest.raises(RouteError) as info:
            table.databases.resolve(other)
        assert info.value.reason == "no_database"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + 'phi = "yes"\n', "database 1: `action` must be a string, `phi` true or false"),
        (GOOD + 'owner = "x"\n', "database 1: unknown keys ['owner']"),
        (GOOD.replace(f'"{LISTENER}"', '"ehr-db"'), "database 1: `ehr-db` does not start with"),
        (GOOD.replace(f'"{LISTENER}"', f'"{LISTENER}/"'), "empty path segment"),
        (GOOD.replace("'Database::\"ehr\"'", '"ehr"'), "database 1: `ehr` is not a Cedar entity"),
        (GOOD + 'action = "drop"\n', "database 1: action `drop` is not declared in the schema"),
        (GOOD + GOOD, f"database listener `{LISTENER}` is declared twice"),
        ("database = 3\n", "`route`, `mcp` and `database` must be arrays of tables"),
        ("[database]\nlistener = 'x'\n", "`route`, `mcp` and `database` must be arrays of tables"),
    ],
)
def test_a_bad_database_entry_stops_loading_naming_it(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(PolicyLoadError) as info:
        load(tmp_path, text)
    assert message in str(info.value)
    assert str(tmp_path / "routes.toml") in str(info.value)


def test_connections_max_duration_is_read_and_bounded() -> None:
    assert config.load(None, environ={}).connections.max_duration_seconds == 300
    env = {"LASTHOP_CONNECTIONS_MAX_DURATION_SECONDS": "60"}
    assert config.load(None, environ=env).connections.max_duration_seconds == 60
    for bad in ("0", "86401"):
        env = {"LASTHOP_CONNECTIONS_MAX_DURATION_SECONDS": bad}
        with pytest.raises(ConfigError, match="connections.max_duration_seconds"):
            config.load(None, environ=env)
    with pytest.raises(ConfigError, match="LASTHOP_CONNECTIONS_MAX_DURATION_SECONDS"):
        config.load(None, environ={"LASTHOP_CONNECTIONS_MAX_DURATION_SECONDS": "5m"})
