"""The `lasthop` command line."""
