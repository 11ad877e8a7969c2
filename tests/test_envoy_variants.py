"""The shipped Envoy variants for the ext_authz hop (item 12 of issue 11) stay the sidecar.

envoy/sidecar-uds.yaml and envoy/sidecar-tls.yaml are copies of
envoy/sidecar.yaml that differ only in how Envoy reaches Lasthop (the
`lasthop` cluster). A change to the sidecar that is not made to them fails
here; tests/integration/test_listeners.py runs each through a real Envoy.
"""

from __future__ import annotations

from string import Template
from typing import Any

import pytest
import yaml

from authz.dev import stack as devstack

ENVOY_DIR = devstack.ENVOY_TEMPLATE.parent
VALUES = {
    "LISTEN_PORT": "1",
    "ENVOY_ADMIN_PORT": "2",
    "LASTHOP_PORT": "3",
    "UPSTREAM_PORT": "4",
    "LASTHOP_SOCKET": "/run/lasthop/authz.sock",
    "LASTHOP_HOST": "lasthop",
    "LASTHOP_TLS_NAME": "lasthop",
    "ENVOY_CERT": "/etc/envoy/tls.crt",
    "ENVOY_KEY": "/etc/envoy/tls.key",
    "LASTHOP_CA": "/etc/envoy/lasthop-ca.crt",
}


def render(name: str) -> Any:
    return yaml.safe_load(Template((ENVOY_DIR / name).read_text()).substitute(VALUES))


def split(config: Any) -> tuple[Any, Any]:
    """(the config without the `lasthop` cluster, that cluster)."""
    clusters = config["static_resources"]["clusters"]
    [lasthop] = [c for c in clusters if c["name"] == "lasthop"]
    config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != "lasthop"]
    return config, lasthop


@pytest.mark.parametrize("variant", ["sidecar-uds.yaml", "sidecar-tls.yaml"])
def test_a_hop_variant_differs_from_the_sidecar_only_in_the_lasthop_cluster(variant: str) -> None:
    rest, cluster = split(render(variant))
    sidecar_rest, sidecar_cluster = split(render("sidecar.yaml"))
    assert rest == sidecar_rest
    assert cluster != sidecar_cluster


@pytest.mark.parametrize("shipped", ["sidecar.yaml", "mcp.yaml"])
def test_the_sidecar_refuses_underscores_and_shows_lasthop_the_override_headers(
    shipped: str,
) -> None:
    """Issue 11, items 5 and 6, as configuration (the behaviour is tested through Envoy)."""
    config = render(shipped)
    [listener] = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    options = manager["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == "REJECT_REQUEST"
    [ext_authz] = [f for f in manager["http_filters"] if f["name"].endswith("ext_authz")]
    patterns = ext_authz["typed_config"]["allowed_headers"]["patterns"]
    exact = {p["exact"] for p in patterns if "exact" in p}
    assert {"x-http-method-override", "x-http-method", "x-method-override"} <= exact
    assert {p["prefix"] for p in patterns if "prefix" in p} == {"x-lasthop", "x_lasthop"}
