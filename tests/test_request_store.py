"""The access request stores, embedded and a real Redis, held to the same rules: requests
change only by compare and set, the pending index holds exactly the undecided ones, and a
task's grants and its end are remembered."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from authz.dev.stack import RedisServer
from authz.model import AccessRequest
from authz.stores.protocols import AccessStore
from authz.stores.redis_store import RedisStore
from authz.stores.requests import PENDING, EmbeddedAccessStore, RedisAccessStore

NOW = int(time.time())


def request(rid: str, **changes: Any) -> AccessRequest:
    base = AccessRequest(
        id=rid,
        agent="scribe",
        user="dr-alice",
        chain=("scribe",),
        action="write",
        resource='Notes::"p-1001"',
        purpose="clinical-documentation",
        ttl_seconds=600,
        max_uses=0,
        txn="",
        reason="",
        break_glass=False,
        created_at=NOW,
        expires_at=NOW + 300,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()


Opener = Callable[[], Any]


@pytest.fixture(params=["embedded", "redis"])
def opener(request: pytest.FixtureRequest, redis_server: RedisServer) -> Opener:
    @asynccontextmanager
    async def open_store() -> AsyncIterator[AccessStore]:
        if request.param == "embedded":
            yield EmbeddedAccessStore(time.time)
            return
        redis.Redis.from_url(redis_server.url).flushdb()
        backing = RedisStore(redis_server.url, timeout_ms=2000)
        try:
            yield RedisAccessStore(backing, time.time)
        finally:
            await backing.close()

    return open_store


def test_a_request_changes_only_from_what_was_read(opener: Opener) -> None:
    async def go() -> None:
        async with opener() as store:
            asked = request("r-1")
            await store.add_request(asked)
            approved = dataclasses.replace(asked, status="approved", decided_by="dr-alice")
            denied = dataclasses.replace(asked, status="denied", decided_by="bob")
            assert await store.replace_request(asked, approved)
            assert not await store.replace_request(asked, denied)  # someone got there first
            assert await store.get_request("r-1") == approved
            assert await store.get_request("r-nope") is None

    asyncio.run(go())


def test_the_pending_index_holds_only_the_undecided(opener: Opener) -> None:
    async def go() -> None:
        async with opener() as store:
            first, second = request("r-1"), request("r-2", created_at=NOW + 1)
            refused = request("r-3", status="refused", created_at=NOW + 2)
            for one in (first, second, refused):
                await store.add_request(one)
            assert [r.id for r in await store.pending_requests()] == ["r-1", "r-2"]
            await store.replace_request(first, dataclasses.replace(first, status="expired"))
            assert [r.id for r in await store.pending_requests()] == ["r-2"]
            assert [r.id for r in await store.list_requests()] == ["r-1", "r-2", "r-3"]

    asyncio.run(go())


def test_a_stale_pending_entry_is_skipped_and_tidied(redis_server: RedisServer) -> None:
    async def go() -> None:
        client = redis.Redis.from_url(redis_server.url)
        client.flushdb()
        backing = RedisStore(redis_server.url, timeout_ms=2000)
        store = RedisAccessStore(backing, time.time)
        try:
            await store.add_request(request("r-1"))
            client.zadd(PENDING, {"r-gone": NOW})  # e.g. a removal that failed half way
            assert [r.id for r in await store.pending_requests()] == ["r-1"]
            assert client.zrange(PENDING, 0, -1) == [b"r-1"]
        finally:
            await backing.close()

    asyncio.run(go())


def test_a_task_remembers_its_grants_and_its_end(opener: Opener) -> None:
    async def go() -> None:
        async with opener() as store:
            await store.bind_task("adm-1", "g-1", NOW + 600)
            await store.bind_task("adm-1", "g-2", NOW + 60)
            assert await store.task_grants("adm-1") == ["g-1", "g-2"]
            assert await store.task_grants("adm-2") == []
            assert not await store.task_ended("adm-1", "dr-alice")
            await store.end_task("adm-1", "dr-alice", NOW + 600)
            assert await store.task_ended("adm-1", "dr-alice")
            assert not await store.task_ended("adm-1", "bob")  # another user's task of that id

    asyncio.run(go())


def test_a_task_set_lives_as_long_as_its_longest_grant(redis_server: RedisServer) -> None:
    async def go() -> None:
        client = redis.Redis.from_url(redis_server.url)
        client.flushdb()
        backing = RedisStore(redis_server.url, timeout_ms=2000)
        store = RedisAccessStore(backing, time.time)
        try:
            await store.bind_task("adm-9", "g-long", NOW + 3600)
            await store.bind_task("adm-9", "g-short", NOW + 60)  # never shortens it
            assert client.ttl("lasthop:task:adm-9") > 3000
        finally:
            await backing.close()

    asyncio.run(go())
