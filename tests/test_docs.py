"""The docs cannot drift from the code: generated pages, the architecture page, README, the site.

- every page `scripts/gen_docs.py` generates (reason codes, configuration,
  metrics, the command line, the module map) is committed as it generates it
  now;
- the architecture page names every request path phase and every subpackage;
- README stays short;
- `mkdocs build --strict` succeeds (a broken link, a missing anchor or a page
  left out of the nav fails it), and would fail on a broken link.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from authz.check.pipeline import PHASES
from scripts import gen_docs

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return gen_docs.generate()


@pytest.mark.parametrize("page", sorted(gen_docs.PAGES))
def test_a_generated_page_is_what_the_generator_makes_now(
    page: str, generated: dict[str, str]
) -> None:
    committed = ROOT / page
    assert committed.is_file(), f"{page} is missing; run python scripts/gen_docs.py"
    assert committed.read_text(encoding="utf-8") == generated[page], (
        f"{page} differs from what scripts/gen_docs.py generates; "
        "run python scripts/gen_docs.py and commit the page"
    )


def test_check_names_the_page_that_differs(tmp_path: Path, generated: dict[str, str]) -> None:
    for name, text in generated.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert gen_docs.stale(tmp_path, generated) == []
    edited = tmp_path / "docs/reference/reasons.md"
    edited.write_text(edited.read_text(encoding="utf-8").replace("`no_grant`", "`no_grants`"))
    (tmp_path / "docs/reference/cli.md").unlink()
    assert gen_docs.stale(tmp_path, generated) == [
        "docs/reference/reasons.md",
        "docs/reference/cli.md",
    ]


def test_check_exits_0_on_the_committed_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen_docs.main(["--check"]) == 0, capsys.readouterr().err


def test_every_config_key_and_its_environment_variable_is_documented(
    generated: dict[str, str],
) -> None:
    page = generated["docs/reference/configuration.md"]
    for _, dotted, _, text in gen_docs.config_rows():
        section, key = dotted.split(".")
        assert text, dotted
        assert f"`LASTHOP_{section.upper()}_{key.upper()}`" in page, dotted


def test_the_architecture_page_names_every_phase_and_subpackage() -> None:
    page = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    for phase in PHASES:
        assert f"| `{phase}` |" in page, f"phase `{phase}` is missing from the request path table"
    for init in sorted((ROOT / "authz").glob("*/__init__.py")):
        name = init.parent.name
        assert f"`authz/{name}/`" in page, f"`authz/{name}/` is missing from the layout table"
    for module in sorted((ROOT / "authz").glob("*.py")):
        if module.name not in ("__init__.py", "__main__.py"):
            assert f"`authz/{module.name}`" in page, f"`authz/{module.name}` is not in the layout"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    # Not --quiet: mkdocs 1.6 then drops the warnings that --strict counts, and passes.
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )


@pytest.mark.skipif(not HAS_MKDOCS, reason="mkdocs is not installed (the `test` extra has it)")
def test_the_site_builds_strict(tmp_path: Path) -> None:
    built = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "reference" / "reasons" / "index.html").is_file()


@pytest.mark.skipif(not HAS_MKDOCS, reason="mkdocs is not installed (the `test` extra has it)")
def test_the_strict_build_fails_on_a_broken_link_and_a_page_left_out(tmp_path: Path) -> None:
    """The build above can fail: a copy of the site with a dead anchor and an orphan page."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text(encoding="utf-8") + "\n[gone](fleet.md#no-such-anchor)\n")
    (copy / "docs" / "orphan.md").write_text("# Not in the nav\n")
    built = mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "no-such-anchor" in built.stderr
    assert "orphan.md" in built.stderr
