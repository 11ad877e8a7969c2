"""Entity templates of the route table: `Records::"{patient}"` filled from named parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass

from authz.errors import PolicyLoadError
from authz.model import EntityRef

PARAMETER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# a value that can fill a parameter: one path segment of unreserved characters, no leading dot
ID_VALUE = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}")


@dataclass(frozen=True, slots=True)
class EntityTemplate:
    entity_type: str
    id_template: str

    def fill(self, params: dict[str, str]) -> EntityRef:
        return EntityRef(self.entity_type, self.id_template.format_map(params))


def entity_template(text: str, names: set[str], where: str, ctx: str) -> EntityTemplate:
    """Parse `Type::"id {param}"`; every parameter must be one of `names`."""
    try:
        ref = EntityRef.parse(text)
    except ValueError as err:
        raise PolicyLoadError(where, f"{ctx}: {err}") from err
    used = set(PARAMETER.findall(ref.id))
    if used - names:
        unknown = sorted(used - names)
        raise PolicyLoadError(where, f"{ctx}: `{text}` uses unknown parameters {unknown}")
    return EntityTemplate(ref.type, ref.id)
