"""The gateway's configuration: TOML, validated, unknown keys refused, defaults that match `sealgate init`.

With no file, `sealgate serve` serves ./models with the keys `sealgate init` wrote into ./certs, gRPC on
127.0.0.1:8500 and REST on 127.0.0.1:8501 (TF Serving's ports). Relative paths in a file are resolved
against the file's folder. A loaded `Config` is frozen: `Config.replaced` gives a changed, re-validated copy.
"""

from __future__ import annotations

import copyreg
import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.errors import ConfigError


def frozen_map(items: Mapping[str, Any]) -> MappingProxyType[str, Any]:
    """A read-only mapping; by name, so pickle can rebuild one (the class itself has no importable name)."""
    return MappingProxyType(dict(items))


# a Config crosses to each front-end worker pickled ([server] workers): its read-only tables go as dicts
copyreg.pickle(MappingProxyType, lambda m: (frozen_map, (dict(m),)))

# The one definition of the dev issuer, audience and accepted JWT algorithms: gateway/auth/defaults.py,
# the token verifier and `sealgate init` import these (this module stays light: no gRPC, no auth stack).
DEV_ISSUER = "https://sealgate.local/dev-issuer"
DEV_AUDIENCE = "sealgate"
DEFAULT_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # gateway/serving/repository.py NAME_PATTERN


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
    workers: int = 1  # front-end processes sharing the ports (SO_REUSEPORT), run by a supervisor when > 1
    event_loop: str = "auto"  # "auto": uvloop when installed, else asyncio's; "uvloop" (required); "asyncio"
    message_timeout_s: float = 10.0  # a unary gRPC call's request message must follow its headers within this


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
    mode: str = "direct"  # "proxy": behind a mesh, the client identity comes from x-forwarded-client-cert
    proxy_identities: tuple[str, ...] = ()  # proxy mode: the proxies' certificates, uri:/dns:/cn:/spiffe://


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
    isolation: str = "process"  # each model version in a sandboxed worker (no keys, no files); "none": in-process
    worker_deadline_s: float = 30.0  # isolation: a call running longer kills its worker (UNAVAILABLE, restarted)
    worker_restart_backoff_s: float = 0.1  # isolation: wait before the 2nd restart within the window, doubling
    worker_max_crashes: int = 5  # isolation: this many crashes within worker_crash_window_s mark the model failed
    worker_crash_window_s: float = 60.0  # isolation: the window, seconds, in which worker_max_crashes are counted
    worker_slots: int = 2  # isolation: calls one worker runs at once
    worker_spin_us: float = 1000.0  # isolation: an unloaded worker polls this long for the next call (0: sleep at once)


@dataclass(frozen=True)
class BatchingSection:
    """Dynamic batching (Triton's semantics), off by default; see gateway/serving/batching.py."""

    enabled: bool = False
    models: tuple[str, ...] = ()  # models to batch; empty: every model with a dynamic leading dimension
    max_batch_size: int = 32  # rows per batch; a request with more rows runs alone
    max_queue_delay_us: int = 500  # the longest the oldest request waits for a fuller batch
    preferred_batch_sizes: tuple[int, ...] = ()  # dispatch at once when a batch of one of these sizes forms
    max_queue_size: int = 1024  # waiting requests per model; beyond: RESOURCE_EXHAUSTED
    idle_wait: bool = False  # true: a lone request waits max_queue_delay_us even with no other coming (Triton)
    # per-model overrides of the keys above, as [batching.per_model.NAME] tables (a table opts its model in)
    per_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check each [batching.per_model.NAME] table and freeze it: name -> overrides."""
        object.__setattr__(self, "per_model", _model_tables(self, "per_model", "batching.per_model"))

    def for_model(self, name: str) -> BatchingSection:
        """The settings of one model: these with its [batching.per_model.NAME] overrides applied."""
        overrides = self.per_model.get(name)
        return dataclasses.replace(self, per_model={}, **overrides) if overrides else self


@dataclass(frozen=True)
class ExplainConfig:
    """Explanations (gateway/explain: sealgate.v1.Explain, REST `:explain`): methods and what a caller may ask."""

    method: str = "kernel_shap"  # the default method: "kernel_shap" or "occlusion"
    default_nsamples: int = 256  # KernelSHAP coalition samples when a request names none
    max_nsamples: int = 1024  # the most a request may ask for (INVALID_ARGUMENT beyond); bounds model runs
    max_per_minute: int = 30  # explained instances per token subject per minute (RESOURCE_EXHAUSTED / 429 beyond)
    max_instances: int = 8  # instances in one request (INVALID_ARGUMENT beyond)
    max_concurrent: int = 2  # explanations computed at once, in worker threads (RESOURCE_EXHAUSTED beyond)


@dataclass(frozen=True)
class MonitorConfig:
    """Drift monitoring (gateway/monitor): sampled histograms of live inputs against the release's reference."""

    enabled: bool = True  # models whose provenance carries no drift_reference are never monitored
    sample_rate: float = 0.1  # share of requests whose inputs are binned (0.1: 1 in 10), within (0, 1]
    psi_threshold: float = 0.2  # a max PSI above this is drift (`sealgate monitor`'s verdict)
    min_samples: int = 200  # sampled rows before PSI is exported for a model version
    window_rows: int = 100_000  # PSI covers the last one to two windows of this many sampled rows


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry tracing (gateway/server/tracing.py): a caller's W3C traceparent continues; off by default."""

    enabled: bool = False  # off: no span is made and the hot path tests one attribute
    exporter: str = "otlp"  # "otlp" (OTLP/gRPC to otlp_endpoint), "console" (standard output) or "none"
    otlp_endpoint: str = "http://127.0.0.1:4317"  # the collector; http:// is plaintext, https:// uses TLS
    sample_ratio: float = 1.0  # share of new traces recorded; a caller's sampled flag is followed
    service_name: str = "sealgate"  # the service.name resource attribute


