"""The TCP relay moved to `authz.dev.tcp_proxy` (the benchmarks use it too)."""

from authz.dev.tcp_proxy import TcpProxy

__all__ = ["TcpProxy"]
