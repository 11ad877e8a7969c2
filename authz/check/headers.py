"""Request headers that could change, after the decision, what the upstream does or believes.

Method overrides. `X-HTTP-Method-Override: DELETE` on a GET asks many
frameworks to run a DELETE: a read grant would delete. Rule: an override header
(`server.method_override_headers`) naming a method other than the request's
-> method_override (403). On an allow, every override header is removed from
the upstream request whether Lasthop saw it or not (Envoy sends Lasthop only
the headers its `allowed_headers` lists; it removes whatever Lasthop names).

Identity headers. The upstream trusts the `x-lasthop-*` headers Lasthop sets.
CGI and WSGI read `x_lasthop_user` and `x-lasthop-user` as one variable
(`HTTP_X_LASTHOP_USER`), so on an allow Lasthop removes any header whose name,
with `_` read as `-`, is one of its own, besides the ones it sets. The
shipped sidecar also makes Envoy refuse any header name with an underscore
(`headers_with_underscores_action: REJECT_REQUEST`) before it asks Lasthop.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from authz.config import DEFAULT_METHOD_OVERRIDES
from authz.errors import RouteError
from authz.reasons import Reason

__all__ = ["DEFAULT_METHOD_OVERRIDES", "check_method_override", "to_remove"]
IDENTITY_PREFIX = "x-lasthop-"


def check_method_override(
    headers: Mapping[str, list[str]], method: str, names: Iterable[str]
) -> None:
    """Refuse a request whose override header names a method other than its own."""
    for name in names:
        for value in headers.get(name, ()):
            if value.strip() and value.strip().upper() != method.upper():
                raise RouteError(
                    Reason.METHOD_OVERRIDE,
                    f"`{name}` asks for `{_printable(value)}` on a {_printable(method)} request",
                )


def to_remove(
    headers: Collection[str], ours: Collection[str], overrides: Iterable[str]
) -> list[str]:
    """The headers an allow removes: the client's own identity headers, in any spelling,
    with the underscore spelling of each of ours, and every method override header."""
    spoofed = {h for h in headers if _reads_as_ours(h) and h not in ours}
    spoofed.update(name.replace("-", "_") for name in ours)
    spoofed.update(overrides)
    return sorted(spoofed)


def _reads_as_ours(name: str) -> bool:
    return name.replace("_", "-").startswith(IDENTITY_PREFIX)


def _printable(text: str) -> str:
    return text[:64].encode("unicode_escape").decode("ascii")