@dataclass(frozen=True)
class LogConfig:
    """The server log on standard error (gateway/server/logs.py)."""

    format: str = "text"  # "text" or "json" (one object per line, the audit log's field names)
    level: str = "info"  # "debug", "info", "warning" or "error"


def _model_tables(section: Any, field_name: str, where: str) -> MappingProxyType[str, Any]:
    """A section's per-model tables ([WHERE.NAME], each overriding the section's other keys), checked (model
    names, known keys, right types) and frozen: name -> overrides."""
    tables: dict[str, Mapping[str, Any]] = {}
    given = getattr(section, field_name)
    if not isinstance(given, Mapping):
        raise ConfigError(f"[{where.rsplit('.', 1)[0]}] {field_name} must be a table of [{where}.NAME] tables")
    known = {f.name for f in dataclasses.fields(section)} - {"models", field_name}
    for name, table in given.items():
        if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
            raise ConfigError(f"[{where}] {name!r} is not a model name (1-64 of A-Z a-z 0-9 . _ -)")
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{where}.{name}] must be a table")
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in [{where}.{name}] (known: {', '.join(sorted(known))})")
        tables[name] = frozen_map(
            {k: _coerce(v, getattr(type(section), k), f"[{where}.{name}] {k}") for k, v in table.items()}
        )
    return frozen_map(tables)


