"""authz.delegation: reading the RFC 8693 `act` chain, and tying a token to who presents it.

- read_chain: order (first agent first, current actor last), the user acting
  alone, the depth limit at exactly max and max + 1, invalid `act`, cycles, and
  that only `sub` is read inside `act`;
- check_presenter: `client_id`/`azp` against the chain (impersonation);
- peer binding through the pipeline (`bind_peer=True`): the mTLS peer must be
  exactly the SPIFFE ID the current actor is bound to (`tests/test_spiffe.py`
  has the parser and the binding rules on their own).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from authz.check.delegation import act_claim, check_presenter, read_chain
from authz.check.pipeline import Pipeline
from authz.dev.tokens import ISSUER, DemoIssuer
from authz.errors import DelegationError, TokenError
from authz.model import Chain, Decision, TokenClaims
from authz.policy.load import PolicyBundle
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant

USER = "dr-alice"
AGENTS = {"scribe", "med-reconciler", "billing-bot", "orchestrator", "chart-exporter"}


def claims(act: Any = None, client_id: str = "", sub: str = USER) -> TokenClaims:
    return TokenClaims(
        subject=sub,
        issuer=ISSUER,
        client_id=client_id,
        act=act,
        has_act=act is not None,
        purpose=PURPOSE,
        txn="txn-1",
        expires_at=0,
    )


def nested(*agents: str) -> dict[str, Any] | None:
    """Agents first-to-last as a nested `act`, built independently of demo_tokens."""
    act: dict[str, Any] | None = None
    for agent in agents:
        act = {"sub": agent} if act is None else {"sub": agent, "act": act}
    return act


# --- read_chain -------------------------------------------------------------------------


def test_design_example_reads_first_agent_first() -> None:
    # DESIGN.md: act {"sub": "scribe", "act": {"sub": "orchestrator"}} is
    # dr-alice -> orchestrator -> scribe; scribe is the current actor.
    chain = read_chain(claims({"sub": "scribe", "act": {"sub": "orchestrator"}}), max_depth=4)
    assert chain == Chain(user=USER, agents=("orchestrator", "scribe"))
    assert chain.actor == "scribe"
    assert chain.delegator == "orchestrator"
    assert chain.depth == 2
    assert chain.render() == "dr-alice -> orchestrator -> scribe"


@pytest.mark.parametrize(
    "agents",
    [
        ("scribe",),
        ("orchestrator", "scribe"),
        ("orchestrator", "med-reconciler", "scribe"),
        ("billing-bot", "med-reconciler", "orchestrator", "scribe"),
    ],
    ids=lambda a: "->".join(a),
)
def test_chain_order_is_first_agent_first_current_actor_last(agents: tuple[str, ...]) -> None:
    chain = read_chain(claims(nested(*agents)), max_depth=4)
    assert chain.user == USER
    assert chain.agents == agents
    assert chain.actor == agents[-1]
    assert chain.delegator == (agents[-2] if len(agents) > 1 else USER)
    assert chain.depth == len(agents)


def test_nested_helper_agrees_with_demo_tokens() -> None:
    agents = ["orchestrator", "med-reconciler", "scribe"]
    assert nested(*agents) == act_claim(agents)


def test_user_acting_alone() -> None:
    chain = read_chain(claims(None), max_depth=4)
    assert chain == Chain(user=USER, agents=())
    assert (chain.actor, chain.delegator, chain.depth) == (USER, USER, 0)
    assert chain.render() == USER


@pytest.mark.parametrize("max_depth", [1, 2, 3, 4, 8])
def test_depth_limit_exactly_at_max_is_accepted(max_depth: int) -> None:
    agents = tuple(f"agent-{i}" for i in range(max_depth))
    assert read_chain(claims(nested(*agents)), max_depth).agents == agents


@pytest.mark.parametrize("max_depth", [1, 2, 3, 4, 8])
def test_depth_limit_plus_one_is_refused(max_depth: int) -> None:
    agents = tuple(f"agent-{i}" for i in range(max_depth + 1))
    with pytest.raises(DelegationError) as err:
        read_chain(claims(nested(*agents)), max_depth)
    assert err.value.reason == "chain_too_deep"
    assert err.value.status == 403


def test_depth_is_counted_over_the_whole_chain_even_if_it_is_much_deeper() -> None:
    agents = tuple(f"agent-{i}" for i in range(200))
    with pytest.raises(DelegationError) as err:
        read_chain(claims(nested(*agents)), max_depth=4)
    assert err.value.reason == "chain_too_deep"


@pytest.mark.parametrize(
    "act",
    [
        "scribe",
        ["scribe"],
        7,
        1.5,
        True,
        {},
        {"sub": ""},
        {"sub": 7},
        {"sub": None},
        {"sub": ["scribe"]},
        {"client_id": "scribe"},
        {"sub": "scribe", "act": "orchestrator"},
        {"sub": "scribe", "act": {}},
        {"sub": "scribe", "act": {"sub": 0}},
        {"sub": "scribe", "act": {"sub": "orchestrator", "act": []}},
    ],
    ids=repr,
)
def test_act_that_is_not_an_actor_object_is_invalid(act: Any) -> None:
    with pytest.raises(TokenError) as err:
        read_chain(claims(act), max_depth=4)
    assert err.value.reason == "invalid_act"
    assert err.value.status == 401


@pytest.mark.parametrize(
    "act",
    [
        nested(USER),
        nested(USER, "scribe"),
        nested("orchestrator", USER, "scribe"),
        nested("scribe", "scribe"),
        nested("scribe", "orchestrator", "scribe"),
        nested("orchestrator", "orchestrator", "scribe"),
    ],
    ids=[
        "actor-is-user",
        "first-agent-is-user",
        "user-in-the-middle",
        "actor-twice",
        "actor-loops-back",
        "repeat-before-actor",
    ],
)
def test_cycles_are_refused(act: dict[str, Any]) -> None:
    with pytest.raises(DelegationError) as err:
        read_chain(claims(act), max_depth=4)
    assert err.value.reason == "delegation_cycle"
    assert err.value.status == 403


def test_cycle_of_a_different_user_is_not_a_cycle() -> None:
    # Control for the cycle rule: an agent named like another user is fine.
    chain = read_chain(claims(nested("bob", "scribe")), max_depth=4)
    assert chain.agents == ("bob", "scribe")


@pytest.mark.parametrize(
    "noise",
    [
        {"client_id": "billing-bot"},
        {"azp": "billing-bot"},
        {"aud": "other"},
        {"scope": "lasthop:admin"},
        {"purp": "billing"},
        {"may_act": {"sub": "billing-bot"}},
        {"iss": "https://evil.example"},
        {"exp": 1},
    ],
    ids=repr,
)
def test_only_sub_is_read_inside_act(noise: dict[str, Any]) -> None:
    plain = read_chain(claims(nested("orchestrator", "scribe")), max_depth=4)
    noisy_actor = {"sub": "scribe", **noise, "act": {"sub": "orchestrator"}}
    noisy_first = {"sub": "scribe", "act": {"sub": "orchestrator", **noise}}
    assert read_chain(claims(noisy_actor), max_depth=4) == plain
    assert read_chain(claims(noisy_first), max_depth=4) == plain


# --- check_presenter --------------------------------------------------------------------


def presenter_reason(chain_agents: tuple[str, ...], client_id: str = "") -> str:
    chain = Chain(user=USER, agents=chain_agents)
    try:
        check_presenter(claims(client_id=client_id), chain, AGENTS)
    except DelegationError as err:
        assert err.status == 403
        return err.reason
    return "ok"


@pytest.mark.parametrize(
    "client_id, expected",
    [
        ("", "ok"),  # no presenter claim: the user presents their own token
        ("ehr-portal", "ok"),  # a web client that is not a registered agent
        ("dr-alice", "ok"),
        ("scribe", "impersonation"),  # an agent presenting the user's token as the user
        ("orchestrator", "impersonation"),
        ("chart-exporter", "impersonation"),
    ],
)
def test_presenter_of_a_token_without_act(client_id: str, expected: str) -> None:
    assert presenter_reason((), client_id) == expected


@pytest.mark.parametrize(
    "client_id, expected",
    [
        ("", "ok"),
        ("scribe", "ok"),  # the current actor
        ("orchestrator", "impersonation"),  # an earlier agent in the chain
        ("dr-alice", "impersonation"),  # the user
        ("billing-bot", "impersonation"),  # a registered agent outside the chain
        ("ehr-portal", "impersonation"),  # anything else
        ("Scribe", "impersonation"),
    ],
)
def test_presenter_of_a_delegated_token(client_id: str, expected: str) -> None:
    assert presenter_reason(("orchestrator", "scribe"), client_id) == expected


# --- peer binding through the pipeline ----------------------------------------------------

TEMPLATE = "spiffe://trust.example/ns/ehr/sa/{agent}"
SCRIBE_PEER = "spiffe://trust.example/ns/ehr/sa/scribe"


def scribe_pipeline(make_pipeline: PipelineFactory, clock: Clock, bind_peer: bool) -> Pipeline:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    return make_pipeline(store=store, bind_peer=bind_peer, spiffe_id_template=TEMPLATE)


def decide(pipeline: Pipeline, token: str, peer: str) -> Decision:
    return asyncio.run(pipeline.check(check_input(token, peer=peer)))


@pytest.mark.parametrize("agents", [["scribe"], ["orchestrator", "scribe"]], ids=repr)
def test_matching_spiffe_peer_is_allowed(
    make_pipeline: PipelineFactory, clock: Clock, issuer: DemoIssuer, agents: list[str]
) -> None:
    pipeline = scribe_pipeline(make_pipeline, clock, bind_peer=True)
    token = issuer.access_token(USER, agents, purpose=PURPOSE)
    decision = decide(pipeline, token, SCRIBE_PEER)
    assert (decision.allowed, decision.status, decision.reason) == (True, 200, "allowed")


@pytest.mark.parametrize(
    "peer",
    [
        "spiffe://trust.example/ns/ehr/sa/orchestrator",  # the delegator, not the actor
        "spiffe://trust.example/ns/ehr/sa/billing-bot",
        "spiffe://trust.example/ns/ehr/sa/dr-alice",
        "spiffe://trust.example/ns/ehr/sa/Scribe",
        # issue 11, item 7: the last segment alone used to bind
        "spiffe://trust.example/ns/attacker/sa/scribe",
        "spiffe://trust.example/scribe",
        "spiffe://evil.example/ns/ehr/sa/scribe",
        "spiffe://trust.example/ns/ehr/sa/scribe/",  # invalid per the SPIFFE spec
        "spiffe://trust.example/ns/ehr/sa/./scribe",
        "spiffe://trust.example/ns//ehr/sa/scribe",
        "spiffe://Trust.example/ns/ehr/sa/scribe",
        "spiffe://trust.example:443/ns/ehr/sa/scribe",
        "spiffe://trust.example/ns/ehr/sa/scribe?x=1",
        "spiffe://trust.example/ns/ehr/sa/scr%69be",
        "spiffe://trust.example",
        "https://trust.example/ns/ehr/sa/scribe",
        "scribe",
        "",
    ],
    ids=repr,
)
def test_other_or_missing_peer_is_peer_mismatch(
    make_pipeline: PipelineFactory, clock: Clock, issuer: DemoIssuer, peer: str
) -> None:
    token = issuer.access_token(USER, ["orchestrator", "scribe"], purpose=PURPOSE)
    bound = scribe_pipeline(make_pipeline, clock, bind_peer=True)
    decision = decide(bound, token, peer)
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "peer_mismatch")
    # control: the same request with binding off is allowed, so binding is what refused it
    unbound = scribe_pipeline(make_pipeline, clock, bind_peer=False)
    decision = decide(unbound, token, peer)
    assert (decision.allowed, decision.status, decision.reason) == (True, 200, "allowed")


def test_an_agents_own_spiffe_id_binds_it_and_nothing_else_does(
    make_pipeline: PipelineFactory, clock: Clock, issuer: DemoIssuer, bundle: PolicyBundle
) -> None:
    """An agent registered with its own `spiffe_id` binds to that ID, not the template's."""
    own = "spiffe://trust.example/ns/scribe-prod/sa/documentation"
    agents = {**bundle.agents, "scribe": replace(bundle.agents["scribe"], spiffe_id=own)}
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    pipeline = make_pipeline(
        store=store,
        bind_peer=True,
        spiffe_id_template=TEMPLATE,
        registry=SeededRegistry(agents),
    )
    token = issuer.access_token(USER, ["scribe"], purpose=PURPOSE)
    assert decide(pipeline, token, own).reason == "allowed"
    assert decide(pipeline, token, SCRIBE_PEER).reason == "peer_mismatch"


def test_without_a_template_an_agent_with_no_spiffe_id_binds_to_nothing(
    make_pipeline: PipelineFactory, clock: Clock, issuer: DemoIssuer
) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    pipeline = make_pipeline(store=store, bind_peer=True)
    decision = decide(pipeline, issuer.access_token(USER, ["scribe"], purpose=PURPOSE), SCRIBE_PEER)
    assert (decision.reason, decision.detail) == (
        "peer_mismatch",
        "`scribe` has no SPIFFE ID to bind to",
    )
