"""Whole decisions kept for identical requests, within one second and one state of the world.

A key holds everything a decision depends on: the exact `authorization`
and `txn-token` header values, method, path (with query), host and peer;
the current second (the token, grant and Cedar `time` checks all work in
whole seconds); the policy version; and the store generation, which every
grant or agent write, every invalidation message and every drop of the
invalidation channel moves on. So a cached decision is the decision the
pipeline would make now.

Never cached: 503s (the store, audit or Cedar could not decide), and any
decision that spent a use of a use-limited grant (each use must be
counted). With no generation (`freshness()` is None: the invalidation
channel is down, or Redis runs without local caches) nothing is cached or
served from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from authz.model import CheckInput

Key = tuple[Any, ...]


class Generation:
    """A counter the embedded stores move on with every write."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


class DecisionCache:
    ENTRIES = 10_000

    def __init__(self, freshness: Callable[[], int | None]) -> None:
        self._freshness = freshness
        self._entries: dict[Key, Any] = {}

    def key(self, req: CheckInput, version: str, now: float) -> Key | None:
        generation = self._freshness()
        if generation is None:
            return None
        headers = req.headers
        return (
            tuple(headers.get("authorization", ())),
            tuple(headers.get("txn-token", ())),
            req.method,
            req.path,
            req.host,
            req.peer_principal,
            int(now),
            version,
            generation,
        )

    def get(self, key: Key | None) -> Any:
        return None if key is None else self._entries.get(key)

    def put(self, key: Key | None, value: Any) -> None:
        if key is None:
            return
        if len(self._entries) >= self.ENTRIES:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = value
