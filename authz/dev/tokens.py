"""A throwaway issuer for the demo, tests and benchmarks: a generated key, its JWKS, minted tokens.

The key lives only in memory and in the temporary JWKS directory; it is never
a production credential.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authz.check.delegation import act_claim

ISSUER = "https://idp.example.org"
AUDIENCE = "ehr-api"
ADMIN_AUDIENCE = "lasthop-admin"


class DemoIssuer:
    def __init__(self, algorithm: str = "ES256", kid: str = "demo-key-1") -> None:
        self.algorithm = algorithm
        self.kid = kid
        if algorithm == "ES256":
            self.private_key: Any = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key()))
        elif algorithm == "RS256":
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        else:
            raise ValueError(f"unsupported demo algorithm `{algorithm}`")
        self.public_jwk = {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def write_jwks(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.jwks(), indent=2))
        return path

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(
            claims,
            self.private_key,
            algorithm=self.algorithm,
            headers={"kid": self.kid, "typ": "at+jwt", **(headers or {})},
        )

    def access_token(
        self, user: str, agents: list[str], *, purpose: str = "", ttl: int = 600, **extra: Any
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "txn": str(uuid.uuid4()),
        }
        if agents:
            claims["act"] = act_claim(agents)
            claims["client_id"] = agents[-1]
        if purpose:
            claims["purp"] = purpose
        claims.update(extra)
        return self.sign(claims)

    def admin_token(
        self, sub: str = "ops-admin", scope: str = "lasthop:admin", ttl: int = 600
    ) -> str:
        now = int(time.time())
        return self.sign(
            {
                "iss": ISSUER,
                "aud": ADMIN_AUDIENCE,
                "sub": sub,
                "scope": scope,
                "iat": now,
                "exp": now + ttl,
                "jti": uuid.uuid4().hex,
            }
        )
