"""Where grants and agents live: protocols, the embedded store, Redis, caches."""
