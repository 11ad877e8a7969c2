"""authz.grants (coverage, selection, issuing) and both grant stores, Redis for real."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from authz.access.issue import GrantRequest, new_grant
from authz.check.grants import covers, select
from authz.dev.stack import RedisServer, free_port
from authz.errors import AgentNotActive, GrantError, GrantRequestError, StoreUnavailable
from authz.model import Agent, EntityRef, Grant, Revocation, RouteMatch
from authz.stores.embedded import EmbeddedGrantStore
from authz.stores.protocols import EXPIRED_RETENTION_SECONDS, GrantStore
from authz.stores.redis_store import RedisStore, pair_tag
from tests.conftest import PURPOSE, Clock

NOW = 1_800_000_000
RECORDS = RouteMatch(
    action="read",
    resource=EntityRef("Records", "p-1001"),
    parents=(EntityRef("Patient", "p-1001"),),
    template="/patients/{patient}/records",
    phi=True,
)
NOTES = RouteMatch(
    action="write",
    resource=EntityRef("Notes", "p-1001"),
    parents=(EntityRef("Patient", "p-1001"),),
    template="/patients/{patient}/notes",
    phi=True,
)
CLAIM = RouteMatch(
    action="read",
    resource=EntityRef("Claim", "c-1"),
    parents=(),
    template="/claims/{claim}",
    phi=True,
)


def make(
    gid: str = "g-1",
    agent: str = "scribe",
    user: str = "dr-alice",
    actions: tuple[str, ...] = ("read",),
    resources: tuple[str, ...] = ('Patient::"p-1001"',),
    purpose: str = PURPOSE,
    issued_at: int = NOW,
    ttl: int = 900,
    max_uses: int = 0,
) -> Grant:
    return Grant(
        id=gid,
        agent=agent,
        user=user,
        actions=actions,
        resources=resources,
        purpose=purpose,
        issued_by="dr-alice",
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        max_uses=max_uses,
    )


# --- covers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "route", "expected"),
    [
        (make(), RECORDS, True),  # grant on the patient covers the chart part
        (make(resources=('Records::"p-1001"',)), RECORDS, True),  # the resource itself
        (make(resources=('Notes::"p-1001"',)), RECORDS, False),  # a sibling part
        (make(resources=('Patient::"p-2002"',)), RECORDS, False),  # another patient
        (make(resources=('Records::"p-2002"',)), RECORDS, False),
        (make(actions=("write",)), RECORDS, False),  # action must match
        (make(actions=("write",)), NOTES, True),
        (make(actions=("read", "write")), NOTES, True),
        (make(resources=('Patient::"p-2"', 'Patient::"p-1001"')), RECORDS, True),
        (make(resources=('Claim::"c-1"',)), CLAIM, True),
        (make(resources=('Claim::"c-2"',)), CLAIM, False),
        (make(resources=('Patient::"c-1"',)), CLAIM, False),  # same id, other type
        (make(resources=('Patient::"p-1001" ',)), RECORDS, False),  # no fuzzy matching
        (make(actions=()), RECORDS, False),
    ],
)
def test_covers(grant: Grant, route: RouteMatch, expected: bool) -> None:
    assert covers(grant, route) is expected


# --- select ---------------------------------------------------------------------------------


def select_reason(grants: list[Grant], purpose: str = PURPOSE, now: float = NOW) -> str:
    with pytest.raises(GrantError) as info:
        select(grants, RECORDS, purpose, now)
    assert info.value.status == 403
    return info.value.reason


def test_select_no_grants_is_no_grant() -> None:
    assert select_reason([]) == "no_grant"


def test_select_only_non_covering_is_no_grant() -> None:
    # an expired and a purpose-mismatched grant that do not cover still say no_grant
    grants = [
        make("a", resources=('Patient::"p-2"',)),
        make("b", actions=("write",), ttl=-10),
        make("c", resources=('Notes::"p-1001"',), purpose="billing"),
    ]
    assert select_reason(grants) == "no_grant"


def test_select_covering_but_expired_is_grant_expired() -> None:
    grants = [make("a", ttl=-1), make("b", ttl=-3600, purpose="billing")]
    assert select_reason(grants) == "grant_expired"


def test_select_expiry_is_exclusive() -> None:
    assert select_reason([make(ttl=0)]) == "grant_expired"
    assert select([make(ttl=1)], RECORDS, PURPOSE, NOW).id == "g-1"
    assert select_reason([make(ttl=1)], now=NOW + 1) == "grant_expired"


def test_select_live_but_other_purpose_is_purpose_mismatch() -> None:
    grants = [make("a", purpose="billing"), make("b", ttl=-5)]  # b: right purpose, expired
    assert select_reason(grants) == "purpose_mismatch"


def test_select_picks_the_soonest_expiring_match() -> None:
    grants = [
        make("long", ttl=3600),
        make("soon", ttl=60),
        make("mid", ttl=600),
        make("expired", ttl=-1),
        make("other-purpose", ttl=30, purpose="billing"),
        make("not-covering", ttl=10, resources=('Patient::"p-2"',)),
    ]
    assert select(grants, RECORDS, PURPOSE, NOW).id == "soon"


# --- new_grant -------------------------------------------------------------------------------

AGENTS = {
    name: Agent(id=name, owner="dr-alice", risk=20, status="active")
    for name in ("scribe", "billing-bot")
}
SUSPENDED = {"scribe": Agent(id="scribe", owner="dr-alice", risk=20, status="suspended")}
GONE = {"scribe": Agent(id="scribe", owner="dr-alice", risk=20, status="deregistered")}
ACTIONS = frozenset({"read", "write"})


def request(**changes: Any) -> GrantRequest:
    base = GrantRequest(
        agent="scribe",
        user="dr-alice",
        actions=("read",),
        resources=('Patient::"p-1001"',),
        purpose=PURPOSE,
        ttl_seconds=900,
    )
    return dataclasses.replace(base, **changes)


def test_new_grant() -> None:
    g = new_grant(
        request(max_uses=3, resources=('Ns::Patient::"x"', 'Records::"p-1"')),
        "approver",
        NOW,
        AGENTS,
        ACTIONS,
        max_ttl=3600,
    )
    assert g.id.startswith("g-") and len(g.id) == 18
    assert (g.agent, g.user, g.actions, g.purpose) == ("scribe", "dr-alice", ("read",), PURPOSE)
    assert g.resources == ('Ns::Patient::"x"', 'Records::"p-1"')
    assert (g.issued_by, g.issued_at, g.expires_at, g.max_uses) == ("approver", NOW, NOW + 900, 3)


def test_new_grant_ids_are_unique() -> None:
    ids = {new_grant(request(), "a", NOW, AGENTS, ACTIONS, 3600).id for _ in range(50)}
    assert len(ids) == 50


def test_ttl_may_equal_max_ttl() -> None:
    g = new_grant(request(ttl_seconds=3600), "a", NOW, AGENTS, ACTIONS, max_ttl=3600)
    assert g.expires_at == NOW + 3600


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"agent": "ghost"}, "unknown agent `ghost`"),
        ({"agent": ""}, "unknown agent"),
        ({"user": ""}, "`user` must not be empty"),
        ({"actions": ()}, "at least one non-empty action"),
        ({"actions": ("",)}, "at least one non-empty action"),
        ({"actions": ("read", "")}, "at least one non-empty action"),
        ({"actions": ("delete",)}, "unknown action `delete`"),
        ({"actions": ("read", "READ")}, "unknown action `READ`"),
        ({"resources": ()}, "at least one resource"),
        ({"resources": ("p-1001",)}, "is not a Cedar entity reference"),
        ({"resources": ('Patient::"p-1001"', "Patient::p")}, "is not a Cedar entity reference"),
        ({"purpose": ""}, "`purpose` must not be empty"),
        # issue 11, item 4: identifiers are matched whole, so a trailing newline is refused
        ({"user": "dr-alice\n"}, "`user` `dr-alice\\n` must be 1-255 printable ASCII"),
        ({"user": "dr alice"}, "must be 1-255 printable ASCII characters, no spaces"),
        ({"purpose": "clinical-documentation\n"}, "is not a purpose name"),
        ({"resources": ('Patient::"p-1001"\n',)}, "is not a Cedar entity reference"),
        ({"resources": ('Patient::"p-1\n001"',)}, "is not a Cedar entity reference"),
        ({"agent": "scribe\n"}, "unknown agent `scribe\\n`"),
        ({"ttl_seconds": 0}, "ttl must be between"),
        ({"ttl_seconds": -60}, "ttl must be between"),
        ({"ttl_seconds": 3601}, "ttl must be between"),
        ({"max_uses": -1}, "max_uses"),
    ],
)
def test_new_grant_refusals(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(GrantRequestError) as err:
        new_grant(request(**changes), "approver", NOW, AGENTS, ACTIONS, max_ttl=3600)
    assert message in str(err.value)


def test_no_grant_for_a_suspended_agent() -> None:
    """Issue 11, item 10: refused at issue time, not only unusable later."""
    with pytest.raises(AgentNotActive, match="agent `scribe` is suspended; resume it first"):
        new_grant(request(), "approver", NOW, SUSPENDED, ACTIONS, max_ttl=3600)
    with pytest.raises(GrantRequestError, match="unknown agent `scribe`"):
        new_grant(request(), "approver", NOW, GONE, ACTIONS, max_ttl=3600)


# --- both stores -----------------------------------------------------------------------------

StoreFactory = Callable[[], GrantStore]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = sync_client(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(params=["embedded", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    if request.param == "embedded":
        clock = Clock()
        return lambda: EmbeddedGrantStore(clock)
    url = request.getfixturevalue("redis_url")
    return lambda: RedisStore(url, timeout_ms=500)


def run_with(factory: StoreFactory, body: Callable[[GrantStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = factory()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def live(gid: str = "g-1", ttl: int = 900, **changes: Any) -> Grant:
    """A grant alive now (wall clock), for the stores' TTLs."""
    return dataclasses.replace(make(gid, issued_at=int(time.time()), ttl=ttl), **changes)


