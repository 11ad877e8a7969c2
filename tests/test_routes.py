"""authz.routes: the shipped route table, path hygiene, entity references, and load errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.errors import PolicyLoadError, RouteError
from authz.model import EntityRef
from authz.policy import routes
from tests.conftest import POLICIES

ACTIONS = frozenset({"read", "write", "connect"})


@pytest.fixture(scope="module")
def table() -> routes.RouteTable:
    return routes.load(POLICIES / "routes.toml", ACTIONS)


def reason_of(table: routes.RouteTable, method: str, path: str) -> str:
    with pytest.raises(RouteError) as info:
        table.resolve(method, path)
    assert info.value.status == 403
    return info.value.reason


# --- the shipped routes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "action", "resource", "parents", "template"),
    [
        (
            "GET",
            "/patients/p-1001/records",
            "read",
            EntityRef("Records", "p-1001"),
            (EntityRef("Patient", "p-1001"),),
            "/patients/{patient}/records",
        ),
        (
            "POST",
            "/patients/p-1001/notes",
            "write",
            EntityRef("Notes", "p-1001"),
            (EntityRef("Patient", "p-1001"),),
            "/patients/{patient}/notes",
        ),
        (
            "GET",
            "/patients/p-2002/medications",
            "read",
            EntityRef("Medications", "p-2002"),
            (EntityRef("Patient", "p-2002"),),
            "/patients/{patient}/medications",
        ),
        ("GET", "/claims/c-77", "read", EntityRef("Claim", "c-77"), (), "/claims/{claim}"),
        (
            "GET",
            "/patients/A_b.c~d-1/records",
            "read",
            EntityRef("Records", "A_b.c~d-1"),
            (EntityRef("Patient", "A_b.c~d-1"),),
            "/patients/{patient}/records",
        ),
    ],
)
def test_shipped_routes_resolve(
    table: routes.RouteTable,
    method: str,
    path: str,
    action: str,
    resource: EntityRef,
    parents: tuple[EntityRef, ...],
    template: str,
) -> None:
    found = table.resolve(method, path)
    assert found.action == action
    assert found.resource == resource
    assert found.parents == parents
    assert found.template == template
    assert found.phi is True


def test_shipped_table_has_the_four_routes_and_the_mcp_endpoint(
    table: routes.RouteTable,
) -> None:
    assert sorted((r.method, r.template) for r in table.routes) == [
        ("DELETE", "/mcp"),
        ("GET", "/claims/{claim}"),
        ("GET", "/mcp"),
        ("GET", "/patients/{patient}/medications"),
        ("GET", "/patients/{patient}/records"),
        ("POST", "/patients/{patient}/notes"),
    ]
    assert sorted(table.mcp["/mcp"].tools) == [
        "get_claims", "get_medications", "get_patient_record", "write_note",
    ]  # fmt: skip


@pytest.mark.parametrize("suffix", ["?a=1", "?x=/../etc&y=%2f", "#frag", "?q=1#frag", "?", "#../x"])
def test_query_and_fragment_ignored(table: routes.RouteTable, suffix: str) -> None:
    found = table.resolve("GET", "/patients/p-1001/records" + suffix)
    assert found.resource == EntityRef("Records", "p-1001")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/patients/p-1001/records"),
        ("PUT", "/patients/p-1001/notes"),
        ("GET", "/patients/p-1001/notes"),
        ("POST", "/patients/p-1001/records"),
        ("OPTIONS", "/claims/c-1"),
        ("get", "/patients/p-1001/records"),
        ("GET", "/patients/p-1001/labs"),
        ("GET", "/patients/p-1001"),
        ("GET", "/patients/p-1001/records/extra"),
        ("GET", "/"),
        ("GET", "/claims"),
        ("GET", "/patients/p-1001/records/"),  # trailing slash
        ("GET", "/claims/c-1/"),
    ],
)
def test_unknown_method_or_path_is_no_route(
    table: routes.RouteTable, method: str, path: str
) -> None:
    assert reason_of(table, method, path) == "no_route"


@pytest.mark.parametrize(
    "path",
    [
        "/patients/../claims/c-1",
        "/patients/p-1001/../p-2/records",
        "/patients/./p-1001/records",
        "/patients/p-1001/records/..",
        "/patients/p-1001/records/.",
        "//patients/p-1001/records",
        "/patients//records",
        "/patients/p-1001\\records",
        "/patients\\p-1001/records",
        "/patients/p-1001%2frecords",
        "/patients/p-1001%2Frecords",
        "/patients/%2e%2e/records",
        "/patients/%2E%2E/records",
        "/patients/p%5crecords",
        "/patients/p%5Crecords",
        "/patients/p-1001%00/records",
        "/patients/p 1001/records",
        "/patients/p\t1001/records",
        "/patients/p\n1001/records",
        "/patients/p\r1001/records",
        "/patients/p\x00/records",
        "/patients/p\x7f/records",
        "patients/p-1001/records",
        "",
        "?/patients/p-1001/records",
    ],
)
def test_aliasing_paths_are_invalid(table: routes.RouteTable, path: str) -> None:
    assert reason_of(table, "GET", path) == "invalid_path"


@pytest.mark.parametrize(
    "segment",
    [
        "p-1001;x",
        "p-1001,x",
        "p:1",
        "p@1",
        "p+1",
        "p=1",
        "p'1",
        'p"1',
        "p(1)",
        "p*",
        "p$1",
        "p!1",
        "p&1",
        "%41",
        "p%20x",
        "pé",
        "p\u2028x",
        "пациент",
        "p\u200bx",
        "a" * 129,
        ".hidden",
        ".x",
        ".1",
    ],
)
def test_param_outside_unreserved_charset_is_no_route(
    table: routes.RouteTable, segment: str
) -> None:
    assert reason_of(table, "GET", f"/patients/{segment}/records") == "no_route"


def test_param_can_be_128_characters(table: routes.RouteTable) -> None:
    found = table.resolve("GET", f"/claims/{'c' * 128}")
    assert found.resource == EntityRef("Claim", "c" * 128)


def test_param_may_hold_a_dot_after_the_first_character(table: routes.RouteTable) -> None:
    assert table.resolve("GET", "/claims/c.1").resource == EntityRef("Claim", "c.1")


def test_no_route_detail_escapes_control_characters(table: routes.RouteTable) -> None:
    with pytest.raises(RouteError) as info:
        table.resolve("GET", "/patients/p\u2028x/records")
    assert "\u2028" not in info.value.detail
    assert "\\u2028" in info.value.detail


# --- parse_entity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('Patient::"p-1"', EntityRef("Patient", "p-1")),
        ('Ns::Patient::"x"', EntityRef("Ns::Patient", "x")),
        ('A::B::C::"id with spaces"', EntityRef("A::B::C", "id with spaces")),
        ('Patient::""', EntityRef("Patient", "")),
    ],
)
def test_parse_entity_accepts(text: str, expected: EntityRef) -> None:
    assert EntityRef.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "p-1",
        "Patient::p",
        'Patient::"a\\"b"',
        'Patient::"a"b"',
        'patient::"p"',
        '::"p"',
        'Patient:"p"',
        'Patient::"p" ',
        ' Patient::"p"',
        'Patient::"p"x',
        "",
        'Ns::::Patient::"p"',
    ],
)
def test_parse_entity_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Cedar entity reference"):
        EntityRef.parse(text)


def test_entity_ref_round_trips_through_str() -> None:
    ref = EntityRef.parse('Patient::"p-1001"')
    assert str(ref) == 'Patient::"p-1001"'
    assert EntityRef.parse(str(ref)) == ref


# --- routes.load errors ---------------------------------------------------------------------

GOOD = """\
[[route]]
method = "GET"
path = "/patients/{patient}/records"
action = "read"
resource = 'Records::"{patient}"'
parents = ['Patient::"{patient}"']
"""


def write_routes(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_minimal_table(tmp_path: Path) -> None:
    table = routes.load(write_routes(tmp_path, GOOD), ACTIONS)
    found = table.resolve("GET", "/patients/p-9/records")
    assert (found.action, found.resource, found.phi) == ("read", EntityRef("Records", "p-9"), True)


def test_load_phi_false_and_lowercase_method(tmp_path: Path) -> None:
    text = GOOD.replace('method = "GET"', 'method = "get"') + "phi = false\n"
    found = routes.load(write_routes(tmp_path, text), ACTIONS).resolve("GET", "/patients/p/records")
    assert found.phi is False


def test_load_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    with pytest.raises(PolicyLoadError) as info:
        routes.load(path, ACTIONS)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_load_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    text = GOOD + '\n[[route]]\nmethod = "GET\npath = "/x"\n'
    broken_line = text.split("\n").index('method = "GET') + 1
    path = write_routes(tmp_path, text)
    with pytest.raises(PolicyLoadError) as info:
        routes.load(path, ACTIONS)
    assert info.value.line == broken_line
    assert f"{path}:{broken_line}" in str(info.value)
    assert "invalid TOML" in str(info.value)


def test_load_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_bytes(GOOD.encode() + b"# \xff\n")
    with pytest.raises(PolicyLoadError, match="not UTF-8") as info:
        routes.load(path, ACTIONS)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no `[[route]]`, `[[mcp]]` or `[[database]]` entries"),
        ("route = 1\n", "`route`, `mcp` and `database` must be arrays of tables"),
        (GOOD.replace('method = "GET"\n', ""), "route 1: missing key 'method'"),
        (GOOD.replace('action = "read"\n', ""), "route 1: missing key 'action'"),
        (
            GOOD.replace("resource = 'Records::\"{patient}\"'\n", ""),
            "route 1: missing key 'resource'",
        ),
        (GOOD.replace('path = "/patients/{patient}/records"\n', ""), "route 1: missing key 'path'"),
        (
            GOOD + GOOD.replace('method = "GET"', 'method = "FETCH"'),
            "route 2: method `FETCH` is not one of",
        ),
        (GOOD.replace('method = "GET"', 'method = "CONNECT"'), "method `CONNECT`"),
        (
            GOOD.replace('action = "read"', 'action = "delete"'),
            "route 1: action `delete` is not declared in the schema",
        ),
        (
            GOOD.replace("resource = 'Records::\"{patient}\"'", "resource = 'Records-{patient}'"),
            "route 1: `Records-{patient}` is not a Cedar entity reference",
        ),
        (
            GOOD.replace(
                "parents = ['Patient::\"{patient}\"']", "parents = ['Patient::{patient}']"
            ),
            "route 1: `Patient::{patient}` is not a Cedar entity reference",
        ),
        (
            GOOD.replace("resource = 'Records::\"{patient}\"'", "resource = 'Records::\"{id}\"'"),
            "route 1: `Records::\"{id}\"` uses unknown parameters ['id']",
        ),
        (
            GOOD.replace(
                "parents = ['Patient::\"{patient}\"']", "parents = ['Patient::\"{pat}\"']"
            ),
            "uses unknown parameters ['pat']",
        ),
        (GOOD + "phi = 1\n", "route 1: `phi` must be true or false"),
        (
            GOOD.replace('path = "/patients/{patient}/records"', 'path = "patients/{patient}"'),
            "route 1: path `patients/{patient}`",
        ),
        (
            GOOD.replace('path = "/patients/{patient}/records"', 'path = "/patients/../records"'),
            "route 1: path `/patients/../records`",
        ),
        (
            GOOD.replace(
                "parents = ['Patient::\"{patient}\"']", "parents = 'Patient::\"{patient}\"'"
            ),
            "route 1",
        ),
    ],
)
def test_load_refusals_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write_routes(tmp_path, text)
    with pytest.raises(PolicyLoadError) as info:
        routes.load(path, ACTIONS)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_load_without_actions_skips_the_schema_check(tmp_path: Path) -> None:
    text = GOOD.replace('action = "read"', 'action = "anything"')
    table = routes.load(write_routes(tmp_path, text))
    assert table.resolve("GET", "/patients/p/records").action == "anything"
