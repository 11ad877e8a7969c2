"""The built wheel is all a user needs: installed in a fresh venv outside the clone, the demo runs.

This is the packaging check of the test command: the wheel must carry the
example policies and the Envoy configuration (through authz/dev/examples),
and nothing may import from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600
DEMO_TIMEOUT = 180

pytestmark = pytest.mark.integration


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_built_wheel_runs_the_demo_in_a_fresh_venv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        tmp_path,
        INSTALL_TIMEOUT,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("lasthop-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = _run(
        [str(python), "-m", "pip", "install", "--quiet", f"{wheel}[demo]"],
        tmp_path,
        INSTALL_TIMEOUT,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    where = _run([str(python), "-c", "import authz; print(authz.__file__)"], tmp_path, 60)
    assert where.stdout.startswith(str(env_dir)), where.stdout  # the wheel, not the checkout

    demo = _run([str(env_dir / "bin" / "lasthop"), "demo"], tmp_path, DEMO_TIMEOUT)
    assert demo.returncode == 0, (demo.stdout[-3000:], demo.stderr[-3000:])
    assert "403 no_grant" in demo.stdout and "200 allowed" in demo.stdout, demo.stdout[-3000:]
    assert "ok: every hash, the sequence and every signature verify" in demo.stdout
