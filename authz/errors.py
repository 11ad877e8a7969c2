"""Every way a check can fail, as one exception tree.

    LasthopError                  reason: stable code, also the audit field and metric label
    ├── Unauthenticated (401)     the caller did not prove who it is
    │   └── TokenError            a bearer or transaction token was refused
    ├── Forbidden (403)           we know who it is, and the answer is no
    │   ├── DelegationError       the `act` chain is refused (cycle, depth, impersonation)
    │   ├── RegistryError         an agent in the chain is unknown or suspended
    │   ├── RouteError            the request maps to no Cedar action and resource
    │   ├── GrantError            no active session grant covers the request
    │   └── PolicyDenied          Cedar said Deny
    └── Unavailable (503)         Lasthop cannot decide; it fails closed
        ├── StoreUnavailable      the grant store is down, slow or returned junk
        ├── AuditUnavailable      the audit trail cannot take a record
        └── PolicyError           Cedar returned NoDecision or an erroring policy

Start-up errors are separate: `ConfigError` names the key, `PolicyLoadError`
names the file and line. They never reach the request path.

Each leaf is raised with a `reason` code (lowercase, underscores) and a
human `detail`; the detail never holds a token.
"""

from __future__ import annotations


class LasthopError(Exception):
    """Base of every decision-path error; `status` is the HTTP status Envoy returns."""

    status = 500

    def __init__(self, reason: str, detail: str = "", policies: tuple[str, ...] = ()) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail or reason.replace("_", " ")
        self.policies = policies  # @ids of the policies that determined a Cedar deny


class Unauthenticated(LasthopError):
    status = 401


class TokenError(Unauthenticated):
    pass


class Forbidden(LasthopError):
    status = 403


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
    status = 503


class StoreUnavailable(Unavailable):
    def __init__(self, detail: str = "grant store unavailable") -> None:
        super().__init__("store_unavailable", detail)


class PolicyError(Unavailable):
    """Cedar could not decide. 503 rather than 403: the request may be fine, the policy is not."""

    def __init__(self, detail: str) -> None:
        super().__init__("policy_error", detail)


class AuditUnavailable(Unavailable):
    """The trail cannot take a record this check needs; no record, no allow."""

    def __init__(self, detail: str = "the audit trail cannot take the record; refusing") -> None:
        super().__init__("audit_unavailable", detail)


class InternalError(Unavailable):
    def __init__(self, detail: str = "internal error") -> None:
        super().__init__("internal_error", detail)


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config `{key}`: {problem}")
        self.key = key


class PolicyLoadError(Exception):
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


class GrantRequestError(Exception):
    """An admin request to issue a grant is invalid; nothing was written."""
