"""The one bounded cache every Lasthop cache is made of.

Rules:
- at most `max_entries` entries, whatever happens;
- an entry lives until its expiry (the cache's `ttl`, or one given per entry,
  on the cache's clock); `get` never returns an expired entry;
- a full cache first drops its expired entries, then the oldest ones, so it
  keeps caching when full instead of refusing new entries;
- eviction is amortised: when a sweep frees less than an eighth of the room,
  the oldest entries go until an eighth is free, so a full cache does not
  sweep on every insert.

Not thread-safe: each cache is used from the event loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FOREVER = float("inf")


class BoundedCache(Generic[K, V]):
    def __init__(
        self,
        max_entries: int,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V, expires_at: float | None = None) -> None:
        """Keep `value` until `expires_at` (on this cache's clock), else for the cache's ttl."""
        if expires_at is None:
            expires_at = FOREVER if self.ttl is None else self._clock() + self.ttl
        entries = self._entries
        if key not in entries and len(entries) >= self.max_entries:
            self._make_room()
        entries[key] = (expires_at, value)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def keys(self) -> Iterator[K]:
        return iter(list(self._entries))

    def _make_room(self) -> None:
        now = self._clock()
        entries = self._entries
        for key in [k for k, (expires, _) in entries.items() if expires <= now]:
            del entries[key]
        target = self.max_entries - max(1, self.max_entries // 8)
        while len(entries) > target:
            del entries[next(iter(entries))]  # the oldest
