"""A registry change is announced in the step that stores it; junk on the channel fails safe."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import redis

from authz.dev.stack import RedisServer
from authz.model import Agent, Grant
from authz.stores.invalidation import Invalidation
from authz.stores.redis_store import CHANNEL, RedisStore

AGENT = Agent("scribe", "dr-alice", 20, "active", allowed_purposes=("clinical-documentation",))


def test_a_suspension_is_stored_and_published_together(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    listener = redis.Redis.from_url(server.url)
    pubsub = listener.pubsub()  # type: ignore[no-untyped-call]
    try:
        pubsub.subscribe(CHANNEL)
        assert pubsub.get_message(timeout=1)["type"] == "subscribe"

        async def suspend() -> bool:
            store = RedisStore(server.url, 500)
            try:
                await store.add_agent(AGENT)
                return await store.replace_agent(
                    AGENT, dataclasses.replace(AGENT, status="suspended")
                )
            finally:
                await store.close()

        assert asyncio.run(suspend())
        seen: list[bytes] = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and seen.count(b"agent\x00scribe") < 2:
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                seen.append(message["data"])
        assert seen.count(b"agent\x00scribe") >= 2  # one for the add, one for the suspension
    finally:
        pubsub.close()
        listener.close()
        server.close()


def test_an_unreadable_invalidation_drops_every_cache(tmp_path: Path) -> None:
    inval = Invalidation(store=None, ttl=5.0)  # type: ignore[arg-type]
    inval.agents.put("scribe", (AGENT,))
    g = Grant("g", "scribe", "dr-alice", ("read",), ('Patient::"p"',), "p", "x", 0, 2**40)
    inval.pairs.put(("scribe", "dr-alice"), [g])
    inval._handle_safely("revoked\x00g\x00not-a-number")
    assert len(inval.agents) == 0 and len(inval.pairs) == 0


def test_only_the_live_subscriptions_connection_turns_the_caches_off(tmp_path: Path) -> None:
    """Regression: a closed subscription's connection went back to the store's pool with the
    listener's reconnect hook still on it; a command that reconnected it later turned the
    caches off while the new subscription was healthy, and nothing turned them on again (a
    fleet with detection, whose flushes use a second connection, lost its caches for good)."""
    server = RedisServer(tmp_path)

    async def go() -> tuple[bool, bool]:
        store = RedisStore(server.url, 500)
        inval = Invalidation(store, ttl=5.0)
        listener = asyncio.create_task(inval.run())
        try:
            deadline = time.monotonic() + 5
            while not await inval.trusted() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert inval._pubsub is not None
            inval._on_reconnect(object())  # some other connection of the pool reconnects
            other = await inval.trusted()
            inval._on_reconnect(inval._pubsub.connection)  # the subscription's own
            own = inval.live
            return other, own
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await store.close()

    try:
        other, own = asyncio.run(go())
        assert other, "caches turned off by a connection that is not the subscription's"
        assert not own, "the subscription's own reconnect must turn the caches off"
    finally:
        server.close()
