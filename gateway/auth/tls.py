"""TLS credentials for the gRPC and REST servers (mutual TLS by default) that pick up rotated
certificate files on the next handshake, without a restart; and client credentials for gRPC.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigError
from gateway.fsutil import check_private_mode, file_stamp

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The bytes of one consistent set: CA bundle, certificate chain, and the chain's private key."""

    ca: bytes
    cert: bytes
    key: bytes


class TlsFiles:
    """Watches a CA, certificate and key file; hands out validated material when any of them changed."""

    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        """Remember the three paths; nothing is read until load()."""
        self.ca, self.cert, self.key = Path(ca), Path(cert), Path(key)
        self._lock = threading.Lock()
        self._seen: Stamp | None = None

    def load(self) -> TlsMaterial:
        """Read and validate the files now (ConfigError if unusable) and remember their state."""
        with self._lock:
            stamp = self._stamp()
            material = self._read()
            self._seen = stamp
            return material

    def load_if_changed(self) -> TlsMaterial | None:
        """New validated material if any file changed since the last look, else None.

        An inconsistent set (say, the certificate replaced but not yet its key) is skipped with a
        warning, and picked up once the files change again.
        """
        with self._lock:
            try:
                stamp = self._stamp()
            except ConfigError as exc:
                log.warning("TLS files unreadable, keeping the current ones: %s", exc)
                return None
            if stamp == self._seen:
                return None
            self._seen = stamp
            try:
                return self._read()
            except ConfigError as exc:
                log.warning("TLS files changed but unusable, keeping the current ones: %s", exc)
                return None

    def _stamp(self) -> Stamp:
        """(mtime_ns, size, inode) of each file: changes on rewrite and on rename-into-place."""
        return tuple(file_stamp(path, "TLS file") for path in (self.ca, self.cert, self.key))

    def _read(self) -> TlsMaterial:
        """Read the files and check that they parse, that the key belongs to the leaf certificate and that not
        every user may read the key (as every private key sealgate uses: fsutil.check_private_mode)."""
        try:
            ca, cert, key = self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
            roots = x509.load_pem_x509_certificates(ca)
            chain = x509.load_pem_x509_certificates(cert)
            private = serialization.load_pem_private_key(key, password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid TLS files ({self.ca}, {self.cert}, {self.key}): {exc}") from None
        if not roots or not chain or private.public_key() != chain[0].public_key():
            raise ConfigError(f"{self.key} is not the key of {self.cert}")
        check_private_mode(self.key)
        return TlsMaterial(ca=ca, cert=cert, key=key)


def server_credentials(ca: Path, cert: Path, key: Path, require_client_auth: bool = True) -> grpc.ServerCredentials:
    """gRPC server credentials (mTLS unless told otherwise) that reload the files on the next handshake
    after any of them changes; ConfigError now if they are unusable."""
    files = TlsFiles(ca, cert, key)
    initial = _grpc_config(files.load())

    def fetch() -> Any:
        """Called by gRPC for each new connection: a new configuration, or None to keep the current one."""
        try:
            material = files.load_if_changed()
        except Exception:  # a fetcher must never raise into gRPC's handshake
            log.exception("TLS reload failed; keeping the current certificates")
            return None
        if material is None:
            return None
        log.info("TLS certificates reloaded from %s", files.cert)
        return _grpc_config(material)

    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=require_client_auth)


def channel_credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """gRPC client credentials trusting `ca`, presenting `cert`/`key` when given (both or neither)."""
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs its key, and the reverse")
    if cert is not None and key is not None:  # checked here: gRPC would log C++ errors and say "UNAVAILABLE"
        TlsFiles(ca, cert, key).load()
        leaf = x509.load_pem_x509_certificates(Path(cert).read_bytes())[0]
        with contextlib.suppress(x509.ExtensionNotFound):
            if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise ConfigError(f"{cert} is a CA certificate, not a client certificate")
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(ca).read_bytes(),
            private_key=Path(key).read_bytes() if key is not None else None,
            certificate_chain=Path(cert).read_bytes() if cert is not None else None,
        )
    except OSError as exc:
        raise ConfigError(f"cannot read TLS files: {exc}") from None


def ssl_context_for_rest(ca: Path, cert: Path, key: Path, require_client_auth: bool = True) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the REST server: client certificates required (or, if not
    required, verified when offered), rotated files picked up on the next handshake.

    Reloading works through the SNI callback, which OpenSSL calls on every ClientHello (SNI or not):
    when the files changed it builds a fresh context and swaps it into the connection.
    """
    files = TlsFiles(ca, cert, key)
    files.load()
    lock = threading.Lock()
    current: list[ssl.SSLContext] = []

    def on_hello(conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext) -> None:
        """Swap the connection onto the newest context, rebuilding it first if the files changed."""
        try:
            with lock:
                material = files.load_if_changed()
                if material is not None:
                    current[0] = _rest_context(files, material, require_client_auth, on_hello)
                    log.info("REST TLS certificates reloaded from %s", files.cert)
                newest = current[0]
            if conn.context is not newest:
                conn.context = newest
        except Exception:  # never fail a handshake because a reload failed: keep the old context
            log.exception("REST TLS reload failed; keeping the current certificates")

    current.append(_rest_context(files, None, require_client_auth, on_hello))
    return current[0]


def _rest_context(
    files: TlsFiles, material: TlsMaterial | None, require_client_auth: bool, hook: Any
) -> ssl.SSLContext:
    """Build one server SSLContext from the files (the CA from the validated bytes when given)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_auth else ssl.CERT_OPTIONAL
    try:
        ca = material.ca if material is not None else files.ca.read_bytes()
        ctx.load_verify_locations(cadata=ca.decode("ascii"))
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"cannot build the REST TLS context: {exc}") from None
    ctx.sni_callback = hook
    return ctx


def _grpc_config(material: TlsMaterial) -> Any:
    """A gRPC server certificate configuration from validated material."""
    return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], root_certificates=material.ca)
