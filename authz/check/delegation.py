"""The RFC 8693 delegation chain, and the rules that tie a token to who presents it.

Reading: the top-level `act.sub` is the current actor; each nested `act` is the
actor before it; the innermost is the first agent; `sub` is the user on whose
behalf the chain acts. A token with no `act` is presented by its `sub`.
Only `sub` is read inside `act`: other claims there describe the actor and
change nothing. `may_act` is a permission to delegate, not a delegation.

Rules, one reason each:

- `act` is not an object, or has no non-empty string `sub`      -> invalid_act (401)
- more agents than `identity.max_chain_depth`                   -> chain_too_deep
- an actor appears twice, or equals `sub`                       -> delegation_cycle
- `client_id`/`azp` names a registered agent but there is no `act`
  (an agent presenting a user's token as though it were the user) -> impersonation
- `client_id`/`azp` present and not the current actor            -> impersonation

Binding the mTLS peer to the current actor needs the registry (each agent's
SPIFFE ID): the registry phase does it, with `authz.spiffe.Binding`.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from authz.errors import DelegationError, TokenError
from authz.model import Chain, TokenClaims
from authz.reasons import Reason


def read_chain(claims: TokenClaims, max_depth: int) -> Chain:
    actors: list[str] = []  # current actor first, as the nesting reads
    act: Any = claims.act
    present = claims.has_act
    while present:
        if not isinstance(act, dict):
            raise TokenError(Reason.INVALID_ACT, "`act` must be a JSON object")
        sub = act.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError(Reason.INVALID_ACT, "`act` must carry a non-empty string `sub`")
        if len(actors) == max_depth:
            raise DelegationError(
                Reason.CHAIN_TOO_DEEP, f"more than {max_depth} agents in the chain"
            )
        if sub in actors or sub == claims.subject:
            raise DelegationError(
                Reason.DELEGATION_CYCLE, f"actor `{sub}` appears twice in the chain"
            )
        actors.append(sub)
        present, act = "act" in act, act.get("act")
    return Chain(user=claims.subject, agents=tuple(reversed(actors)))


def act_claim(agents: list[str]) -> dict[str, Any] | None:
    """The inverse of `read_chain`: agents, first to last -> a nested `act`, actor outermost."""
    act: dict[str, Any] | None = None
    for agent in agents:
        act = {"sub": agent, **({"act": act} if act else {})}
    return act


def check_presenter(claims: TokenClaims, chain: Chain, agents: Container[str]) -> None:
    """Refuse tokens presented by someone other than the chain's current actor."""
    client = claims.client_id
    if not chain.agents:
        if client and client in agents:
            raise DelegationError(
                Reason.IMPERSONATION, f"agent `{client}` presents a token with no `act` delegation"
            )
    elif client and client != chain.actor:
        raise DelegationError(
            Reason.IMPERSONATION, f"client `{client}` is not the current actor `{chain.actor}`"
        )
