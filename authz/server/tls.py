"""TLS and mTLS for the gRPC listeners, from PEM files reloaded when they change.

For `server.listen` the keys are `server.tls_cert`, `server.tls_key` and
`server.tls_client_ca`; for `server.admin_listen`, the same with `admin_`.

- cert + key: the listener speaks TLS with them (a chain, leaf first).
- client CA: every client must present a certificate it signed (mTLS);
  without one the handshake fails and no RPC runs.
- Files are read and checked at start-up: a missing file, a certificate
  that does not parse or a key that is not the certificate's stops start-up,
  naming the key.
- gRPC asks before each new connection's handshake whether the files changed
  (a stat of each); changed files are loaded and checked again, and used
  from that handshake on. Files that do not load (half-written, a mismatched
  key) are refused, logged once, and the current ones stay in use.
  Connections already open keep their session.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authz.config import Settings
from authz.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    prefix: str  # "server.tls" or "server.admin_tls": what errors name
    cert: Path
    key: Path
    client_ca: Path | None

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key, *((self.client_ca,) if self.client_ca else ()))


def files_for(settings: Settings, admin: bool) -> TlsFiles | None:
    """The TLS files of the ext_authz (or admin) listener; None when it is plaintext."""
    s = settings.server
    cert, key, ca = (
        (s.admin_tls_cert, s.admin_tls_key, s.admin_tls_client_ca)
        if admin
        else (s.tls_cert, s.tls_key, s.tls_client_ca)
    )
    if not cert:
        return None
    prefix = "server.admin_tls" if admin else "server.tls"
    return TlsFiles(
        prefix, settings.path(cert), settings.path(key), settings.path(ca) if ca else None
    )


def credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that reload `files` when they change; raises ConfigError."""
    reloader = _Reloader(files)
    return grpc.dynamic_ssl_server_credentials(
        reloader.current,
        reloader,
        require_client_authentication=files.client_ca is not None,
    )


@dataclass(frozen=True, slots=True)
class _Pem:
    cert: bytes
    key: bytes
    client_ca: bytes | None


def load(files: TlsFiles) -> _Pem:
    """Read and check the files; raises ConfigError naming the key of the first bad one."""
    cert = _read(files.cert, f"{files.prefix}_cert")
    key = _read(files.key, f"{files.prefix}_key")
    ca = _read(files.client_ca, f"{files.prefix}_client_ca") if files.client_ca else None
    try:
        chain = x509.load_pem_x509_certificates(cert)
    except ValueError as err:
        raise ConfigError(
            f"{files.prefix}_cert", f"`{files.cert}` is not PEM certificates: {err}"
        ) from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"{files.prefix}_key", f"`{files.key}` is not a PEM private key: {err}"
        ) from None
    if _public(private.public_key()) != _public(chain[0].public_key()):
        raise ConfigError(f"{files.prefix}_key", f"`{files.key}` is not the key of `{files.cert}`")
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as err:
            raise ConfigError(
                f"{files.prefix}_client_ca", f"`{files.client_ca}` is not PEM certificates: {err}"
            ) from None
    return _Pem(cert, key, ca)


def _public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(key, f"cannot read `{path}`: {err.strerror}") from None


class _Reloader:
    """gRPC's certificate fetcher: called from gRPC's threads before each handshake."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._failed: tuple[object, ...] | None = None
        self.current = self._configuration(load(files))

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and load, else None (keep the current)."""
        with self._lock:
            stamp = self._stat()
            if stamp == self._stamp or stamp == self._failed:
                return None
            try:
                pem = load(self._files)
            except ConfigError as err:
                log.error(
                    "%s: keeping the current certificate: %s",
                    self._files.prefix,
                    err,
                    extra={"event": "tls.reload_refused"},
                )
                self._failed = stamp
                return None
            self._stamp, self._failed = stamp, None
            log.info(
                "%s: certificate files changed; new connections use them",
                self._files.prefix,
                extra={"event": "tls.reloaded"},
            )
            self.current = self._configuration(pem)
            return self.current

    def _stat(self) -> tuple[object, ...]:
        stamp: list[object] = []
        for path in self._files.paths():
            try:
                st = path.stat()
                stamp.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    @staticmethod
    def _configuration(pem: _Pem) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pem.key, pem.cert)], root_certificates=pem.client_ca
        )