def test_store_round_trip(make_store: StoreFactory) -> None:
    a = live("g-a")
    b = live("g-b", resources=('Records::"p-1001"',), actions=("read", "write"), max_uses=2)
    c = live("g-c", agent="billing-bot", user="bob", resources=('Claim::"c-1"',))
    d = live("g-d", user="dr-bob")

    async def body(store: GrantStore) -> None:
        for g in (a, b, c, d):
            await store.put(g)
        assert await store.get("g-a") == a
        assert await store.get("g-b") == b
        assert await store.get("g-missing") is None
        assert sorted(g.id for g in await store.for_pair("scribe", "dr-alice")) == ["g-a", "g-b"]
        assert await store.for_pair("billing-bot", "bob") == [c]
        assert await store.for_pair("scribe", "bob") == []
        assert await store.for_pair("billing-bot", "dr-alice") == []
        assert sorted(g.id for g in await store.list()) == ["g-a", "g-b", "g-c", "g-d"]
        assert sorted(g.id for g in await store.list(agent="scribe")) == ["g-a", "g-b", "g-d"]
        assert sorted(g.id for g in await store.list(user="dr-alice")) == ["g-a", "g-b"]
        assert [g.id for g in await store.list(agent="scribe", user="dr-bob")] == ["g-d"]
        assert await store.list(agent="nobody") == []

    run_with(make_store, body)


