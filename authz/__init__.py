"""Lasthop: point-of-use authorization for AI agents, as an Envoy ext_authz sidecar."""

from importlib import metadata


def version() -> str:
    """The installed distribution's version (`lasthop --version`, `lasthop_build_info`)."""
    try:
        return metadata.version("lasthop")
    except metadata.PackageNotFoundError:
        return "unknown"