@dataclass(frozen=True)
class RolloutSection:
    """Canary/shadow rollouts and runtime failover (gateway/serving/canary.py): when to promote or roll back."""

    promote_after: int = 200  # healthy candidate requests before a canary is promoted
    min_samples: int = 20  # candidate requests before any regression may roll it back
    max_error_rate_delta: float = 0.05  # roll back when candidate error rate > stable's + this
    max_latency_ratio: float = 3.0  # roll back when candidate p99 > this x stable p99
    min_latency_delta_ms: float = 2.0  # ...and p50, p99 each at least this many ms above stable's (not µs noise)
    max_disagreement: float = 0.05  # roll back when more than this share of compared answers disagree
    tolerance: float = 1e-4  # absolute and relative tolerance of an answer comparison
    compare: str = "values"  # "values" (within tolerance) or "argmax" (same top class per row: classifiers)
    window: int = 500  # outcomes kept per side (bounded reservoir for rates and percentiles)
    runtime_failover: bool = True  # a default version failing at run time hands over to the previous good one
    failover_window: int = 50  # recent requests of the default version failover looks at
    failover_max_errors: int = 10  # backend errors among them that trigger failover
    warm_standby: bool = True  # keep the previous good version loaded (one per model): failover is a route swap
    mode: str = ""  # rollout of a plain push (no --canary/--shadow): "", "canary" or "shadow"
    percent: int = 10  # with `mode`: the share of traffic (1-100) the pushed version takes or mirrors
    sticky: bool = False  # with mode "canary": split by caller subject rather than by request
    # per-model overrides of the keys above, as [rollout.models.NAME] tables (written instead of this line)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check each [rollout.models.NAME] table (known keys, right types) and freeze it: name -> overrides."""
        object.__setattr__(self, "models", _model_tables(self, "models", "rollout.models"))

    def for_model(self, name: str) -> RolloutSection:
        """The settings of one model: these defaults with its [rollout.models.NAME] overrides applied."""
        overrides = self.models.get(name)
        return dataclasses.replace(self, models={}, **overrides) if overrides else self


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
    batching: BatchingSection = field(default_factory=BatchingSection)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    log: LogConfig = field(default_factory=LogConfig)
    rollout: RolloutSection = field(default_factory=RolloutSection)

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
        _validate_rollout(self.rollout, "rollout")
        for name in self.rollout.models:
            _validate_rollout(self.rollout.for_model(name), f"rollout.models.{name}")
        if self.server.max_concurrent_requests < 0:
            raise ConfigError("[server] max_concurrent_requests must be >= 0 (0: no limit)")
        if self.server.max_message_bytes < 1024:
            raise ConfigError("[server] max_message_bytes must be >= 1024")
        if self.server.max_message_bytes > 2**31 - 1:  # gRPC's message limits are C ints
            raise ConfigError("[server] max_message_bytes must be < 2**31")
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
            port = addr.rpartition(":")[2]
            if addr != ":" and not (port.isascii() and port.isdigit() and int(port) <= 65535):
                raise ConfigError(f"[server] address {addr!r}: the port must be 0 to 65535")  # gRPC wraps 99999
        if self.server.max_concurrent_per_peer < 0:
            raise ConfigError("[server] max_concurrent_per_peer must be >= 0 (0: no limit)")
        if not 1 <= self.server.workers <= 64:
            raise ConfigError("[server] workers must be between 1 and 64")
        if not self.server.message_timeout_s > 0:
            raise ConfigError("[server] message_timeout_s must be > 0")
        if self.server.event_loop not in ("auto", "uvloop", "asyncio"):
            raise ConfigError("[server] event_loop must be 'auto', 'uvloop' or 'asyncio'")
        be = self.backend
        if be.isolation not in ("none", "process"):
            raise ConfigError("[backend] isolation must be 'none' or 'process'")
        if not (be.worker_deadline_s > 0 and be.worker_crash_window_s > 0 and be.worker_restart_backoff_s >= 0):
            raise ConfigError("[backend] worker_deadline_s and worker_crash_window_s must be > 0, the backoff >= 0")
        if be.worker_max_crashes < 1 or not 1 <= be.worker_slots <= 64:
            raise ConfigError("[backend] worker_max_crashes must be >= 1, worker_slots between 1 and 64")
        if not 0 <= be.worker_spin_us <= 10_000:
            raise ConfigError("[backend] worker_spin_us must be between 0 and 10000")
        for b in (self.batching, *map(self.batching.for_model, self.batching.per_model)):
            _validate_batching(b)
        _validate_proxy(self.tls)
        m = self.monitor
        if not 0 < m.sample_rate <= 1 or not m.psi_threshold > 0 or m.min_samples < 1 or m.window_rows < 1:
            raise ConfigError(
                "[monitor] needs 0 < sample_rate <= 1, psi_threshold > 0, min_samples >= 1, window_rows >= 1"
            )
        _validate_explain(self.explain)
        _validate_observability(self.tracing, self.log)
        return self


def _validate_rollout(ro: RolloutSection, where: str) -> None:
    """[rollout] or one [rollout.models.NAME]: positive counts, sane ratios, a known compare and mode."""
    if min(ro.promote_after, ro.min_samples, ro.window, ro.failover_window, ro.failover_max_errors) < 1:
        raise ConfigError(f"[{where}] promote_after, min_samples, window and failover_* must be >= 1")
    if ro.max_error_rate_delta < 0 or ro.max_latency_ratio < 1 or not 0 <= ro.max_disagreement <= 1:
        raise ConfigError(
            f"[{where}] needs max_error_rate_delta >= 0, max_latency_ratio >= 1, max_disagreement in [0, 1]"
        )
    if not 0 <= ro.min_latency_delta_ms <= 60_000:
        raise ConfigError(f"[{where}] min_latency_delta_ms must be from 0 to 60000")
    if ro.compare not in ("values", "argmax"):
        raise ConfigError(f"[{where}] compare must be 'values' or 'argmax'")
    if ro.mode not in ("", "canary", "shadow"):
        raise ConfigError(f"[{where}] mode must be '', 'canary' or 'shadow'")
    if not 1 <= ro.percent <= 100:
        raise ConfigError(f"[{where}] percent must be from 1 to 100")
    if ro.sticky and ro.mode != "canary":
        raise ConfigError(f"[{where}] sticky applies to mode 'canary' only")