def test_store_put_same_id_replaces(make_store: StoreFactory) -> None:
    first = live("g-1")
    second = live("g-1", purpose="billing")

    async def body(store: GrantStore) -> None:
        await store.put(first)
        await store.put(second)
        assert await store.get("g-1") == second
        assert await store.for_pair("scribe", "dr-alice") == [second]

    run_with(make_store, body)


def test_store_revoke(make_store: StoreFactory) -> None:
    a, b = live("g-a"), live("g-b")

    async def body(store: GrantStore) -> None:
        await store.put(a)
        await store.put(b)
        assert await store.consume(a) == 1
        assert await store.revoke("g-a") == Revocation(a)
        assert await store.get("g-a") is None
        assert await store.for_pair("scribe", "dr-alice") == [b]
        assert [g.id for g in await store.list()] == ["g-b"]
        assert await store.uses("g-a") == 0
        # Issue 12: a retried revoke says "already revoked" (from the tombstone), never
        # not_found, and changes nothing.
        assert await store.revoke("g-a") == Revocation(a, already=True)
        assert await store.get("g-a") is None
        assert await store.for_pair("scribe", "dr-alice") == [b]
        assert await store.revoke("g-never") is None

    run_with(make_store, body)


def test_store_consume_counts(make_store: StoreFactory) -> None:
    a, b = live("g-a", max_uses=2), live("g-b")

    async def body(store: GrantStore) -> None:
        await store.put(a)
        await store.put(b)
        assert await store.uses("g-a") == 0
        # the third use is over the limit: answered max + 1 and not counted
        assert [await store.consume(a) for _ in range(4)] == [1, 2, 3, 3]
        assert await store.consume(b) == 1  # counters are per grant
        assert await store.uses("g-a") == 2
        assert await store.uses("g-b") == 1

    run_with(make_store, body)


