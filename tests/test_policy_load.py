"""authz.policy_load: the shipped bundle, and every broken copy names its file and line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cedarpy
import pytest

from authz import policy, policy_load
from authz.errors import PolicyLoadError
from authz.model import Agent
from tests.conftest import POLICIES

SHIPPED_IDS = {
    "billing-bot-read-claims": ("billing-bot-read-claims.cedar", "permit", ""),
    "billing-never-clinical": ("billing-never-clinical.cedar", "forbid", "billing_not_clinical"),
    "grant-purpose-must-match": ("grant-purpose-must-match.cedar", "forbid", "purpose_mismatch"),
    "high-risk-agents-never-write": ("high-risk-agents-never-write.cedar", "forbid",
                                     "risk_too_high"),
    "med-reconciler-read-medications": ("med-reconciler-read-medications.cedar", "permit", ""),
    "scribe-read-records": ("scribe-read-records.cedar", "permit", ""),
    "scribe-write-notes": ("scribe-write-notes.cedar", "permit", ""),
}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def load_error(directory: Path) -> PolicyLoadError:
    with pytest.raises(PolicyLoadError) as info:
        policy_load.load(directory)
    return info.value


# --- the shipped directory -------------------------------------------------------------------


def test_shipped_bundle_counts(bundle: policy_load.PolicyBundle) -> None:
    assert len(bundle.policy_set) == 7
    assert len(bundle.policies) == 7
    assert bundle.actions == frozenset({"read", "write"})
    assert len(bundle.routes.routes) == 4
    assert len(bundle.version) == 16
    int(bundle.version, 16)


def test_every_policy_has_its_id_file_and_line(bundle: policy_load.PolicyBundle) -> None:
    by_id = {info.id: info for info in bundle.policies.values()}
    assert set(by_id) == set(SHIPPED_IDS)
    for policy_id, (file, effect, reason) in SHIPPED_IDS.items():
        info = by_id[policy_id]
        assert (info.file, info.effect, info.reason) == (file, effect, reason)
        # the line is where the statement starts: the @id annotation, after the comment
        assert info.line == line_of(POLICIES / file, "@id(")
        assert info.line == 2
    assert sorted(bundle.policies) == [f"policy{i}" for i in range(7)]


def test_cedar_ids_follow_file_order(bundle: policy_load.PolicyBundle) -> None:
    files = sorted(p.name for p in POLICIES.glob("*.cedar"))
    assert [bundle.policies[f"policy{i}"].file for i in range(7)] == files


def test_agents_seeded_including_the_suspended_one(bundle: policy_load.PolicyBundle) -> None:
    assert bundle.agents == {
        "scribe": Agent("scribe", "dr-alice", 20, "active"),
        "med-reconciler": Agent("med-reconciler", "dr-alice", 30, "active"),
        "billing-bot": Agent("billing-bot", "bob", 40, "active"),
        "orchestrator": Agent("orchestrator", "dr-alice", 10, "active"),
        "dictation-vendor": Agent("dictation-vendor", "dr-alice", 75, "active"),
        "chart-exporter": Agent("chart-exporter", "bob", 85, "suspended"),
    }
    assert not bundle.agents["chart-exporter"].active


def test_static_entities_hold_no_agents(bundle: policy_load.PolicyBundle) -> None:
    """Agents come from the registry per request, never from the static entity set."""
    probe = cedarpy.PolicySet.from_str(
        "permit (principal, action, resource) when { principal has risk };")
    request = {"principal": {"type": "Agent", "id": "scribe"},
               "action": {"type": "Action", "id": "read"},
               "resource": {"type": "User", "id": "bob"}, "context": {}}
    assert cedarpy.is_authorized(request, probe, bundle.entities).decision == \
        cedarpy.Decision.Deny
    with_agent = bundle.entities.with_added_json_str(
        json.dumps([policy.agent_entity(bundle.agents["scribe"])]))
    assert cedarpy.is_authorized(request, probe, with_agent).decision == cedarpy.Decision.Allow


def test_version_is_stable_and_tracks_content(copy: Path) -> None:
    first = policy_load.load(copy).version
    assert policy_load.load(copy).version == first
    assert policy_load.load(POLICIES).version == first  # same bytes, other directory
    edit(copy / "scribe-read-records.cedar", "// The scribe", "// The scribe (edited)")
    changed = policy_load.load(copy).version
    assert changed != first
    edit(copy / "routes.toml", "# Route table", "# The route table")
    assert policy_load.load(copy).version not in (first, changed)


def test_version_tracks_entities(copy: Path) -> None:
    first = policy_load.load(copy).version
    edit(copy / "entities.json", '"risk": 20', '"risk": 21')
    assert policy_load.load(copy).version != first


# --- broken directories ----------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err)
    assert "not found" in str(err)


@pytest.mark.parametrize("name", ["schema.cedarschema", "entities.json", "routes.toml"])
def test_missing_file(copy: Path, name: str) -> None:
    (copy / name).unlink()
    err = load_error(copy)
    assert err.path == str(copy / name)
    assert "file not found" in str(err)


def test_no_cedar_files(copy: Path) -> None:
    for path in copy.glob("*.cedar"):
        path.unlink()
    err = load_error(copy)
    assert "no `*.cedar` policy files" in str(err)
    assert str(copy) in str(err)


SCRIBE_NOTES = "scribe-write-notes.cedar"


@pytest.mark.parametrize(("old", "new", "needle"), [
    # each: the edit, and a string on the line the error is on
    ("resource is Notes", "resource is Notes,,", "resource is Notes,,"),
    ("context has grant }", "context has grant && }", "context has grant &&"),
    ('Agent::"scribe"', "Agent::scribe", "Agent::scribe"),
    ('Agent::"scribe"', 'Agent::"scribe', 'Agent::"scribe'),
    ("permit (", "permitt (", "permitt ("),
    ('action == Action::"write"', "action == ", "action == ,"),
    ("when {", "whenn {", "whenn {"),
    ("grant };", "grant }", "grant }"),  # missing `;`: end of input, the last line
    ("when { context has grant };",
     'when { context has grant };\n\n@id("second")\npermit (principal, action, resource)\n'
     "when { 1 + };", "when { 1 + }"),
], ids=["double-comma", "dangling-and", "unquoted-id", "unterminated-string", "bad-effect",
        "missing-action-entity", "bad-condition-keyword", "missing-semicolon", "second-policy"])
def test_syntax_error_names_file_and_line(copy: Path, old: str, new: str, needle: str) -> None:
    path = copy / SCRIBE_NOTES
    edit(path, old, new)
    line = line_of(path, needle)
    err = load_error(copy)
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert f"{SCRIBE_NOTES}:{line}" in str(err)


@pytest.mark.parametrize(("file", "old", "new", "attribute"), [
    ("high-risk-agents-never-write.cedar", "principal.risk", "principal.riskk", "riskk"),
    ("high-risk-agents-never-write.cedar", "when { principal.risk >= 70 }",
     "when {\n  principal.risk >= 70 &&\n  principal.riskk >= 1\n}", "riskk"),
    ("scribe-write-notes.cedar", "when { context has grant }",
     'when {\n  context has grant &&\n  context.purposee == "x"\n}', "purposee"),
    ("scribe-read-records.cedar", "when { context has grant }",
     "when { context has grant && resource.owner == principal }", "owner"),
], ids=["entity-attr", "entity-attr-multiline", "context-attr", "resource-attr"])
def test_unknown_attribute_names_attribute_file_and_line(copy: Path, file: str, old: str,
                                                        new: str, attribute: str) -> None:
    path = copy / file
    edit(path, old, new)
    line = line_of(path, f".{attribute}")
    err = load_error(copy)
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert f"{file}:{line}" in str(err)
    assert f"`{attribute}`" in str(err)
    # the message names the policy by its @id, not by cedar's positional id
    assert "policy0" not in str(err)


def test_unknown_entity_type_and_action_are_refused(copy: Path) -> None:
    edit(copy / SCRIBE_NOTES, "resource is Notes", "resource is Notez")
    err = load_error(copy)
    assert err.path == str(copy / SCRIBE_NOTES)
    assert "Notez" in str(err)
    assert "scribe-write-notes" in str(err)


def test_policy_without_id(copy: Path) -> None:
    path = copy / SCRIBE_NOTES
    edit(path, '@id("scribe-write-notes")\n', "")
    err = load_error(copy)
    assert err.path == str(path)
    assert err.line == line_of(path, "permit (")
    assert "@id" in str(err)


def test_policy_with_empty_id(copy: Path) -> None:
    edit(copy / SCRIBE_NOTES, '@id("scribe-write-notes")', '@id("")')
    assert "@id" in str(load_error(copy))


def test_duplicate_id_across_two_files(copy: Path) -> None:
    path = copy / SCRIBE_NOTES
    edit(path, '@id("scribe-write-notes")', '@id("scribe-read-records")')
    err = load_error(copy)
    assert err.path == str(path)
    assert err.line == line_of(path, "@id(")
    assert "duplicate" in str(err)
    assert "scribe-read-records.cedar" in str(err)  # names the other file


def test_duplicate_id_within_one_file(copy: Path) -> None:
    path = copy / SCRIBE_NOTES
    edit(path, "when { context has grant };",
         'when { context has grant };\n\n@id("scribe-write-notes")\n'
         "forbid (principal, action, resource);")
    err = load_error(copy)
    assert err.line == 10  # the second @id
    assert "duplicate" in str(err)


@pytest.mark.parametrize(("old", "new", "needle"), [
    (b"files the note", b"files the \xff note", b"files the"),
    (b"resource is Notes", b"resource is Notes // caf\xe9", b"caf"),
])
def test_non_utf8_cedar_file(copy: Path, old: bytes, new: bytes, needle: bytes) -> None:
    path = copy / SCRIBE_NOTES
    data = path.read_bytes()
    path.write_bytes(data.replace(old, new))
    line = next(i for i, text in enumerate(path.read_bytes().split(b"\n"), 1) if needle in text)
    err = load_error(copy)
    assert "not UTF-8" in str(err)
    assert err.line == line
    assert f"{SCRIBE_NOTES}:{line}" in str(err)


@pytest.mark.parametrize(("old", "new", "needle"), [
    ("  risk: Long,", "  risk: Long,,", "risk: Long,,"),
    ("  method: String,", "  method: Strin g,", "Strin g"),
    ("action write appliesTo {", "action write appliesTo {{", "appliesTo {{"),
], ids=["double-comma", "split-type-name", "double-brace"])
def test_schema_syntax_error(copy: Path, old: str, new: str, needle: str) -> None:
    path = copy / "schema.cedarschema"
    edit(path, old, new)
    line = line_of(path, needle)
    err = load_error(copy)
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert f"schema.cedarschema:{line}" in str(err)


def test_entities_invalid_json(copy: Path) -> None:
    path = copy / "entities.json"
    edit(path, '"risk": 20,', '"risk": 20')
    err = load_error(copy)
    assert err.path == str(path)
    assert err.line == line_of(path, '"risk": 20 "status"')
    assert err.column is not None and err.column > 1
    assert f"entities.json:{err.line}:{err.column}" in str(err)
    assert "invalid JSON" in str(err)


def test_entities_not_a_list(copy: Path) -> None:
    (copy / "entities.json").write_text('{"uid": {}}')
    assert "must be a JSON list" in str(load_error(copy))


@pytest.mark.parametrize(("old", "new", "entity_id"), [
    ('"risk": 30', '"risk": "high"', "med-reconciler"),
    ('{"uid": {"type": "User", "id": "bob"}', '{"uid": {"type": "Doctor", "id": "bob"}', "bob"),
    ('"owner": {"__entity": {"type": "User", "id": "bob"}}, "risk": 40, ',
     '"risk": 40, ', "billing-bot"),
])
def test_entity_not_matching_the_schema(copy: Path, old: str, new: str,
                                        entity_id: str) -> None:
    path = copy / "entities.json"
    edit(path, old, new)
    err = load_error(copy)
    assert err.path == str(path)
    assert entity_id in str(err)
    assert err.line == line_of(path, f'"id": "{entity_id}"')


@pytest.mark.parametrize("risk", ["150", "-1", "101"])
def test_agent_risk_out_of_range(copy: Path, risk: str) -> None:
    path = copy / "entities.json"
    edit(path, '"risk": 30', f'"risk": {risk}')
    err = load_error(copy)
    assert "med-reconciler" in str(err)
    assert "risk must be 0 to 100" in str(err)
    assert err.line == line_of(path, '"id": "med-reconciler"')


def test_agent_status_must_be_active_or_suspended(copy: Path) -> None:
    edit(copy / "entities.json", '"status": "suspended"', '"status": "retired"')
    err = load_error(copy)
    assert "chart-exporter" in str(err)
    assert "status active|suspended" in str(err)


def test_route_to_an_action_absent_from_the_schema(copy: Path) -> None:
    path = copy / "routes.toml"
    edit(path, 'action = "write"', 'action = "delete"')
    err = load_error(copy)
    assert err.path == str(path)
    assert "`delete` is not declared in the schema" in str(err)


def test_route_loads_when_the_schema_declares_the_action(copy: Path) -> None:
    edit(copy / "schema.cedarschema", "action write appliesTo",
         "action delete appliesTo {\n  principal: [Agent],\n  resource: [Notes],\n"
         "  context: CheckContext,\n};\n\naction write appliesTo")
    edit(copy / "routes.toml", 'action = "write"', 'action = "delete"')
    bundle = policy_load.load(copy)
    assert bundle.actions == frozenset({"read", "write", "delete"})
    assert bundle.routes.resolve("POST", "/patients/p/notes").action == "delete"


def test_template_policy_refused(copy: Path) -> None:
    edit(copy / SCRIBE_NOTES, 'principal == Agent::"scribe"', "principal == ?principal")
    assert "templates are not supported" in str(load_error(copy))


# --- schema_actions and statement_lines ------------------------------------------------------


@pytest.mark.parametrize(("schema", "actions"), [
    ("action read, write appliesTo { principal: [A], resource: [B] };", {"read", "write"}),
    ('action "view-chart" appliesTo { principal: [A], resource: [B] };', {"view-chart"}),
    ("action base;\naction read in [base] appliesTo { principal: [A], resource: [B] };",
     {"base", "read"}),
    ("// action commented appliesTo {};\naction real;", {"real"}),
])
def test_schema_actions(schema: str, actions: set[str]) -> None:
    assert policy_load.schema_actions(schema) == frozenset(actions)


def test_statement_lines_skip_comments_and_strings() -> None:
    text = "\n".join([
        "// a comment; with a semicolon",                   # 1
        '@id("one; two")',                                  # 2
        "permit (principal, action, resource)",             # 3
        'when { context.txn == "a;b\\";c" };',              # 4
        "",                                                 # 5
        "// another; comment",                              # 6
        '@id("three")',                                     # 7
        "forbid (principal, action, resource)",             # 8
        'when { context.request.path like "*//x;*" };',     # 9
        '@id("four") permit (principal, action, resource); @id("five")',  # 10
        "permit (principal, action, resource);",            # 11
    ])
    assert len(cedarpy.PolicySet.from_str(text)) == 4  # the text is valid Cedar
    assert policy_load.statement_lines(text) == [2, 7, 10, 10]


def test_statement_lines_of_shipped_files() -> None:
    for path in POLICIES.glob("*.cedar"):
        assert policy_load.statement_lines(path.read_text()) == [2], path.name


# --- nothing half-loaded ----------------------------------------------------------------------


BreakFn = Callable[[Path], None]


@pytest.mark.parametrize("brk", [
    lambda d: edit(d / SCRIBE_NOTES, "permit", "permit permit"),
    lambda d: edit(d / "entities.json", "[", "{"),
    lambda d: edit(d / "routes.toml", "[[route]]", "[[route]"),
])
def test_a_broken_file_raises_and_never_returns_a_bundle(copy: Path, brk: BreakFn) -> None:
    brk(copy)
    with pytest.raises(PolicyLoadError):
        policy_load.load(copy)
