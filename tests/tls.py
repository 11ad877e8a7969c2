"""Throwaway certificates for tests: `authz.dev.certs`, which the demo uses too."""

from authz.dev.certs import Pem, TestCA

__all__ = ["Pem", "TestCA"]
