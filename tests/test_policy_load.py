"""authz.policy.load: the shipped bundle, and every broken copy names its file and line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cedarpy
import pytest

from authz.errors import PolicyLoadError
from authz.model import DEFAULT_TIERS, Agent, RiskTiers
from authz.policy import evaluate as policy
from authz.policy import load as policy_load
from authz.policy import locate
from tests.conftest import POLICIES, SCHEMA

# @id -> (file, effect, @reason, line of the statement: its @id, after the leading comment)
SHIPPED_IDS = {
    "agent-purpose-must-be-allowed": (
        "agent-purpose-must-be-allowed.cedar",
        "forbid",
        "purpose_not_allowed",
        4,
    ),  # three comment lines
    "agents-connect-to-mcp": ("agents-connect-to-mcp.cedar", "permit", "", 4),
    "billing-bot-read-claims": ("billing-bot-read-claims.cedar", "permit", "", 2),
    "billing-never-clinical": ("billing-never-clinical.cedar", "forbid", "billing_not_clinical", 3),
    "clinical-agents-connect-to-ehr-db": (
        "clinical-agents-connect-to-ehr-db.cedar",
        "permit",
        "",
        5,
    ),  # four comment lines
    "grant-purpose-must-match": ("grant-purpose-must-match.cedar", "forbid", "purpose_mismatch", 2),
    "high-risk-agents-never-write": (
        "high-risk-agents-never-write.cedar",
        "forbid",
        "risk_too_high",
        4,
    ),  # three comment lines
    "medication-history-at-most-a-year": (
        "medication-history-at-most-a-year.cedar",
        "forbid",
        "history_too_long",
        3,
    ),
    "med-reconciler-read-medications": ("med-reconciler-read-medications.cedar", "permit", "", 2),
    "scribe-read-records": ("scribe-read-records.cedar", "permit", "", 2),
    "scribe-write-notes": ("scribe-write-notes.cedar", "permit", "", 2),
}
SHIPPED_COUNT = 11
SEED = "entities.json"  # registered_by of every agent seeded from the policy directory


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
    assert len(SHIPPED_IDS) == SHIPPED_COUNT
    assert len(bundle.policy_set) == SHIPPED_COUNT
    assert len(bundle.policies) == SHIPPED_COUNT
    assert bundle.shadow_probe is None  # no shipped policy is in shadow mode
    assert bundle.actions == frozenset({"read", "write", "connect"})
    assert len(bundle.routes.routes) == 6
    assert len(bundle.routes.mcp["/mcp"].tools) == 4
    assert len(bundle.version) == 16
    int(bundle.version, 16)


def test_every_policy_has_its_id_file_and_line(bundle: policy_load.PolicyBundle) -> None:
    by_id = {info.id: info for info in bundle.policies.values()}
    assert set(by_id) == set(SHIPPED_IDS)
    for policy_id, (file, effect, reason, line) in SHIPPED_IDS.items():
        info = by_id[policy_id]
        assert (info.file, info.effect, info.reason, info.mode) == (file, effect, reason, "enforce")
        # the line is where the statement starts: the @id annotation, after the comment
        assert info.line == line_of(POLICIES / file, "@id(")
        assert info.line == line, policy_id
    assert sorted(bundle.policies) == sorted(f"policy{i}" for i in range(SHIPPED_COUNT))


def test_cedar_ids_follow_file_order(bundle: policy_load.PolicyBundle) -> None:
    files = sorted(p.name for p in POLICIES.glob("*.cedar"))
    assert len(files) == SHIPPED_COUNT
    assert [bundle.policies[f"policy{i}"].file for i in range(SHIPPED_COUNT)] == files
    assert files[0] == "agent-purpose-must-be-allowed.cedar"  # the new file sorts first


def test_agents_seeded_including_the_suspended_one(bundle: policy_load.PolicyBundle) -> None:
    assert bundle.agents == {
        "scribe": Agent(
            "scribe",
            "dr-alice",
            20,
            "active",
            description="drafts and files clinical notes from visit audio",
            allowed_purposes=("clinical-documentation",),
            created_at=0,
            registered_by=SEED,
        ),
        "med-reconciler": Agent(
            "med-reconciler",
            "dr-alice",
            30,
            "active",
            description="reconciles medication lists at admission and discharge",
            allowed_purposes=("medication-reconciliation",),
            created_at=0,
            registered_by=SEED,
        ),
        "billing-bot": Agent(
            "billing-bot",
            "bob",
            40,
            "active",
            description="prepares and checks insurance claims",
            allowed_purposes=("billing",),
            created_at=0,
            registered_by=SEED,
        ),
        "orchestrator": Agent(
            "orchestrator",
            "dr-alice",
            10,
            "active",
            description="plans clinical tasks and delegates them to the other agents",
            allowed_purposes=("clinical-documentation", "medication-reconciliation"),
            created_at=0,
            registered_by=SEED,
        ),
        "dictation-vendor": Agent(
            "dictation-vendor",
            "dr-alice",
            75,
            "active",
            description="third-party dictation service (external, high risk)",
            allowed_purposes=("clinical-documentation",),
            created_at=0,
            registered_by=SEED,
        ),
        "chart-exporter": Agent(
            "chart-exporter",
            "bob",
            85,
            "suspended",
            description="bulk chart export for a retired billing integration",
            allowed_purposes=("billing",),
            created_at=0,
            registered_by=SEED,
        ),
    }
    assert not bundle.agents["chart-exporter"].active
    assert all(a.active for name, a in bundle.agents.items() if name != "chart-exporter")


def test_seeded_risk_tiers(bundle: policy_load.PolicyBundle) -> None:
    """With the default tiers only dictation-vendor (75) and chart-exporter (85) are high."""
    tiers = {name: DEFAULT_TIERS.of(a.risk) for name, a in bundle.agents.items()}
    assert RiskTiers(medium=30, high=70) == DEFAULT_TIERS
    assert tiers == {
        "scribe": "low",
        "med-reconciler": "medium",
        "billing-bot": "medium",
        "orchestrator": "low",
        "dictation-vendor": "high",
        "chart-exporter": "high",
    }


def test_seeded_agents_make_schema_conforming_cedar_entities(
    bundle: policy_load.PolicyBundle,
) -> None:
    """Seeds are no longer checked by the schema, so what reaches Cedar must be."""
    for tiers in (DEFAULT_TIERS, RiskTiers(medium=10, high=50)):
        entities = [policy.agent_entity(a, tiers) for a in bundle.agents.values()]
        cedarpy.Entities.from_json_str(json.dumps(entities), SCHEMA)
    entity = policy.agent_entity(bundle.agents["orchestrator"], DEFAULT_TIERS)
    assert entity["attrs"]["allowed_purposes"] == [
        "clinical-documentation",
        "medication-reconciliation",
    ]
    assert entity["attrs"]["risk_tier"] == "low"
    # a tier of the wrong type is what the schema refuses
    entity["attrs"]["risk_tier"] = 3
    with pytest.raises(ValueError):
        cedarpy.Entities.from_json_str(json.dumps([entity]), SCHEMA)


def test_static_entities_hold_no_agents(bundle: policy_load.PolicyBundle) -> None:
    """Agents come from the registry per request, never from the static entity set."""
    probe = cedarpy.PolicySet.from_str(
        "permit (principal, action, resource) when { principal has risk };"
    )
    request = {
        "principal": {"type": "Agent", "id": "scribe"},
        "action": {"type": "Action", "id": "read"},
        "resource": {"type": "User", "id": "bob"},
        "context": {},
    }
    assert cedarpy.is_authorized(request, probe, bundle.entities).decision == cedarpy.Decision.Deny
    with_agent = bundle.entities.with_added_json_str(
        json.dumps([policy.agent_entity(bundle.agents["scribe"], DEFAULT_TIERS)])
    )
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
    second = policy_load.load(copy).version
    assert second != first
    edit(
        copy / "entities.json",
        '"allowed_purposes": ["billing"]',
        '"allowed_purposes": ["billing", "research"]',
    )
    assert policy_load.load(copy).version not in (first, second)


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


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        # each: the edit, and a string on the line the error is on
        ("resource is Notes", "resource is Notes,,", "resource is Notes,,"),
        ("context has grant }", "context has grant && }", "context has grant &&"),
        ('Agent::"scribe"', "Agent::scribe", "Agent::scribe"),
        ('Agent::"scribe"', 'Agent::"scribe', 'Agent::"scribe'),
        ("permit (", "permitt (", "permitt ("),
        ('action == Action::"write"', "action == ", "action == ,"),
        ("when {", "whenn {", "whenn {"),
        ("grant };", "grant }", "grant }"),  # missing `;`: end of input, the last line
        (
            "when { context has grant };",
            'when { context has grant };\n\n@id("second")\npermit (principal, action, resource)\n'
            "when { 1 + };",
            "when { 1 + }",
        ),
    ],
    ids=[
        "double-comma",
        "dangling-and",
        "unquoted-id",
        "unterminated-string",
        "bad-effect",
        "missing-action-entity",
        "bad-condition-keyword",
        "missing-semicolon",
        "second-policy",
    ],
)
def test_syntax_error_names_file_and_line(copy: Path, old: str, new: str, needle: str) -> None:
    path = copy / SCRIBE_NOTES
    edit(path, old, new)
    line = line_of(path, needle)
    err = load_error(copy)
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert f"{SCRIBE_NOTES}:{line}" in str(err)


@pytest.mark.parametrize(
    ("file", "old", "new", "attribute"),
    [
        (
            "high-risk-agents-never-write.cedar",
            "principal.risk_tier",
            "principal.risk_tierr",
            "risk_tierr",
        ),
        (
            "high-risk-agents-never-write.cedar",
            'when { principal.risk_tier == "high" || context.chain.risk_tier == "high" }',
            'when {\n  principal.risk_tier == "high" &&\n  principal.riskk >= 1\n}',
            "riskk",
        ),
        (
            "agent-purpose-must-be-allowed.cedar",
            "principal.allowed_purposes",
            "principal.allowed_purpose",
            "allowed_purpose",
        ),
        (
            "scribe-write-notes.cedar",
            "when { context has grant }",
            'when {\n  context has grant &&\n  context.purposee == "x"\n}',
            "purposee",
        ),
        (
            "scribe-read-records.cedar",
            "when { context has grant }",
            "when { context has grant && resource.owner == principal }",
            "owner",
        ),
    ],
    ids=[
        "entity-attr",
        "entity-attr-multiline",
        "entity-set-attr",
        "context-attr",
        "resource-attr",
    ],
)
def test_unknown_attribute_names_attribute_file_and_line(
    copy: Path, file: str, old: str, new: str, attribute: str
) -> None:
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
    edit(
        path,
        "when { context has grant };",
        'when { context has grant };\n\n@id("scribe-write-notes")\n'
        "forbid (principal, action, resource);",
    )
    err = load_error(copy)
    assert err.line == 10  # the second @id
    assert "duplicate" in str(err)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        (b"files the note", b"files the \xff note", b"files the"),
        (b"resource is Notes", b"resource is Notes // caf\xe9", b"caf"),
    ],
)
def test_non_utf8_cedar_file(copy: Path, old: bytes, new: bytes, needle: bytes) -> None:
    path = copy / SCRIBE_NOTES
    data = path.read_bytes()
    path.write_bytes(data.replace(old, new))
    line = next(i for i, text in enumerate(path.read_bytes().split(b"\n"), 1) if needle in text)
    err = load_error(copy)
    assert "not UTF-8" in str(err)
    assert err.line == line
    assert f"{SCRIBE_NOTES}:{line}" in str(err)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("  risk: Long,", "  risk: Long,,", "risk: Long,,"),
        ("  method: String,", "  method: Strin g,", "Strin g"),
        ("action write appliesTo {", "action write appliesTo {{", "appliesTo {{"),
    ],
    ids=["double-comma", "split-type-name", "double-brace"],
)
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


@pytest.mark.parametrize(
    ("old", "new", "entity_id"),
    [
        ('{"uid": {"type": "User", "id": "bob"}', '{"uid": {"type": "Doctor", "id": "bob"}', "bob"),
        (
            '{"uid": {"type": "User", "id": "dr-alice"}, "attrs": {}',
            '{"uid": {"type": "User", "id": "dr-alice"}, "attrs": {"role": "doctor"}',
            "dr-alice",
        ),
    ],
    ids=["unknown-type", "undeclared-attribute"],
)
def test_entity_not_matching_the_schema(copy: Path, old: str, new: str, entity_id: str) -> None:
    """Entities other than agents are still checked by the Cedar schema."""
    path = copy / "entities.json"
    edit(path, old, new)
    err = load_error(copy)
    assert err.path == str(path)
    assert entity_id in str(err)
    assert err.line == line_of(path, f'"id": "{entity_id}"')


def agent_error(copy: Path, agent_id: str, old: str, new: str) -> tuple[PolicyLoadError, str]:
    """Edit entities.json, load, and return the error and the `file:line` it must name."""
    path = copy / "entities.json"
    edit(path, old, new)
    err = load_error(copy)
    line = line_of(path, f'"id": "{agent_id}"')
    assert err.path == str(path)
    assert err.line == line, str(err)
    return err, f"{path}:{line}"


@pytest.mark.parametrize("risk", ["150", "-1", "101", '"high"', "true", "30.5", "null"])
def test_agent_risk_must_be_an_integer_0_to_100(copy: Path, risk: str) -> None:
    err, where = agent_error(copy, "med-reconciler", '"risk": 30', f'"risk": {risk}')
    assert str(err) == f"{where}: agent `med-reconciler`: `risk` must be an integer 0 to 100"


@pytest.mark.parametrize("risk", [0, 100])
def test_agent_risk_bounds_are_accepted(copy: Path, risk: int) -> None:
    edit(copy / "entities.json", '"risk": 30', f'"risk": {risk}')
    assert policy_load.load(copy).agents["med-reconciler"].risk == risk


@pytest.mark.parametrize("status", ['"retired"', '"Active"', '["suspended"]', "null"])
def test_agent_status_must_be_active_or_suspended(copy: Path, status: str) -> None:
    err, where = agent_error(copy, "chart-exporter", '"status": "suspended"', f'"status": {status}')
    assert str(err) == (
        f"{where}: agent `chart-exporter`: `status` must be one of ['active', 'suspended']"
    )


BILLING_OWNER = '"owner": {"__entity": {"type": "User", "id": "bob"}}, "risk": 40, '


OWNER_NEEDED = 'agent `billing-bot` needs an `owner`: {"__entity": {"type": "User", "id": "..."}}'


@pytest.mark.parametrize(
    ("agent_id", "old", "new", "message"),
    [
        ("billing-bot", BILLING_OWNER, '"risk": 40, ', OWNER_NEEDED),
        (
            "billing-bot",
            BILLING_OWNER,
            '"owner": {"__entity": {"type": "User", "id": ""}}, "risk": 40, ',
            OWNER_NEEDED,
        ),
        ("scribe", '"risk": 20, ', "", "agent `scribe`: `risk` must be an integer 0 to 100"),
        (
            "med-reconciler",
            '"status": "active", "allowed_purposes": ["medication-reconciliation"]',
            '"allowed_purposes": ["medication-reconciliation"]',
            "agent `med-reconciler`: `status` must be one of ['active', 'suspended']",
        ),
        (
            "billing-bot",
            '"allowed_purposes": ["billing"]',
            '"allowed_purposes": "billing"',
            "agent `billing-bot`: `allowed_purposes` must be a list of non-empty strings",
        ),
        (
            "orchestrator",
            '"allowed_purposes": ["clinical-documentation", "medication-reconciliation"]',
            '"allowed_purposes": ["clinical-documentation", 7]',
            "agent `orchestrator`: `allowed_purposes` must be a list of non-empty strings",
        ),
        (
            "scribe",
            '"allowed_purposes": ["clinical-documentation"]',
            '"allowed_purposes": null',
            "agent `scribe`: `allowed_purposes` must be a list of non-empty strings",
        ),
        (
            "scribe",
            '"allowed_purposes": ["clinical-documentation"]',
            '"allowed_purposes": {"clinical-documentation": true}',
            "agent `scribe`: `allowed_purposes` must be a list of non-empty strings",
        ),
        (
            "dictation-vendor",
            '"description": "third-party dictation service (external, high risk)"',
            '"description": ["third-party"]',
            "agent `dictation-vendor`: `description` must be a string",
        ),
        (
            "scribe",
            '"risk": 20, ',
            '"risk": 20, "risk_tier": "low", ',
            "agent `scribe`: unknown attributes ['risk_tier']",
        ),
        (
            "billing-bot",
            '"risk": 40, ',
            '"risk": 40, "registered_by": "mallory", "created_at": 1, ',
            "agent `billing-bot`: unknown attributes ['created_at', 'registered_by']",
        ),
        (
            "orchestrator",
            '"risk": 10, ',
            '"risk": 10, "allowed_purpose": ["billing"], ',
            "agent `orchestrator`: unknown attributes ['allowed_purpose']",
        ),
    ],
    ids=[
        "no-owner",
        "empty-owner",
        "no-risk",
        "no-status",
        "purposes-string",
        "purposes-non-string-item",
        "purposes-null",
        "purposes-object",
        "description-list",
        "derived-risk-tier",
        "registry-managed-fields",
        "misspelt-purposes",
    ],
)
def test_agent_seed_refused_with_file_and_line(
    copy: Path, agent_id: str, old: str, new: str, message: str
) -> None:
    """Agents are registry seeds checked by policy_load, not by the Cedar schema."""
    err, where = agent_error(copy, agent_id, old, new)
    assert str(err) == f"{where}: {message}"


def test_agent_seed_without_an_id(copy: Path) -> None:
    path = copy / "entities.json"
    edit(path, '{"type": "Agent", "id": "billing-bot"}', '{"type": "Agent"}')
    err = load_error(copy)
    assert err.path == str(path)
    assert "an agent needs a string `uid.id`" in str(err)


def test_agent_seed_without_allowed_purposes_or_description(copy: Path) -> None:
    """Both are optional in a seed: such an agent may act for no purpose at all."""
    edit(
        copy / "entities.json",
        ', "allowed_purposes": ["billing"], "description": "prepares and checks insurance claims"',
        "",
    )
    agent = policy_load.load(copy).agents["billing-bot"]
    assert agent == Agent("billing-bot", "bob", 40, "active", registered_by=SEED)
    assert agent.allowed_purposes == ()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            '"attrs": {"owner": {"__entity": {"type": "User", "id": "bob"}}, "risk": 40',
            '"attrs": null, "x": {"risk": 40',
        ),
        ('"owner": {"__entity": {"type": "User", "id": "bob"}}', '"owner": {"__entity": "bob"}'),
        (
            '"owner": {"__entity": {"type": "User", "id": "bob"}}',
            '"owner": {"__entity": {"type": "Patient", "id": "bob"}}',
        ),
        ('"owner": {"__entity": {"type": "User", "id": "bob"}}', '"owner": "bob"'),
    ],
    ids=["attrs-null", "owner-entity-not-object", "owner-not-a-user", "owner-bare-string"],
)
def test_malformed_agent_seed_is_a_load_error(copy: Path, old: str, new: str) -> None:
    agent_error(copy, "billing-bot", old, new)


def test_duplicate_agent_seed_is_refused_with_its_line(copy: Path) -> None:
    path = copy / "entities.json"
    text = path.read_text()
    first = text.index('{"uid": {"type": "Agent", "id": "scribe"}')
    end = text.index('"parents": []}', first) + len('"parents": []}')
    path.write_text(text[:end] + ",\n  " + text[first:end] + text[end:])
    err = load_error(copy)
    assert "agent `scribe` appears twice" in str(err)
    assert err.line is not None


def test_route_to_an_action_absent_from_the_schema(copy: Path) -> None:
    path = copy / "routes.toml"
    edit(path, 'action = "write"', 'action = "delete"')
    err = load_error(copy)
    assert err.path == str(path)
    assert "`delete` is not declared in the schema" in str(err)


def test_route_loads_when_the_schema_declares_the_action(copy: Path) -> None:
    edit(
        copy / "schema.cedarschema",
        "action write appliesTo",
        "action delete appliesTo {\n  principal: [Agent],\n  resource: [Notes],\n"
        "  context: CheckContext,\n};\n\naction write appliesTo",
    )
    edit(copy / "routes.toml", 'action = "write"', 'action = "delete"')
    bundle = policy_load.load(copy)
    assert bundle.actions == frozenset({"read", "write", "connect", "delete"})
    assert bundle.routes.resolve("POST", "/patients/p/notes").action == "delete"


def test_template_policy_refused(copy: Path) -> None:
    edit(copy / SCRIBE_NOTES, 'principal == Agent::"scribe"', "principal == ?principal")
    assert "templates are not supported" in str(load_error(copy))


# --- schema_actions and statement_lines ------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "actions"),
    [
        ("action read, write appliesTo { principal: [A], resource: [B] };", {"read", "write"}),
        ('action "view-chart" appliesTo { principal: [A], resource: [B] };', {"view-chart"}),
        (
            "action base;\naction read in [base] appliesTo { principal: [A], resource: [B] };",
            {"base", "read"},
        ),
        ("// action commented appliesTo {};\naction real;", {"real"}),
    ],
)
def test_schema_actions(schema: str, actions: set[str]) -> None:
    assert policy_load.schema_actions(schema) == frozenset(actions)


def test_statement_lines_skip_comments_and_strings() -> None:
    text = "\n".join(
        [
            "// a comment; with a semicolon",  # 1
            '@id("one; two")',  # 2
            "permit (principal, action, resource)",  # 3
            'when { context.txn == "a;b\\";c" };',  # 4
            "",  # 5
            "// another; comment",  # 6
            '@id("three")',  # 7
            "forbid (principal, action, resource)",  # 8
            'when { context.request.path like "*//x;*" };',  # 9
            '@id("four") permit (principal, action, resource); @id("five")',  # 10
            "permit (principal, action, resource);",  # 11
        ]
    )
    assert len(cedarpy.PolicySet.from_str(text)) == 4  # the text is valid Cedar
    assert locate.statement_lines(text) == [2, 7, 10, 10]


def test_statement_lines_of_shipped_files() -> None:
    lines = {file: line for file, _, _, line in SHIPPED_IDS.values()}
    paths = sorted(POLICIES.glob("*.cedar"))
    assert {p.name for p in paths} == set(lines)
    for path in paths:
        assert locate.statement_lines(path.read_text()) == [lines[path.name]], path.name


# --- nothing half-loaded ----------------------------------------------------------------------


BreakFn = Callable[[Path], None]


@pytest.mark.parametrize(
    "brk",
    [
        lambda d: edit(d / SCRIBE_NOTES, "permit", "permit permit"),
        lambda d: edit(d / "entities.json", "[", "{"),
        lambda d: edit(d / "entities.json", '"risk": 20', '"risk": "low"'),
        lambda d: edit(d / "routes.toml", "[[route]]", "[[route]"),
    ],
)
def test_a_broken_file_raises_and_never_returns_a_bundle(copy: Path, brk: BreakFn) -> None:
    brk(copy)
    with pytest.raises(PolicyLoadError):
        policy_load.load(copy)
