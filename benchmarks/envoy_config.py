"""Envoy configurations for the benchmark targets, built as data (Envoy reads JSON).

Every target answers from Envoy itself (`direct_response`), so the upstream
costs nothing and the differences are the ext_authz hop alone. The ext_authz
filter is configured as in envoy/sidecar.yaml (fail closed, 250 ms timeout,
raw headers, only the headers Lasthop reads, at most `STREAMS` checks at a
time per connection to it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
STREAMS = 8  # as envoy/sidecar.yaml: under load Envoy opens more connections (for --workers)


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, ports: list[int]) -> dict[str, Any]:
    http2 = {"max_concurrent_streams": STREAMS}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(p)}} for p in ports]}
            ],
        },
    }


def build(listen: int, admin: int, authz_ports: list[int] | None) -> dict[str, Any]:
    """Envoy on `listen` answering 200 itself; with `authz_ports`, ext_authz to those first."""
    filters: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    if authz_ports:
        filters.append(
            {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": EXT_AUTHZ,
                    "transport_api_version": "V3",
                    "failure_mode_allow": False,
                    "status_on_error": {"code": 503},
                    "encode_raw_headers": True,
                    "allowed_headers": {
                        "patterns": [
                            {"exact": "authorization"},
                            {"exact": "txn-token"},
                            {"prefix": "x-lasthop-"},
                        ]
                    },
                    "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.25s"},
                },
            }
        )
        clusters.append(_cluster("authz", authz_ports))
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}})
    return {
        "admin": {"address": _address(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _address(listen),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM,
                                        "stat_prefix": "ingress",
                                        "normalize_path": False,
                                        "merge_slashes": False,
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {
                                                                "status": 200,
                                                                "body": {"inline_string": "ok"},
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": filters,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def write(path: Path, listen: int, admin: int, authz_ports: list[int] | None) -> Path:
    path.write_text(json.dumps(build(listen, admin, authz_ports), indent=1))
    return path