def test_store_consume_is_atomic_under_concurrency(make_store: StoreFactory) -> None:
    g = live("g-conc", max_uses=50)

    async def body(store: GrantStore) -> None:
        await store.put(g)
        counts = await asyncio.gather(*(store.consume(g) for _ in range(50)))
        assert sorted(counts) == list(range(1, 51))
        assert await store.uses(g.id) == 50

    run_with(make_store, body)


def test_store_keeps_expired_grants_readable(make_store: StoreFactory) -> None:
    """An expired grant stays visible to for_pair so a denial can say grant_expired."""
    now = int(time.time())
    recent = make("g-recent", issued_at=now - 120, ttl=60)  # expired a minute ago

    async def body(store: GrantStore) -> None:
        await store.put(recent)
        held = await store.for_pair("scribe", "dr-alice")
        assert held == [recent]
        assert select_reason(held, now=now) == "grant_expired"

    run_with(make_store, body)


# --- embedded only ----------------------------------------------------------------------------


def test_embedded_purges_grants_past_retention() -> None:
    clock = Clock()
    clock.now = NOW
    store = EmbeddedGrantStore(clock)
    old = make("g-old", issued_at=NOW - EXPIRED_RETENTION_SECONDS - 100, ttl=10)
    edge = make("g-edge", issued_at=NOW - EXPIRED_RETENTION_SECONDS - 10, ttl=10)

    async def body() -> None:
        await store.put(old)
        await store.put(edge)
        await store.put(make("g-new"))
        assert await store.get("g-old") is None  # purged on put
        assert await store.get("g-edge") == edge  # exactly at the horizon: kept
        clock.now += 1
        assert sorted(g.id for g in await store.list()) == ["g-new"]

    asyncio.run(body())


# --- redis only -------------------------------------------------------------------------------


def redis_ttl(url: str, key: str) -> int:
    client = sync_client(url)
    try:
        return int(client.ttl(key))
    finally:
        client.close()


def pair_key(agent: str, user: str) -> str:
    return f"lasthop:{pair_tag(agent, user)}:pair"


def run_redis(
    url: str, body: Callable[[RedisStore], Awaitable[None]], timeout_ms: int = 500
) -> None:
    async def main() -> None:
        store = RedisStore(url, timeout_ms)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_redis_grant_key_expires_with_the_grant(redis_url: str) -> None:
    g = live("g-ttl", ttl=600)

    async def body(store: RedisStore) -> None:
        await store.put(g)
        await store.consume(g)

    run_redis(redis_url, body)
    remaining = g.expires_at - time.time()
    assert abs(redis_ttl(redis_url, "lasthop:grant:g-ttl") - remaining) <= 2
    uses_key = f"lasthop:{pair_tag('scribe', 'dr-alice')}:uses:g-ttl"
    assert abs(redis_ttl(redis_url, uses_key) - remaining) <= 2
    pair = redis_ttl(redis_url, pair_key("scribe", "dr-alice"))
    assert abs(pair - (remaining + EXPIRED_RETENTION_SECONDS)) <= 2


