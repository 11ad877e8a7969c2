"""The enforced policies that can apply to one principal: Cedar evaluated on a slice."""

from __future__ import annotations

import json
from typing import Any

import cedarpy


class PolicySlices:
    """The enforced policies that can apply to one principal.

    A policy whose scope is `principal == T::"id"` can only match that
    principal, so a request by anyone else is evaluated without it; every
    other policy (unconstrained, `in`, `is`) is in every slice. Slices are
    built on first use and kept: at most one per principal named in a scope.
    The decision is the same as with the whole set, at a cost that does not
    grow with the number of per-principal policies.
    """

    def __init__(self, est: dict[str, Any], whole: cedarpy.PolicySet) -> None:
        self.whole = whole
        self._general = {k: v for k, v in est.items() if _pinned(v) is None}
        self._pinned: dict[tuple[str, str], dict[str, Any]] = {}
        for cedar_id, body in est.items():
            key = _pinned(body)
            if key is not None:
                self._pinned.setdefault(key, {})[cedar_id] = body
        self._slices: dict[tuple[str, str], cedarpy.PolicySet] = {}
        self._unpinned: cedarpy.PolicySet | None = None

    def for_principal(self, entity_type: str, entity_id: str) -> cedarpy.PolicySet:
        if not self._pinned:
            return self.whole
        key = (entity_type, entity_id)
        own = self._pinned.get(key)
        if own is None:
            if self._unpinned is None:
                self._unpinned = from_est(self._general)
            return self._unpinned
        found = self._slices.get(key)
        if found is None:
            found = self._slices[key] = from_est({**self._general, **own})
        return found


def _pinned(body: dict[str, Any]) -> tuple[str, str] | None:
    scope = body.get("principal", {})
    entity = scope.get("entity") if scope.get("op") == "==" else None
    if isinstance(entity, dict) and "type" in entity and "id" in entity:
        return str(entity["type"]), str(entity["id"])
    return None


def from_est(policies: dict[str, Any]) -> cedarpy.PolicySet:
    return cedarpy.PolicySet.from_json_str(
        json.dumps({"staticPolicies": policies, "templates": {}, "templateLinks": []})
    )
