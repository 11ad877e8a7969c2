"""Every error Lasthop raises on purpose, as one tree.

    LasthopError                  a check ends with it: `reason` (a `Reason`) and `detail`
    ├── MalformedRequest (400)    the CheckRequest itself cannot be decoded
    ├── Unauthenticated (401)     the caller did not prove who it is
    │   ├── TokenError            a bearer or transaction token was refused
    │   └── PeerError             a connection's client certificate names no SPIFFE ID
    ├── Forbidden (403)           we know who it is, and the answer is no
    │   ├── DelegationError       the `act` chain is refused (cycle, depth, impersonation)
    │   ├── RegistryError         an agent in the chain is unknown or suspended
    │   ├── RouteError            the request maps to no Cedar action and resource
    │   ├── GrantError            no active session grant covers the request
    │   └── PolicyDenied          Cedar said Deny (its reason may be a forbid's `@reason`)
    └── Unavailable (503)         Lasthop cannot decide; it fails closed
        ├── StoreUnavailable      the store is down, slow or returned junk
        ├── AuditUnavailable      the audit trail cannot take a record
        ├── PolicyError           Cedar returned NoDecision or an erroring policy
        └── InternalError         a bug; the check is denied

    StartupError                  start-up stops; never reaches the request path
    ├── ConfigError               names the config key or environment variable
    └── PolicyLoadError           names the policy file and line

    RequestError                  an admin API request is refused; nothing was written
    ├── GrantRequestError         invalid (INVALID_ARGUMENT)
    │   └── AgentNotActive        the grant's agent is suspended (FAILED_PRECONDITION)
    ├── AgentRequestError         invalid (INVALID_ARGUMENT)
    ├── NotPermitted              the caller may not act for that user (PERMISSION_DENIED)
    └── AccessRequestError        an access request, or a decision on one, is refused
                                  (`code`: invalid_argument, not_found, permission_denied,
                                  failed_precondition)

    UsageError                    bad command-line input or an unreadable input file (exit 2)
    ├── ScenarioError             a policy scenario file is wrong
    └── FixtureError              an ALLOW/DENY fixture file is wrong
    AdminError                    the admin API refused a CLI call (`code`: the gRPC status)

    ReceiptError                  a receipt did not verify (`reason`: a stable code)
    JwksError                     a JWKS file for offline verification is unusable

A check error's status comes from its `Reason`; a forbid's own `@reason` is a
403. Details never hold a token.
"""

from __future__ import annotations

from authz.reasons import POLICY_REASON_STATUS, Reason


class LasthopError(Exception):
    """Base of every decision-path error; `status` is the HTTP status Envoy returns."""

    def __init__(self, reason: Reason | str, detail: str = "", policies: tuple[str, ...] = ()):
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail or str(reason).replace("_", " ")
        self.policies = policies  # @ids of the policies that determined a Cedar deny

    @property
    def status(self) -> int:
        reason = self.reason
        return reason.status if isinstance(reason, Reason) else POLICY_REASON_STATUS


class MalformedRequest(LasthopError):
    def __init__(self, detail: str) -> None:
        super().__init__(Reason.MALFORMED_REQUEST, detail)


class Unauthenticated(LasthopError):
    pass


class TokenError(Unauthenticated):
    pass


class PeerError(Unauthenticated):
    def __init__(self, detail: str) -> None:
        super().__init__(Reason.INVALID_PEER, detail)


class Forbidden(LasthopError):
    pass


class DelegationError(Forbidden):
    pass


class RegistryError(Forbidden):
    pass


class RouteError(Forbidden):
    pass


class GrantError(Forbidden):
    pass


class PolicyDenied(Forbidden):
    pass


class Unavailable(LasthopError):
    pass


class StoreUnavailable(Unavailable):
    def __init__(self, detail: str = "grant store unavailable") -> None:
        super().__init__(Reason.STORE_UNAVAILABLE, detail)


class PolicyError(Unavailable):
    """Cedar could not decide. 503 rather than 403: the request may be fine, the policy is not."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.POLICY_ERROR, detail)


class AuditUnavailable(Unavailable):
    """The trail cannot take a record this check needs; no record, no allow."""

    def __init__(self, detail: str = "the audit trail cannot take the record; refusing") -> None:
        super().__init__(Reason.AUDIT_UNAVAILABLE, detail)


class InternalError(Unavailable):
    def __init__(self, detail: str = "internal error") -> None:
        super().__init__(Reason.INTERNAL_ERROR, detail)


class StartupError(Exception):
    """Start-up cannot go on; the message says where the problem is."""


class ConfigError(StartupError):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config `{key}`: {problem}")
        self.key = key


class PolicyLoadError(StartupError):
    """The policy directory cannot be loaded; the message names the file and line."""

    def __init__(self, path: str, problem: str, line: int | None = None, column: int | None = None):
        where = path
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.column = column


class RequestError(Exception):
    """An admin API request is invalid; nothing was written. The message says what to fix."""


class GrantRequestError(RequestError):
    pass


class AgentNotActive(GrantRequestError):
    """The agent exists but is suspended: no grant until it is resumed."""


class AgentRequestError(RequestError):
    pass


class NotPermitted(RequestError):
    """The caller's role does not let it act for that user (`authz.access.authority`)."""


class AccessRequestError(RequestError):
    """An access request, or a decision on one, is refused; nothing was written."""

    CODES = ("invalid_argument", "not_found", "permission_denied", "failed_precondition")

    def __init__(self, detail: str, code: str = "invalid_argument") -> None:
        super().__init__(detail)
        assert code in self.CODES, code
        self.code = code
        self.detail = detail


class UsageError(Exception):
    """Bad command-line input or an unreadable input file: printed to stderr, exit 2."""


class ScenarioError(UsageError):
    """The scenario file itself is wrong; the message names the scenario and key."""


class FixtureError(UsageError):
    """An ALLOW/DENY fixture cannot be read or lacks a key; the message names the file."""


class AdminError(Exception):
    """The admin API refused a call; `code` is the gRPC status name, lowercase."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class ReceiptError(Exception):
    """A receipt did not verify; `reason` is a stable code, the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class JwksError(Exception):
    """A JWKS file for verification is missing or unusable; the message says which and why."""
