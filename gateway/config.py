"""The gateway's configuration: TOML, validated, unknown keys refused, defaults that match `sealgate init`.

With no file, `sealgate serve` serves ./models with the keys `sealgate init` wrote into ./certs, gRPC on
127.0.0.1:8500 and REST on 127.0.0.1:8501 (TF Serving's ports). Relative paths in a file are resolved
against the file's folder. A loaded `Config` is frozen: `Config.replaced` gives a changed, re-validated copy.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

# The one definition of the dev issuer, audience and accepted JWT algorithms: gateway/auth/defaults.py,
# the token verifier and `sealgate init` import these (this module stays light: no gRPC, no auth stack).
DEV_ISSUER = "https://sealgate.local/dev-issuer"
DEV_AUDIENCE = "sealgate"
DEFAULT_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")


@dataclass(frozen=True)
class ServerConfig:
    """Addresses and limits of the listeners."""

    grpc_address: str = "127.0.0.1:8500"
    rest_address: str = "127.0.0.1:8501"
    max_message_bytes: int = 4 << 20
    max_push_bytes: int = 2 << 30
    stream_deadline_s: float = 600.0
    drain_seconds: float = 10.0
    rest: bool = True
    max_concurrent_requests: int = 1024  # per protocol; beyond it RESOURCE_EXHAUSTED / HTTP 429; 0: no limit
    max_concurrent_per_peer: int = 64  # per client certificate, counted after authentication; 0: no limit
    metrics_address: str = "127.0.0.1:8502"  # plain-HTTP GET /metrics on its own listener; '': off
    rest_max_connections: int = 512  # open REST connections; beyond: closed at once, before TLS
    rest_max_connections_per_peer: int = 64  # per client certificate; beyond: 429 and close
    rest_request_timeout_s: float = 30.0  # one deadline for a request's head and body (408), and for idling
    rest_handshake_timeout_s: float = 10.0  # TLS handshake
    rest_max_header_bytes: int = 16384  # request head (431 beyond)
    rest_max_target_bytes: int = 2048  # request target (414 beyond)
    max_json_depth: int = 64  # nesting of a REST request body (400 beyond)


@dataclass(frozen=True)
class RepositoryConfig:
    """Where sealed models live and which versions serve (TF Serving's latest-N or specific)."""

    path: Path = Path("models")
    poll_interval_s: float = 0.5
    version_policy: str = "latest"
    latest: int = 1
    versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class TlsConfig:
    """mTLS material; certificates are re-read when they change on disk."""

    ca: Path = Path("certs/ca.pem")  # the only trust anchors: client certificates must be issued directly by one
    cert: Path = Path("certs/server.pem")
    key: Path = Path("certs/server.key")
    require_client_auth: bool = True
    crl: str = ""  # the client CA's CRL (PEM or DER), enforced on every authorized call; empty: none


@dataclass(frozen=True)
class AuthConfig:
    """JWT verification: issuer, audience, key set, allowed algorithms."""

    jwks: Path = Path("certs/jwks.json")
    jwks_url: str = ""  # https://... : keys fetched from here (the file above is then unused)
    jwks_ca: str = ""  # CA bundle (PEM) for jwks_url; empty: the system trust store
    jwks_refresh_s: float = 300.0  # how often jwks_url is fetched again (sooner on an unknown kid)
    issuer: str = DEV_ISSUER
    audience: str = DEV_AUDIENCE
    leeway_s: int = 30
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    max_token_lifetime_s: int = 86_400  # a token with exp - iat (or exp - now) above this is refused; 0: unlimited


@dataclass(frozen=True)
class KeysConfig:
    """The gateway's recipient identities and the signers it trusts."""

    identities: tuple[Path, ...] = (Path("certs/gateway.key"),)
    trusted_signers: tuple[Path, ...] = (Path("certs/signing.pub"),)


@dataclass(frozen=True)
class AuditConfig:
    """Where the JSON-lines audit log goes ('-' for standard error)."""

    path: str = "audit.log"


@dataclass(frozen=True)
class BackendSection:
    """Inference runtime choices."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    repository: RepositoryConfig = field(default_factory=RepositoryConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    backend: BackendSection = field(default_factory=BackendSection)

    def resolve(self, base: Path) -> Config:
        """A copy with every relative path made absolute against `base`; this config is left as it is."""

        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (base / p)

        def fix_str(p: str, keep: tuple[str, ...] = ("",)) -> str:
            return p if p in keep else str(fix(Path(p)))

        tls, auth, keys = self.tls, self.auth, self.keys
        return dataclasses.replace(
            self,
            repository=dataclasses.replace(self.repository, path=fix(self.repository.path)),
            tls=dataclasses.replace(tls, ca=fix(tls.ca), cert=fix(tls.cert), key=fix(tls.key), crl=fix_str(tls.crl)),
            auth=dataclasses.replace(auth, jwks=fix(auth.jwks), jwks_ca=fix_str(auth.jwks_ca)),
            keys=dataclasses.replace(
                keys,
                identities=tuple(fix(p) for p in keys.identities),
                trusted_signers=tuple(fix(p) for p in keys.trusted_signers),
            ),
            audit=dataclasses.replace(self.audit, path=fix_str(self.audit.path, ("-", ""))),
        )

    def replaced(self, **sections: Mapping[str, Any]) -> Config:
        """A validated copy with fields of the named sections changed, e.g. `replaced(server={"rest": False})`."""
        changed: dict[str, Any] = {}
        for name, values in sections.items():
            if name not in {f.name for f in dataclasses.fields(self)}:
                raise ConfigError(f"unknown section [{name}]")
            section = getattr(self, name)
            known = {f.name for f in dataclasses.fields(section)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ConfigError(f"unknown key {unknown[0]!r} in [{name}] (known: {', '.join(sorted(known))})")
            frozen = {key: tuple(v) if isinstance(v, list) else v for key, v in values.items()}  # lists: tuples
            changed[name] = dataclasses.replace(section, **frozen)
        return dataclasses.replace(self, **changed).validate()

    def validate(self) -> Config:
        """Refuse values that cannot work, with a message naming the key; changes nothing, returns self."""
        if self.repository.version_policy not in ("latest", "specific"):
            raise ConfigError("[repository] version_policy must be 'latest' or 'specific'")
        if self.repository.version_policy == "latest" and self.repository.latest < 1:
            raise ConfigError("[repository] latest must be >= 1")
        if self.repository.version_policy == "specific" and not self.repository.versions:
            raise ConfigError("[repository] versions must list at least one version for policy 'specific'")
        if self.server.max_concurrent_requests < 0:
            raise ConfigError("[server] max_concurrent_requests must be >= 0 (0: no limit)")
        if self.server.max_message_bytes < 1024:
            raise ConfigError("[server] max_message_bytes must be >= 1024")
        for alg in self.auth.algorithms:
            if alg.upper() == "NONE" or alg.upper().startswith("HS"):
                raise ConfigError(f"[auth] algorithm {alg} is not allowed (no 'none', no shared-secret HMAC)")
        if self.auth.jwks_url and not self.auth.jwks_url.startswith("https://"):
            raise ConfigError("[auth] jwks_url must be an https:// URL")
        if self.auth.jwks_refresh_s < 1:
            raise ConfigError("[auth] jwks_refresh_s must be >= 1")
        for addr in (self.server.grpc_address, self.server.rest_address, self.server.metrics_address or ":"):
            if ":" not in addr:
                raise ConfigError(f"[server] address {addr!r} must be host:port")
        if self.server.max_concurrent_per_peer < 0:
            raise ConfigError("[server] max_concurrent_per_peer must be >= 0 (0: no limit)")
        return self


def _build(cls: type, section: str, data: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in [{section}] (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        kwargs[name] = _coerce(value, default, f"[{section}] {name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if isinstance(default, Path):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string")
        return Path(value)
    if isinstance(default, int | float) and not isinstance(default, bool):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number")
        return type(default)(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        sample = default[0] if default else None
        if isinstance(sample, Path):
            return tuple(_coerce(v, Path(), where) for v in value)
        return tuple(value)
    return value


def load_config(path: Path | None = None, base: Path | None = None) -> Config:
    """Load and validate a TOML config; with no path, the defaults relative to `base` (default: cwd)."""
    if path is None:
        return Config().resolve(Path(base or Path.cwd()).absolute()).validate()
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    classes = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(classes))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] in {path} (known: {', '.join(sorted(classes))})")
    parts = {}
    for name, cls in classes.items():
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"[{name}] must be a table")
        parts[name] = _build(cls, name, section)
    return Config(**parts).resolve(Path(path).absolute().parent).validate()
