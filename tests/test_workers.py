"""`lasthop serve --workers N`: what each worker is given, what it refuses, and the trails of
every worker read together by `audit verify` and `audit disclosures`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from authz import config
from authz.audit.files import worker_trail, worker_trails
from authz.audit.signing import SigningKey, write_jwks
from authz.audit.trail import TrailOptions
from authz.audit.writer import AuditLog
from authz.cli.main import main
from authz.errors import ConfigError
from authz.server import workers
from tests.audit_helpers import decision


def settings(tmp_path: Path, redis: bool = True, **audit: str) -> config.Settings:
    text = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:9700"
[store]
redis_url = "{"redis://127.0.0.1:1/0" if redis else ""}"
[audit]
path = "trail/decisions.jsonl"
""" + "".join(f'{k} = "{v}"\n' for k, v in audit.items())
    path = tmp_path / "lasthop.toml"
    path.write_text(text)
    return config.load(path, environ={})


def test_workers_share_the_listen_ports_and_each_has_its_metrics_port_and_trail(
    tmp_path: Path,
) -> None:
    envs = workers.environments(settings(tmp_path), 3)
    assert len({env["LASTHOP_SERVER_LISTEN"] for env in envs}) == 1
    assert len({env["LASTHOP_SERVER_ADMIN_LISTEN"] for env in envs}) == 1
    assert not envs[0]["LASTHOP_SERVER_LISTEN"].endswith(":0")  # chosen once, for all
    assert [env["LASTHOP_SERVER_METRICS_LISTEN"] for env in envs] == [
        "127.0.0.1:9700",
        "127.0.0.1:9701",
        "127.0.0.1:9702",
    ]
    trail = tmp_path / "trail"
    assert [env["LASTHOP_AUDIT_PATH"] for env in envs] == [
        str(trail / "decisions.jsonl"),
        str(trail / "decisions.w1.jsonl"),
        str(trail / "decisions.w2.jsonl"),
    ]
    assert all("LASTHOP_AUDIT_CHECKPOINTS_PATH" not in env for env in envs)  # beside each trail


def test_a_configured_anchors_file_is_one_per_worker(tmp_path: Path) -> None:
    envs = workers.environments(settings(tmp_path, checkpoints_path="/anchors/lasthop.cp"), 2)
    assert [env["LASTHOP_AUDIT_CHECKPOINTS_PATH"] for env in envs] == [
        "/anchors/lasthop.cp",
        "/anchors/lasthop.w1.cp",
    ]


def test_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config `store.redis_url`: `--workers 2` needs Redis"):
        workers.check(settings(tmp_path, redis=False), 2)
    workers.check(settings(tmp_path, redis=False), 1)  # one process: the embedded store is fine
    with pytest.raises(ConfigError, match="config `--workers`: must be between 1 and 64, got `0`"):
        workers.check(settings(tmp_path), 0)


def test_the_command_says_why_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings(tmp_path, redis=False)
    code = main(["serve", "--config", str(tmp_path / "lasthop.toml"), "--workers", "2"])
    assert code == 2
    assert "`--workers 2` needs Redis" in capsys.readouterr().err
    assert not (tmp_path / "trail").exists()


# --- the trails of every worker, read together ---------------------------------------------


@pytest.fixture(scope="module")
def two_trails(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey]:
    """Worker 0 and worker 1, each with its own trail; their decisions interleave in time."""
    live = tmp_path_factory.mktemp("workers") / "decisions.jsonl"
    key = SigningKey.generate()
    write_jwks(live.with_name("lasthop-receipts.json"), key)

    async def write(worker: int) -> None:
        path = worker_trail(live, worker)
        anchors = path.with_name(f"{path.name}.checkpoints")
        log = AuditLog(path, 100, TrailOptions(key=key, anchors=anchors))
        log.open()
        for n in range(worker, 6, 2):
            record = decision(
                n, decision_id=f"w{worker}-{n}", time=f"2026-03-0{n + 1}T09:00:00.000+00:00"
            )
            assert await log.commit(record)
        await log.close()

    for worker in (0, 1):
        asyncio.run(write(worker))
    return live, key


def test_worker_trails_are_found_beside_the_first(two_trails: tuple[Path, SigningKey]) -> None:
    live, _ = two_trails
    assert worker_trails(live) == [live, live.with_name("decisions.w1.jsonl")]


def test_verify_checks_every_worker_trail_on_its_own(
    two_trails: tuple[Path, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    live, _ = two_trails
    jwks = str(live.with_name("lasthop-receipts.json"))
    assert main(["audit", "verify", str(live), "--jwks", jwks]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ok: ")[0] for line in out] == [str(live), str(worker_trail(live, 1))]
    assert all("5 records" in line and "anchors checked" in line for line in out)


def test_a_broken_worker_trail_is_named_and_fails_the_verification(
    two_trails: tuple[Path, SigningKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live, _ = two_trails
    copy = tmp_path / live.name
    for path in live.parent.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    second = worker_trail(copy, 1)
    second.write_bytes(second.read_bytes().replace(b'"w1-3"', b'"w1-X"'))
    assert (
        main(["audit", "verify", str(copy), "--jwks", str(copy.with_name("lasthop-receipts.json"))])
        == 1
    )
    out = capsys.readouterr().out
    assert f"{copy}: ok:" in out and f"{second}: BROKEN:" in out and "edited" in out


def test_disclosures_come_from_every_worker_in_time_order(
    two_trails: tuple[Path, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    live, _ = two_trails
    argv = ["audit", "disclosures", "--user", "dr-alice", "--trail", str(live), "--output", "json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["decision_id"] for r in rows] == [f"w{n % 2}-{n}" for n in range(6)]
