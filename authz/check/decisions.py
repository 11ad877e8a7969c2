"""Whole decisions kept for identical requests, within one second and one state of the world.

A key holds everything a decision depends on: the exact `authorization`
and `txn-token` header values and those of every method override header
(`server.method_override_headers`: one naming another method is a deny),
method, path, host and peer; the body as Envoy sent it (its digest, whether
it was cut short, whether there was one: an MCP endpoint decides by its
body) and the `mcp-method` and `mcp-name` headers checked against it; the current
second (the token, grant and Cedar `time` checks all work in whole
seconds); the policy version and the issuer's key generation; and the
store generation, which every grant or agent write, every invalidation
message and every drop of the invalidation channel moves on. So a cached
decision is the decision the pipeline would make now. The query string is
not in the key: nothing in a decision depends on it.

What the pipeline never caches: 503s (the store, audit or Cedar could not
decide), and any decision that spent a use of a use-limited grant. With no
generation (`freshness()` is None: the invalidation channel is down, or
Redis runs without local caches) nothing is cached or served.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from authz.audit.records import AuditRecord
from authz.config import DEFAULT_METHOD_OVERRIDES
from authz.model import CheckInput, Decision
from authz.stores.cache import BoundedCache

Key = tuple[Any, ...]
ENTRIES = 10_000
TTL_SECONDS = 1.0  # the key holds the second; this only lets entries of past seconds go


@dataclass(slots=True)
class Entry:
    """A decision made once, and the record of the check that made it: the checks that
    repeat the decision are recorded as repeats of that record (`records.Repeat`)."""

    decision: Decision
    record: AuditRecord | None = None


class DecisionCache:
    def __init__(
        self,
        freshness: Callable[[], int | None],
        entries: int = ENTRIES,
        overrides: tuple[str, ...] = DEFAULT_METHOD_OVERRIDES,
    ) -> None:
        self._freshness = freshness
        # the headers a decision reads
        self._headers = ("authorization", "txn-token", "mcp-method", "mcp-name", *overrides)
        self._entries: BoundedCache[Key, Entry] = BoundedCache(entries, TTL_SECONDS)
        self._lock = threading.Lock()  # the threaded server's handlers read it too

    def key(self, req: CheckInput, version: str, keys: int, now: float) -> Key | None:
        generation = self._freshness()
        if generation is None:
            return None
        return (
            tuple(tuple(req.headers.get(name, ())) for name in self._headers),
            req.method,
            req.path,
            req.host,
            req.peer_principal,
            req.body_sha256,
            req.body_partial,
            req.body is None,
            int(now),
            version,
            keys,
            generation,
        )

    def get(self, key: Key | None) -> Entry | None:
        if key is None:
            return None
        with self._lock:
            return self._entries.get(key)

    def put(self, key: Key | None, decision: Decision) -> Entry | None:
        if key is None:
            return None
        entry = Entry(decision)
        with self._lock:
            self._entries.put(key, entry)
        return entry

    def __len__(self) -> int:
        return len(self._entries)
