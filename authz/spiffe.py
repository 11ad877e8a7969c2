"""SPIFFE IDs, parsed strictly, and the binding of an agent to the one workload it runs as.

Parsing follows the SPIFFE ID standard (SPIFFE-ID.md, section 2):

- `spiffe://` in lowercase, then the trust domain: 1-255 of `a-z 0-9 . - _`
  (no upper case, no port, no user info);
- then an optional path: `/`-separated segments of `A-Z a-z 0-9 . - _`, none
  empty (`//`), none `.` or `..`, and no trailing `/`;
- no percent-encoding, query or fragment; at most 2048 bytes in all.

Anything else is refused with a ValueError naming the rule, so two spellings
can never name one workload and one spelling can never name two.

Binding: an agent is bound to exactly one SPIFFE ID, its own (`spiffe_id` in
the registry) or else the one a configured template gives it, e.g.
`spiffe://{trust_domain}/ns/agents/sa/{agent}`; the whole ID is compared.
The peer of a connection (the mTLS client certificate Envoy reports as
`source.principal`, or a database connection's) binds as an agent only when
its ID is exactly that one. The agent's name alone (the last path segment)
never binds: in a mesh with one trust domain, any namespace could present it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PLACEHOLDERS = frozenset({"agent", "trust_domain"})
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" or "/seg/seg"

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()


def trust_domain(name: str) -> str:
    """`name` if it is a valid trust domain name; raises ValueError otherwise."""
    if not name:
        raise ValueError("the trust domain is empty")
    if len(name) > MAX_TRUST_DOMAIN:
        raise ValueError(f"the trust domain is longer than {MAX_TRUST_DOMAIN} characters")
    if not _TRUST_DOMAIN.fullmatch(name):
        raise ValueError(
            f"trust domain `{_printable(name)}` may hold only lowercase letters, digits, "
            "`.`, `-` and `_`"
        )
    return name


def parse(text: str) -> SpiffeId:
    """A SPIFFE ID, exactly as the standard allows it; raises ValueError naming the rule."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ValueError(f"a SPIFFE ID is at most {MAX_ID_BYTES} bytes")
    if not text.startswith(SCHEME):
        raise ValueError(f"`{_printable(text)}` does not start with `spiffe://`")
    domain, slash, path = text[len(SCHEME) :].partition("/")
    trust_domain(domain)
    if not slash:
        return SpiffeId(domain, "")
    for segment in path.split("/"):
        _check_segment(segment, text)
    return SpiffeId(domain, "/" + path)


def _check_segment(segment: str, text: str) -> None:
    if not segment:
        raise ValueError(f"`{_printable(text)}` has an empty path segment or a trailing `/`")
    if segment in (".", ".."):
        raise ValueError(f"`{_printable(text)}` has a `.` or `..` path segment")
    if not _SEGMENT.fullmatch(segment):
        raise ValueError(
            f"path segment `{_printable(segment)}` may hold only letters, digits, `.`, `-` and `_`"
        )


@dataclass(frozen=True, slots=True)
class Binding:
    """Which SPIFFE ID each agent must present; `check` refuses any other.

    `trust_domain`: when set, only IDs in it bind. `template`: the ID of an agent
    with no `spiffe_id` of its own; `{agent}` is its id, `{trust_domain}` the
    trust domain. With neither, an agent without its own `spiffe_id` binds to nothing.
    """

    trust_domain: str = ""
    template: str = ""

    def __post_init__(self) -> None:
        if self.trust_domain:
            trust_domain(self.trust_domain)
        if self.template:
            self._check_template()

    def expected(self, agent: str, registered: str = "") -> SpiffeId | None:
        """The one ID `agent` may present: `registered` (its own) if set, else the template's."""
        if registered:
            return parse(registered)
        if not self.template:
            return None
        return parse(self.template.format(agent=agent, trust_domain=self.trust_domain))

    def check(self, peer: str, agent: str, registered: str = "") -> SpiffeId:
        """The peer's ID, if it is exactly the one `agent` is bound to; raises ValueError."""
        if not peer:
            raise ValueError("no SPIFFE ID for the peer (is the connection mTLS?)")
        presented = parse(peer)
        if self.trust_domain and presented.trust_domain != self.trust_domain:
            raise ValueError(f"peer `{presented}` is not in the trust domain `{self.trust_domain}`")
        expected = self.expected(agent, registered)
        if expected is None:
            raise ValueError(f"`{_printable(agent)}` has no SPIFFE ID to bind to")
        if presented != expected:
            raise ValueError(f"peer `{presented}` is not `{expected}`, the ID of `{agent}`")
        return presented

    def _check_template(self) -> None:
        names = set(_PLACEHOLDER.findall(self.template))
        if "agent" not in names:
            raise ValueError("the template must hold `{agent}`")
        if names - _PLACEHOLDERS:
            raise ValueError(f"unknown placeholders {sorted(names - _PLACEHOLDERS)}; use {{agent}}")
        if "trust_domain" in names and not self.trust_domain:
            raise ValueError("`{trust_domain}` needs a trust domain")
        sample = parse(self.template.format(agent="agent", trust_domain=self.trust_domain))
        if self.trust_domain and sample.trust_domain != self.trust_domain:
            raise ValueError(f"`{self.template}` is outside the trust domain `{self.trust_domain}`")


def _printable(text: str) -> str:
    return text[:200].encode("unicode_escape").decode("ascii")
