"""The composition root, the gRPC listeners, the Envoy adapter, admin, metrics."""
