"""docs/security.md names, for each attack class, the test that pins Lasthop's answer.

This keeps the page honest: every test file and test function it names exists,
so a renamed or deleted test cannot leave the page pointing at nothing.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "security.md"


def named_tests() -> list[tuple[str, str]]:
    """(file as written, test name) for every `file.py::test_x` and following `::test_y`."""
    found: list[tuple[str, str]] = []
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        current = ""
        for file, name in re.findall(r"`([\w/.]*\.py)?::(test_\w+)`", line):
            current = file or current
            assert current, f"`::{name}` with no file before it: {line}"
            found.append((current, name))
    return found


def resolve(file: str) -> Path:
    direct = ROOT / file
    if direct.is_file():
        return direct
    matches = sorted((ROOT / "tests").rglob(Path(file).name))
    assert len(matches) == 1, f"`{file}` matches {matches}"
    return matches[0]


@functools.cache
def functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_test_the_security_page_names_exists() -> None:
    named = named_tests()
    assert len(named) > 40
    missing = [f"{file}::{name}" for file, name in named if name not in functions(resolve(file))]
    assert missing == []


def test_every_file_the_security_page_names_exists() -> None:
    text = PAGE.read_text(encoding="utf-8")
    for path in re.findall(
        r"`((?:tests|authz|envoy|policies)/[\w/.-]+\.(?:py|yaml|json|toml))`", text
    ):
        assert (ROOT / path).is_file(), path
