"""Where the token verifier's keys come from: a JWKS file, or a JWKS URL over HTTPS.

Both are polled the same way: `poll(last_stamp)` returns (stamp, bytes) when the key set changed and
(stamp, None) when it did not. A file is stamped by (mtime, size, inode); a URL by the SHA-256 of what it
served. `parse_jwks` turns the bytes into verification keys by `kid`, keeping only public signature keys
for allowed algorithms.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK

from gateway.errors import ConfigError
from gateway.fsutil import file_stamp

log = logging.getLogger(__name__)
MAX_JWKS_BYTES = 1 << 20
FETCH_TIMEOUT_S = 5.0


class JwksSource(Protocol):
    """A place to read a JWK Set from."""

    name: str
    remote: bool

    def poll(self, last: Hashable | None) -> tuple[Hashable, bytes | None]:
        """(stamp, bytes) if the key set differs from `last`, else (stamp, None); ConfigError if unreadable."""
        ...


class FileJwks:
    """A JWKS file; re-read only when its (mtime, size, inode) changes."""

    remote = False

    def __init__(self, path: Path) -> None:
        """Remember the path; nothing is read until poll()."""
        self.path = Path(path)
        self.name = str(path)

    def poll(self, last: Hashable | None) -> tuple[Hashable, bytes | None]:
        """The file's bytes if it changed since `last`."""
        stamp = file_stamp(self.path, "JWKS")
        if stamp == last:
            return stamp, None
        try:
            return stamp, self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read JWKS {self.path}: {exc.strerror}") from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A JWKS URL is configured exactly; a redirect (perhaps to plain HTTP) is refused."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class UrlJwks:
    """A JWKS served over HTTPS, verified against `ca` (a PEM bundle) or the system trust store."""

    remote = True

    def __init__(self, url: str, ca: Path | None = None, timeout: float = FETCH_TIMEOUT_S) -> None:
        """Check the URL (https only) and build the TLS context; nothing is fetched until poll()."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"JWKS URL must be https://host/...; got {url!r}")
        self.url = url
        self.name = url
        self.timeout = timeout
        try:
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the JWKS CA bundle {ca}: {exc}") from None
        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=context), _NoRedirects()]
        if _is_loopback(parts.hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # never send a loopback request through a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def poll(self, last: Hashable | None) -> tuple[Hashable, bytes | None]:
        """Fetch the key set; its bytes if they differ from the last fetch."""
        accept = {"Accept": "application/jwk-set+json, application/json"}
        request = urllib.request.Request(self.url, headers=accept)  # noqa: S310 (https only, checked in __init__)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                data = response.read(MAX_JWKS_BYTES + 1)
        except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot fetch JWKS {self.url}: {_why(exc)}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise ConfigError(f"JWKS {self.url} is larger than {MAX_JWKS_BYTES} bytes")
        stamp = hashlib.sha256(data).hexdigest()
        return stamp, (None if stamp == last else data)


def parse_jwks(data: bytes, source: str, algorithms: Sequence[str]) -> dict[str, PyJWK]:
    """Verification keys by kid: public signature keys for allowed algorithms; ConfigError if none."""
    try:
        doc = json.loads(data)
        entries = doc["keys"]
        if not isinstance(entries, list):
            raise TypeError("'keys' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read JWKS {source}: {exc}") from None
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") == "oct":
            continue
        if "d" in entry:
            log.warning("JWKS %s holds private key material (kid %s): skipped; remove it", source, entry.get("kid"))
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(entry)
        except jwt.PyJWTError as exc:
            log.warning("JWKS %s: skipping key %s: %s", source, kid, exc)
            continue
        if key.algorithm_name not in algorithms:
            continue
        if kid in keys:
            raise ConfigError(f"JWKS {source} has two keys with kid {kid!r}")
        keys[kid] = key
    if not keys:
        raise ConfigError(f"JWKS {source} holds no usable signature key for {list(algorithms)}")
    return keys


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _why(exc: BaseException) -> str:
    """A short reason for a failed fetch (the URLError wrapper hides the interesting part)."""
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc)
