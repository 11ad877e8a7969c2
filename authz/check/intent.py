"""Intent: the transaction id and the purpose that travel with every decision.

Source, in order:
1. a `txn-token` header (draft-ietf-oauth-transaction-tokens): verified with the
   issuer's keys, `typ` txntoken+jwt, an allowed issuer, our audience, and the
   same `sub` as the access token; `txn` is the transaction id and `scope` the
   purpose. A header that fails any check is a 401 `invalid_txn_token`;
2. else the access token's own `txn` and `purp` claims.
"""

from __future__ import annotations

from collections.abc import Callable

from authz.check import identity
from authz.check.keys import KeySource
from authz.errors import TokenError
from authz.model import Intent, TokenClaims
from authz.reasons import Reason

TXN_TOKEN_HEADER = "txn-token"


class IntentReader:
    def __init__(
        self, keys: KeySource, rules: identity.IdentityRules, clock: Callable[[], float]
    ) -> None:
        self._keys = keys
        self._rules = rules
        self._clock = clock

    async def read(self, claims: TokenClaims, txn_headers: list[str]) -> Intent:
        if not txn_headers:
            return Intent(purpose=claims.purpose, txn=claims.txn, source="access-token")
        if len(txn_headers) > 1:
            raise TokenError(Reason.INVALID_TXN_TOKEN, "more than one `txn-token` header")
        token = txn_headers[0].strip()
        try:
            txn = await identity.verified(
                self._keys, lambda: identity.verify(token, self._keys, self._rules, self._clock())
            )
        except TokenError as err:
            raise TokenError(Reason.INVALID_TXN_TOKEN, f"txn-token refused: {err.reason}") from err
        if txn.get("sub") != claims.subject:
            raise TokenError(Reason.INVALID_TXN_TOKEN, "txn-token `sub` is not the access token's")
        purpose, txn_id = txn.get("scope", ""), txn.get("txn", "")
        if not isinstance(purpose, str) or not isinstance(txn_id, str) or not txn_id:
            raise TokenError(Reason.INVALID_TXN_TOKEN, "txn-token needs string `txn` and `scope`")
        return Intent(purpose=purpose, txn=txn_id, source="txn-token")