def _validate_proxy(tls: TlsConfig) -> None:
    """[tls] mode and proxy_identities (gateway/auth/xfcc.py): proxy mode needs client certificates and a proxy."""
    if tls.mode not in ("direct", "proxy"):
        raise ConfigError("[tls] mode must be 'direct' or 'proxy'")
    for entry in tls.proxy_identities:
        kind, _, value = str(entry).partition(":")
        if kind not in ("uri", "dns", "cn", "spiffe") or not value.strip(":/ "):
            raise ConfigError(f"[tls] proxy identity {entry!r} must be uri:URI, dns:NAME, cn:NAME or spiffe://ID")
    if tls.mode == "proxy" and (not tls.proxy_identities or not tls.require_client_auth):
        raise ConfigError("[tls] mode 'proxy' needs proxy_identities and require_client_auth = true")


def _validate_explain(e: ExplainConfig) -> None:
    """[explain]: a known default method, 1 <= default_nsamples <= max_nsamples, positive limits."""
    if e.method not in ("kernel_shap", "occlusion"):
        raise ConfigError("[explain] method must be 'kernel_shap' or 'occlusion'")
    if not 1 <= e.default_nsamples <= e.max_nsamples <= 1_000_000:
        raise ConfigError("[explain] needs 1 <= default_nsamples <= max_nsamples <= 1000000")
    if e.max_per_minute < 1 or e.max_instances < 1 or e.max_concurrent < 1:
        raise ConfigError("[explain] max_per_minute, max_instances and max_concurrent must be >= 1")


def _validate_observability(t: TracingConfig, log: LogConfig) -> None:
    """[tracing]: a known exporter, an http(s) endpoint, 0 <= sample_ratio <= 1; [log]: a known format and level."""
    if t.exporter not in ("otlp", "console", "none"):
        raise ConfigError("[tracing] exporter must be 'otlp', 'console' or 'none'")
    if not t.otlp_endpoint.startswith(("http://", "https://")):
        raise ConfigError("[tracing] otlp_endpoint must be an http:// or https:// URL")
    if not 0 <= t.sample_ratio <= 1:
        raise ConfigError("[tracing] sample_ratio must be between 0 and 1")
    if not 1 <= len(t.service_name) <= 64:
        raise ConfigError("[tracing] service_name must be 1-64 characters")
    if log.format not in ("text", "json"):
        raise ConfigError("[log] format must be 'text' or 'json'")
    if log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError("[log] level must be 'debug', 'info', 'warning' or 'error'")


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


def _validate_batching(b: BatchingSection) -> None:
    """[batching] (or one model's settings with its [batching.per_model.NAME] table) must be usable."""
    if not 1 <= b.max_batch_size <= 65536 or not 0 <= b.max_queue_delay_us <= 10_000_000 or b.max_queue_size < 1:
        raise ConfigError(
            "[batching] needs 1 <= max_batch_size <= 65536, 0 <= max_queue_delay_us <= 10000000, max_queue_size >= 1"
        )
    if any(type(n) is not int or not 1 <= n <= b.max_batch_size for n in b.preferred_batch_sizes):
        raise ConfigError("[batching] preferred_batch_sizes must be integers between 1 and max_batch_size")
    if any(not isinstance(m, str) or not m for m in b.models):
        raise ConfigError("[batching] models must be a list of model names")


_MAX_NUMBER = 2**63 - 1  # any number the C libraries below (gRPC, sockets, time) take without overflow


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
        if (isinstance(value, float) and value != value) or abs(value) > _MAX_NUMBER:
            raise ConfigError(f"{where} must be a finite number below 2**63")  # nan, inf, 10**30 reach C code
        if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where} must be an integer")  # 1.5 is not silently 1
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
    except UnicodeDecodeError as exc:  # TOML is UTF-8
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start})") from None
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
