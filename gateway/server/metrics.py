"""Prometheus metrics of the gateway, in a registry of its own (several gateways can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """Requests by model, version and status; latency histograms; loaded versions; auth failures by reason."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sealgate_requests",
            "Requests by protocol, method, model, version and status code.",
            ["protocol", "method", "model", "version", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sealgate_request_latency_seconds",
            "Request latency by protocol, method and model.",
            ["protocol", "method", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "sealgate_auth_failures",
            "Refused calls by reason (missing, expired, audience, issuer, algorithm, scope, binding...).",
            ["reason"],
            registry=self.registry,
        )
        self.loaded = Gauge(
            "sealgate_model_versions_loaded",
            "Versions loaded per model and state.",
            ["model", "state"],
            registry=self.registry,
        )

    def observe(self, protocol: str, method: str, model: str, version: str, status: str, seconds: float) -> None:
        """Count one finished call and its latency."""
        self.requests.labels(protocol, method, model, version, status).inc()
        self.latency.labels(protocol, method, model).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format, for GET /metrics."""
        return generate_latest(self.registry)
