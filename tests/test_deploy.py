"""deploy/: every manifest validates offline against the Kubernetes schemas (kubernetes-validate)
or, for custom resources, against their CRDs' vendored schemas (deploy/schemas/), with
unknown fields refused; the generated objects are current; and the pieces agree with one
another (ports, provider names) and with Lasthop's and Envoy's own validation."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from authz import config
from authz.dev.stack import venv_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.33"
Doc = dict[str, Any]


def documents() -> Iterator[tuple[Path, Doc]]:
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def _strict(node: Any) -> Any:
    """A CRD schema as `kubectl apply --validate=strict` holds it: unknown fields refused."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas() -> dict[tuple[str, str], Any]:
    schemas = {}
    for path in sorted((DEPLOY / "schemas").glob("*.json")):
        doc = json.loads(path.read_text())
        schema = doc["schema"]
        # every object has these at its root, whether or not its CRD lists them
        schema["properties"] = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            **schema["properties"],
        }
        schemas[(doc["apiVersion"], doc["kind"])] = _strict(schema)
    return schemas


def validate(doc: Doc, schemas: dict[tuple[str, str], Any]) -> None:
    """Raises on a manifest the API server would refuse (or, for an unknown kind, cannot check)."""
    schema = schemas.get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_manifest_validates_against_its_schema() -> None:
    schemas = crd_schemas()
    found = list(documents())
    kinds = {doc["kind"] for _, doc in found}
    assert {"StatefulSet", "ConfigMap", "PodMonitor", "PrometheusRule"} <= kinds
    assert {"AuthorizationPolicy", "ServiceEntry", "NetworkPolicy"} <= kinds
    for path, doc in found:
        try:
            validate(doc, schemas)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as err:
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']}: {err}")


@pytest.mark.parametrize(
    ("kind", "spoil"),
    [
        (
            "StatefulSet",
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagee="x"),
        ),
        ("StatefulSet", lambda d: d["spec"].update(replicas="two")),
        ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].update(prot="metrics")),
        ("AuthorizationPolicy", lambda d: d["spec"].update(action="ALLOW_ALL")),
        ("ServiceEntry", lambda d: d["spec"]["ports"][0].update(number="grpc")),
    ],
)
def test_the_validation_refuses_a_spoiled_manifest(kind: str, spoil: Any) -> None:
    schemas = crd_schemas()
    doc = copy.deepcopy(next(d for _, d in documents() if d["kind"] == kind))
    validate(doc, schemas)
    spoil(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc, schemas)


def test_the_generated_objects_are_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_deploy", ROOT / "scripts" / "gen_deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, text in module.generated().items():
        assert path.read_text() == text, f"{path}: run scripts/gen_deploy.py"


# --- the pieces agree --------------------------------------------------------------------------


def one(kind: str, name: str, under: str = "kubernetes") -> Doc:
    return next(
        d for p, d in documents()
        if p.parent.name == under and d["kind"] == kind and d["metadata"]["name"] == name
    )  # fmt: skip


def container(doc: Doc, name: str) -> Doc:
    found: Doc = next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)
    return found


def port(address: str) -> int:
    return int(address.rpartition(":")[2])


def lasthop_settings(tmp_path: Path, env_of: Doc) -> config.Settings:
    """lasthop.toml from the ConfigMap, loaded with the container's environment (secrets
    stand in as well-formed values): a misspelled variable in a manifest fails here."""
    cfg = tmp_path / "lasthop.toml"
    cfg.write_text(one("ConfigMap", "lasthop-config")["data"]["lasthop.toml"])
    env = {e["name"]: e.get("value", "redis://:secret@redis:6379/0") for e in env_of.get("env", [])}
    return config.load(cfg, environ=env)


@pytest.mark.parametrize("under", ["kubernetes", "istio"])
def test_lasthops_config_loads_with_each_pods_environment(tmp_path: Path, under: str) -> None:
    lasthop = container(one("StatefulSet", "ehr-api", under), "lasthop")
    settings = lasthop_settings(tmp_path, lasthop)
    assert settings.store.redis_url.startswith("redis://")
    assert settings.server.log_format == "json"
    health = port(settings.server.health_listen)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert lasthop[probe]["grpc"]["port"] == health, probe
    ports = {p["name"]: p["containerPort"] for p in lasthop["ports"]}
    assert ports == {"metrics": port(settings.server.metrics_listen), "health": health}
    assert settings.server.listen.startswith("127.0.0.1:")  # ext_authz stays in the pod
    assert settings.server.admin_listen.startswith("127.0.0.1:")
    detect = settings.detect  # the shipped example's: a sweep is contained fleet-wide
    assert detect.enabled and (detect.breadth_patients, detect.breadth_response) == (25, "suspend")


def test_envoy_fails_closed_to_lasthops_port_and_its_config_validates(tmp_path: Path) -> None:
    text = one("ConfigMap", "lasthop-config")["data"]["envoy.yaml"]
    envoy = yaml.safe_load(text)
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    address = clusters["lasthop"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    settings = tomllib.loads(one("ConfigMap", "lasthop-config")["data"]["lasthop.toml"])
    assert address["endpoint"]["address"]["socket_address"]["port_value"] == port(
        settings["server"]["listen"]
    )
    assert "failure_mode_allow: false" in text
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run(
        [venv_binary("envoy"), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_the_pod_monitor_scrapes_ports_the_pod_has() -> None:
    pods = (
        container(one("StatefulSet", "ehr-api"), "lasthop")["ports"]
        + container(one("StatefulSet", "ehr-api"), "envoy")["ports"]
    )
    names = {p["name"] for p in pods}
    monitor = one("PodMonitor", "lasthop")
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= names
    labels = one("StatefulSet", "ehr-api")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_istio_calls_lasthop_in_the_same_pod_and_fails_closed_with_a_timeout() -> None:
    mesh = yaml.safe_load(one("ConfigMap", "istio", "istio")["data"]["mesh"])
    provider = mesh["extensionProviders"][0]
    grpc = provider["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False and grpc["timeout"] == "0.25s"
    policy = one("AuthorizationPolicy", "ehr-api-lasthop", "istio")
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]
    entry = one("ServiceEntry", "lasthop-local", "istio")
    assert entry["spec"]["hosts"] == [grpc["service"]]
    assert entry["spec"]["endpoints"] == [{"address": "127.0.0.1"}]
    settings = tomllib.loads(one("ConfigMap", "lasthop-config")["data"]["lasthop.toml"])
    assert entry["spec"]["ports"][0]["number"] == grpc["port"] == port(settings["server"]["listen"])
