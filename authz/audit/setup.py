"""Settings -> the audit trail, the signing key, the receipt signer and the published JWKS.

Start-up only. Refuses to start (ConfigError naming the key) without a usable
Ed25519 `audit.signing_key`, or when the JWKS cannot be written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.audit.receipts import ReceiptSigner
from authz.audit.signing import SigningKey, load_key, write_jwks
from authz.audit.trail import TrailOptions
from authz.audit.writer import AuditLog, WriterObserver
from authz.config import Settings
from authz.errors import ConfigError

JWKS_FILENAME = "lasthop-receipts.json"
WELL_KNOWN_JWKS = "/.well-known/lasthop-receipts.json"


@dataclass
class AuditParts:
    log: AuditLog
    key: SigningKey
    receipts: ReceiptSigner | None
    jwks: dict[str, Any]  # what /.well-known/lasthop-receipts.json serves
    jwks_path: Path


def trail_path(settings: Settings) -> Path:
    return settings.path(settings.audit.path)


def jwks_path(settings: Settings) -> Path:
    if settings.audit.jwks_path:
        return settings.path(settings.audit.jwks_path)
    return trail_path(settings).with_name(JWKS_FILENAME)


def checkpoints_path(settings: Settings) -> Path:
    if settings.audit.checkpoints_path:
        return settings.path(settings.audit.checkpoints_path)
    trail = trail_path(settings)
    return trail.with_name(f"{trail.name}.checkpoints")


def signing_key(settings: Settings) -> SigningKey:
    if not settings.audit.signing_key:
        raise ConfigError(
            "audit.signing_key",
            "must name an Ed25519 private key (PEM) that "
            "signs checkpoints and receipts; create one with "
            "`lasthop audit keygen FILE`",
        )
    return load_key(settings.path(settings.audit.signing_key))


def build(
    settings: Settings,
    clock: Callable[[], float] = time.time,
    observer: WriterObserver | None = None,
) -> AuditParts:
    audit = settings.audit
    key = signing_key(settings)
    published = jwks_path(settings)
    try:
        jwks = write_jwks(published, key)
    except OSError as err:
        raise ConfigError(
            "audit.jwks_path", f"cannot write `{published}`: {err.strerror or err}"
        ) from err
    options = TrailOptions(
        fsync_interval=audit.fsync_interval_seconds,
        rotate_bytes=audit.rotate_bytes,
        checkpoint_records=audit.checkpoint_records,
        checkpoint_seconds=float(audit.checkpoint_seconds),
        key=key,
        anchors=checkpoints_path(settings),
    )
    log = AuditLog(trail_path(settings), audit.queue_size, options, clock, observer)
    receipts = ReceiptSigner(key, audit.receipt_ttl_seconds, clock) if audit.receipts else None
    return AuditParts(log=log, key=key, receipts=receipts, jwks=jwks, jwks_path=published)
