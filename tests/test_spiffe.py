"""authz.spiffe: SPIFFE IDs parsed strictly per the standard, and the agent binding.

Issue 11, item 7: with `bind_peer = true`, the last path segment alone used to
bind (`spiffe://cluster.local/ns/attacker/sa/scribe` bound as `scribe`), and
IDs the standard calls invalid (a trailing `/`) were accepted. The binding
compares the whole ID; the parser refuses every form the standard refuses.
"""

from __future__ import annotations

import pytest

from authz import spiffe
from authz.spiffe import Binding, SpiffeId


@pytest.mark.parametrize(
    "text, trust_domain, path",
    [
        ("spiffe://trust.example", "trust.example", ""),
        ("spiffe://trust.example/ns/ehr/sa/scribe", "trust.example", "/ns/ehr/sa/scribe"),
        (
            "spiffe://cluster.local/ns/default/sa/med-reconciler",
            "cluster.local",
            "/ns/default/sa/med-reconciler",
        ),
        ("spiffe://a_b-c.d/A.b_C-9/..x/x..", "a_b-c.d", "/A.b_C-9/..x/x.."),
    ],
)
def test_valid_ids_parse_and_print_back(text: str, trust_domain: str, path: str) -> None:
    parsed = spiffe.parse(text)
    assert parsed == SpiffeId(trust_domain, path)
    assert str(parsed) == text


@pytest.mark.parametrize(
    "text, rule",
    [
        ("", "does not start with `spiffe://`"),
        ("SPIFFE://trust.example/x", "does not start with `spiffe://`"),
        ("https://trust.example/x", "does not start with `spiffe://`"),
        (" spiffe://trust.example/x", "does not start with `spiffe://`"),
        ("spiffe://", "trust domain is empty"),
        ("spiffe:///ns/x", "trust domain is empty"),
        ("spiffe://Trust.example/x", "lowercase letters"),
        ("spiffe://trust.example:8443/x", "lowercase letters"),
        ("spiffe://user@trust.example/x", "lowercase letters"),
        ("spiffe://trust.example/", "trailing `/`"),
        ("spiffe://trust.example/ns/ehr/sa/scribe/", "trailing `/`"),
        ("spiffe://trust.example//ns", "empty path segment"),
        ("spiffe://trust.example/ns/./sa", "`.` or `..`"),
        ("spiffe://trust.example/ns/../sa", "`.` or `..`"),
        ("spiffe://trust.example/..", "`.` or `..`"),
        ("spiffe://trust.example/scr%69be", "path segment `scr%69be`"),
        ("spiffe://trust.example/x?y=1", "path segment `x?y=1`"),
        ("spiffe://trust.example/x#y", "path segment `x#y`"),
        ("spiffe://trust.example/sa/scribe\n", "path segment `scribe\\n`"),
        ("spiffe://trust.example/sa/scr\u00efbe", "path segment"),
        ("spiffe://trust.example\n/sa/scribe", "lowercase letters"),
        ("spiffe://" + "a" * 256, "longer than 255"),
        ("spiffe://td/" + "a" * 2040, "at most 2048 bytes"),
    ],
    ids=repr,
)
def test_invalid_ids_are_refused_naming_the_rule(text: str, rule: str) -> None:
    with pytest.raises(ValueError) as err:
        spiffe.parse(text)
    assert rule in str(err.value)


TEMPLATE = "spiffe://{trust_domain}/ns/agents/sa/{agent}"


def test_the_template_binds_the_whole_id_in_one_namespace() -> None:
    binding = Binding(trust_domain="cluster.local", template=TEMPLATE)
    peer = "spiffe://cluster.local/ns/agents/sa/scribe"
    assert binding.check(peer, "scribe") == spiffe.parse(peer)
    for other in (
        "spiffe://cluster.local/ns/attacker/sa/scribe",  # the bypass the issue describes
        "spiffe://cluster.local/ns/agents/sa/billing-bot",
        "spiffe://cluster.local/ns/agents/sa/scribe/x",
        "spiffe://evil.local/ns/agents/sa/scribe",
    ):
        with pytest.raises(ValueError):
            binding.check(other, "scribe")


def test_an_agents_own_id_wins_over_the_template() -> None:
    binding = Binding(trust_domain="cluster.local", template=TEMPLATE)
    own = "spiffe://cluster.local/ns/scribe-prod/sa/documentation"
    assert binding.check(own, "scribe", registered=own) == spiffe.parse(own)
    with pytest.raises(ValueError, match="is not `spiffe://cluster.local/ns/scribe-prod"):
        binding.check("spiffe://cluster.local/ns/agents/sa/scribe", "scribe", registered=own)


def test_an_own_id_outside_the_trust_domain_does_not_bind() -> None:
    binding = Binding(trust_domain="cluster.local")
    other = "spiffe://partner.example/ns/x/sa/scribe"
    with pytest.raises(ValueError, match="not in the trust domain `cluster.local`"):
        binding.check(other, "scribe", registered=other)


def test_with_neither_template_nor_own_id_nothing_binds() -> None:
    with pytest.raises(ValueError, match="has no SPIFFE ID to bind to"):
        Binding().check("spiffe://cluster.local/ns/agents/sa/scribe", "scribe")


def test_no_peer_is_refused() -> None:
    with pytest.raises(ValueError, match="no SPIFFE ID for the peer"):
        Binding(template="spiffe://td/sa/{agent}").check("", "scribe")


@pytest.mark.parametrize(
    "trust_domain, template, problem",
    [
        ("", "spiffe://td/ns/agents/sa/scribe", "must hold `{agent}`"),
        ("", "spiffe://td/ns/{namespace}/sa/{agent}", "unknown placeholders ['namespace']"),
        ("", "spiffe://{trust_domain}/sa/{agent}", "`{trust_domain}` needs a trust domain"),
        ("td", "spiffe://other/sa/{agent}", "outside the trust domain `td`"),
        ("td", "spiffe://td/sa/{agent}/", "trailing `/`"),
        ("td", "https://td/sa/{agent}", "does not start with `spiffe://`"),
        ("TD", "spiffe://TD/sa/{agent}", "lowercase letters"),
    ],
)
def test_a_bad_template_is_refused(trust_domain: str, template: str, problem: str) -> None:
    with pytest.raises(ValueError) as err:
        Binding(trust_domain=trust_domain, template=template)
    assert problem in str(err.value)