def test_redis_grant_key_really_expires(redis_url: str) -> None:
    g = live("g-short", ttl=1)

    async def body(store: RedisStore) -> None:
        await store.put(g)
        assert await store.get("g-short") == g
        deadline = time.monotonic() + 5
        while await store.get("g-short") is not None:
            assert time.monotonic() < deadline, "grant key never expired"
            await asyncio.sleep(0.1)
        # the pair hash keeps it for a `grant_expired` answer
        assert await store.for_pair("scribe", "dr-alice") == [g]

    run_redis(redis_url, body)


@pytest.mark.parametrize("order", ["long-then-short", "short-then-long"])
def test_redis_pair_hash_keeps_the_longer_lived_grant(redis_url: str, order: str) -> None:
    long_ = live("g-long", ttl=7200)
    short = live("g-short", ttl=60)
    grants = [long_, short] if order == "long-then-short" else [short, long_]

    async def body(store: RedisStore) -> None:
        for g in grants:
            await store.put(g)
        assert sorted(g.id for g in await store.for_pair("scribe", "dr-alice")) == [
            "g-long",
            "g-short",
        ]

    run_redis(redis_url, body)
    want = long_.expires_at + EXPIRED_RETENTION_SECONDS - time.time()
    assert abs(redis_ttl(redis_url, pair_key("scribe", "dr-alice")) - want) <= 2
    assert abs(redis_ttl(redis_url, "lasthop:grant:g-short") - 60) <= 2


@pytest.mark.parametrize(
    "junk",
    [
        b"not json",
        b"[1, 2]",
        b'{"id": "g-x"}',
        b"\xff\xfe",
        b'{"id":"g","agent":"a","user":"u","actions":"read","resources":[],"purpose":"p",'
        b'"issued_by":"x","issued_at":1,"expires_at":"2"}',
    ],
)
def test_redis_junk_in_pair_hash_is_store_unavailable(redis_url: str, junk: bytes) -> None:
    good = live("g-good")

    async def body(store: RedisStore) -> None:
        await store.put(good)
        client = sync_client(redis_url)
        try:
            client.hset(pair_key("scribe", "dr-alice"), "g-junk", junk)
        finally:
            client.close()
        with pytest.raises(StoreUnavailable) as info:
            await store.for_pair("scribe", "dr-alice")
        assert info.value.reason == "store_unavailable"
        assert info.value.status == 503

    run_redis(redis_url, body)


def test_redis_junk_grant_key_is_store_unavailable(redis_url: str) -> None:
    client = sync_client(redis_url)
    try:
        client.set("lasthop:grant:g-junk", b"{")
        client.sadd("lasthop:grants", "g-junk")
    finally:
        client.close()

    async def body(store: RedisStore) -> None:
        with pytest.raises(StoreUnavailable):
            await store.get("g-junk")
        with pytest.raises(StoreUnavailable):
            await store.list()

    run_redis(redis_url, body)


def test_redis_wrong_type_key_is_store_unavailable(redis_url: str) -> None:
    client = sync_client(redis_url)
    try:
        client.set(pair_key("scribe", "dr-alice"), b"a string, not a hash")
    finally:
        client.close()

    async def body(store: RedisStore) -> None:
        with pytest.raises(StoreUnavailable):
            await store.for_pair("scribe", "dr-alice")

    run_redis(redis_url, body)


StoreCall = Callable[[RedisStore], Awaitable[object]]
CALLS: dict[str, StoreCall] = {
    "for_pair": lambda s: s.for_pair("scribe", "dr-alice"),
    "get": lambda s: s.get("g-1"),
    "put": lambda s: s.put(live("g-1")),
    "consume": lambda s: s.consume(live("g-1")),
    "revoke": lambda s: s.revoke("g-1"),
    "list": lambda s: s.list(),
    "uses": lambda s: s.uses("g-1"),
    "ping": lambda s: s.ping(),
}


