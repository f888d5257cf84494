"""Prometheus metrics of the gateway, in a registry of its own (several gateways can live in one process).

Per-call figures (requests, latency) are kept in plain dicts by `CallStats` and exposed through a custom
collector: updating a prometheus_client Counter and Histogram child costs ~10 µs per call (label lookup,
locks, a Python loop over the buckets), a dict update and a bisect about 1 µs. Rare events (auth failures,
loaded versions) use prometheus_client's own Counter and Gauge.

Label values are bounded whatever clients send: a model label only for a model the manager knows (read
from the `loaded` gauge the manager keeps current), every other name under OTHER; protocol, method and
status from fixed sets; a version label only beside a known model, on a call that succeeded.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
REQUEST_LABELS = ("protocol", "method", "model", "version", "status")
LATENCY_LABELS = ("protocol", "method", "model")
OTHER = "_other"  # the one label of every model name, method or protocol outside the known sets
PROTOCOLS = frozenset({"grpc", "rest", "metrics"})
METHODS = frozenset(
    {
        "ServerLive",
        "ServerReady",
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "RepositoryIndex",
        "Push",
        "Fetch",
        "List",
        "Rollback",
        "Predict",
        "GetModelStatus",
        "Explain",
        "Metrics",
        "Health",
        "Health.Check",
        "Health.Watch",
        "Reflection.Info",
        "Scrape",
        "http-parse",
        "connection",
        "tls-handshake",
    }
)
STATUSES = frozenset(code.name for code in grpc.StatusCode)
MAX_VERSION_LABEL = 18  # digits: the version rule of gateway.versions
MODELS_REFRESH_S = 0.2  # how stale the set of known model names may get


class CallStats:
    """Request counts by (protocol, method, model, version, status) and latency histograms by
    (protocol, method, model); a prometheus_client collector."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = buckets
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str, str, str], int] = {}
        self._latency: dict[tuple[str, str, str], list[float]] = {}  # per-bucket counts (+Inf last), then sum

    def observe(self, protocol: str, method: str, model: str, version: str, status: str, seconds: float) -> None:
        """Count one finished call and its latency."""
        key = (protocol, method, model, version, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            hist = self._latency.get(key[:3])
            if hist is None:
                hist = self._latency[key[:3]] = [0.0] * (len(self._bounds) + 2)
            hist[bisect_left(self._bounds, seconds)] += 1
            hist[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        """The current figures as metric families (called by the registry at each scrape)."""
        with self._lock:
            requests = list(self._requests.items())
            latency = [(k, list(v)) for k, v in self._latency.items()]
        counter = CounterMetricFamily(
            "sealgate_requests", "Requests by protocol, method, model, version and status code.", labels=REQUEST_LABELS
        )
        for labels, count in requests:
            counter.add_metric(labels, count)
        yield counter
        histogram = HistogramMetricFamily(
            "sealgate_request_latency_seconds", "Request latency by protocol, method and model.", labels=LATENCY_LABELS
        )
        bounds = [repr(float(b)) for b in self._bounds] + ["+Inf"]
        for key, counts in latency:
            cumulative, running = [], 0.0
            for bound, n in zip(bounds, counts[:-1], strict=True):
                running += n
                cumulative.append((bound, running))
            histogram.add_metric(key, cumulative, sum_value=counts[-1])
        yield histogram


class Metrics:
    """Requests by model, version and status; latency histograms; loaded versions; auth failures by reason;
    audit records lost."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = CallStats()
        self.registry.register(self.calls)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, _resident_memory_bytes, _open_fds
        self.auth_failures = Counter(
            "sealgate_auth_failures",
            "Refused calls by reason (missing, expired, audience, issuer, algorithm, scope, binding...).",
            ["reason"],
            registry=self.registry,
        )
        self.audit_lost = Counter(
            "sealgate_audit_records_lost",
            "Audit records that could not be written (the log's file system refused them).",
            registry=self.registry,
        )
        self.audit_suppressed = Counter(
            "sealgate_audit_records_suppressed",
            "Refusal audit records dropped by the per-(status, peer) rate bound (still counted in requests).",
            registry=self.registry,
        )
        self.loaded = Gauge(
            "sealgate_model_versions_loaded",
            "Versions loaded per model and state.",
            ["model", "state"],
            registry=self.registry,
        )
        self._models: frozenset[str] = frozenset()
        self._models_at = 0.0
        self._models_lock = threading.Lock()

    def known_models(self, max_age: float = MODELS_REFRESH_S) -> frozenset[str]:
        """Names of the models the manager reports (any version in any state), re-read if older than `max_age`."""
        now = time.monotonic()
        if now - self._models_at > max_age:
            with self._models_lock:
                names = {
                    sample.labels["model"]
                    for family in self.loaded.collect()
                    for sample in family.samples
                    if sample.value > 0
                }
                self._models, self._models_at = frozenset(names), now
        return self._models

    def labels(
        self, protocol: str, method: str, model: str, version: str, status: str
    ) -> tuple[str, str, str, str, str]:
        """Bounded label values for one call: unknown names fold into OTHER, a version only beside a known model."""
        if model and model not in self._models and model not in self.known_models(MODELS_REFRESH_S / 4):
            model, version = OTHER, ""
        if version and (len(version) > MAX_VERSION_LABEL or not version.isascii() or not version.isdigit()):
            version = ""
        if status != "OK":  # a refused call's version may be any digits the client chose, and never existed
            version = ""
        return (
            protocol if protocol in PROTOCOLS else OTHER,
            method if method in METHODS else OTHER,
            model,
            version,
            status if status in STATUSES else OTHER,
        )

    def observe(self, protocol: str, method: str, model: str, version: str, status: str, seconds: float) -> None:
        """Count one finished call and its latency, under bounded labels."""
        self.calls.observe(*self.labels(protocol, method, model, version, status), seconds)

    def render(self) -> bytes:
        """The text exposition format, for GET /metrics."""
        return generate_latest(self.registry)
