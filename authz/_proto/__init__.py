"""Generated gRPC code for proto/lasthop/v1."""