@pytest.fixture
def doomed_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.close()


@pytest.mark.parametrize("how", ["killed", "paused"])
def test_redis_down_is_store_unavailable_quickly(doomed_redis: RedisServer, how: str) -> None:
    async def body(store: RedisStore) -> None:
        await store.put(live("g-1"))  # connected and working first
        if how == "killed":
            doomed_redis.kill()
        else:
            os.kill(doomed_redis.proc.pid, signal.SIGSTOP)
        for name, call in CALLS.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call(store)
            elapsed = time.monotonic() - started
            assert elapsed < 0.5, f"{name} took {elapsed:.3f} s with timeout_ms=50"

    run_redis(doomed_redis.url, body, timeout_ms=50)


def test_redis_never_started_is_store_unavailable() -> None:
    async def body(store: RedisStore) -> None:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.for_pair("scribe", "dr-alice")
        assert time.monotonic() - started < 0.5

    run_redis(f"redis://127.0.0.1:{free_port()}/0", body, timeout_ms=50)


def test_redis_use_unacknowledged_by_replicas_is_refused_and_given_back(redis_url: str) -> None:
    """Issue 12: `store.use_replicas` fences counted uses. This Redis has no replica, so no
    use can be acknowledged: each is refused (store_unavailable, never allowed) and given
    back, so an outage does not spend the grant."""
    g = live("g-fenced", max_uses=2)

    async def body(store: RedisStore) -> None:
        await store.put(g)
        fenced = RedisStore(redis_url, 50, use_replicas=1)
        try:
            for _ in range(3):
                with pytest.raises(StoreUnavailable, match="only 0 of 1 replicas acknowledged"):
                    await fenced.consume(g)
        finally:
            await fenced.close()
        assert await store.uses(g.id) == 0
        assert [await store.consume(g) for _ in range(3)] == [1, 2, 3]  # unfenced: counted

    run_redis(redis_url, body)


def test_redis_revoke_unacknowledged_stays_applied_and_a_retry_says_so(redis_url: str) -> None:
    g = live("g-revoke-fenced")

    async def body(store: RedisStore) -> None:
        await store.put(g)
        fenced = RedisStore(redis_url, 50, revoke_replicas=1, revoke_wait_ms=10)
        try:
            for _ in range(2):  # the first revokes, the retry finds the tombstone
                with pytest.raises(StoreUnavailable, match="only 0 of 1 replicas acknowledged"):
                    await fenced.revoke(g.id)
                assert await store.for_pair(g.agent, g.user) == []  # applied all the same
        finally:
            await fenced.close()
        assert await store.revoke(g.id) == Revocation(g, already=True)
        assert await store.revoke("g-never-issued") is None

    run_redis(redis_url, body)


def test_redis_fencing_warnings_name_what_is_missing(redis_url: str) -> None:
    """Start-up check (issue 12): the WAITs need replicas, and a primary without
    min-replicas-to-write keeps accepting writes a failover loses."""

    async def warnings(use_replicas: int = 0, revoke_replicas: int = 0) -> list[str]:
        store = RedisStore(
            redis_url, 500, use_replicas=use_replicas, revoke_replicas=revoke_replicas
        )
        try:
            return await store.fencing_warnings()
        finally:
            await store.close()

    assert asyncio.run(warnings()) == []  # nothing fenced: nothing to say
    found = asyncio.run(warnings(use_replicas=1))
    assert len(found) == 2, found
    assert "has 0 connected replicas but store.use_replicas" in found[0]
    assert "no min-replicas-to-write" in found[1]
    client = sync_client(redis_url)
    try:
        client.config_set("min-replicas-to-write", 1)
        client.config_set("min-replicas-max-lag", 10)
        found = asyncio.run(warnings(revoke_replicas=1))
    finally:
        client.config_set("min-replicas-to-write", 0)
        client.close()
    assert len(found) == 1 and "0 connected replicas" in found[0], found
