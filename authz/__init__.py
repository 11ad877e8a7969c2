"""Lasthop: point-of-use authorization for AI agents, as an Envoy ext_authz sidecar."""
