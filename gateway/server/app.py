"""Compose the gateway from its config: manager, auth, gRPC services (inference, release, health,
reflection), REST (h11 on this loop), the metrics listener (its own port), audit; run it until SIGTERM,
then drain and exit 0.

`Gateway` runs on an asyncio loop (grpc.aio). `GatewayThread` runs one in a background thread, for
tests, benchmarks and the demo; `serve()` runs one in the foreground for `sealgate serve`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from gateway.artifact.keys import load_identity, load_trusted
from gateway.artifact.sealed import TrustStore
from gateway.auth.audit import AuditLog
from gateway.auth.authorizer import Authorizer
from gateway.auth.jwt_verify import TokenVerifier
from gateway.auth.revocation import RevocationList
from gateway.auth.tls import server_credentials, ssl_context_for_rest
from gateway.auth.xfcc import ProxyTrust
from gateway.backends import BackendConfig
from gateway.backends.isolated import worker_settings
from gateway.config import Config
from gateway.explain.engine import Explainer
from gateway.fsutil import enter_private_cwd
from gateway.monitor.live import drift_monitor
from gateway.protos import pool
from gateway.protos.inference import grpc_service_pb2 as inference_pb2
from gateway.protos.inference import grpc_service_pb2_grpc as inference_grpc
from gateway.protos.reflection.v1 import reflection_pb2 as reflection_v1_pb2
from gateway.protos.reflection.v1 import reflection_pb2_grpc as reflection_v1_grpc
from gateway.protos.sealgate.v1 import explain_pb2, explain_pb2_grpc, release_pb2, release_pb2_grpc
from gateway.protos.tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)
from gateway.server import logs, loops
from gateway.server.dataplane import DataPlane
from gateway.server.explain import ExplainService
from gateway.server.guard import Guard, PeerCache
from gateway.server.inference import InferenceService
from gateway.server.limits import BACKSTOP_FACTOR, Slots
from gateway.server.metrics import Metrics
from gateway.server.metrics_http import MetricsServer
from gateway.server.public import PublicHealth, PublicReflection
from gateway.server.recorder import CallRecorder
from gateway.server.reflection_v1 import SERVICE_NAME as REFLECTION_V1
from gateway.server.reflection_v1 import PublicReflectionV1
from gateway.server.registration import register
from gateway.server.release import ReleaseService
from gateway.server.rest import RestLimits, RestServer
from gateway.server.rollouts import audit_hook, rollout_settings
from gateway.server.tfserving import ModelService, PredictionService
from gateway.server.tracing import Tracing
from gateway.server.worker_events import watch_workers
from gateway.serving.batching import Batching
from gateway.serving.manager import ModelManager
from gateway.serving.policy import VersionPolicy
from gateway.serving.repository import Repository

log = logging.getLogger("sealgate.server")
HEALTH_SYNC_S = 0.5


def build_manager(config: Config, batching: Batching | None = None) -> ModelManager:
    """The model manager of a config: repository, identities, trust store, backend, version policy."""
    repo_cfg = config.repository
    policy = (
        VersionPolicy.latest(repo_cfg.latest)
        if repo_cfg.version_policy == "latest"
        else VersionPolicy.specific(repo_cfg.versions)
    )
    return ModelManager(
        Repository(repo_cfg.path),
        [load_identity(p) for p in config.keys.identities],
        TrustStore.of([load_trusted(p) for p in config.keys.trusted_signers]),
        BackendConfig(
            tuple(config.backend.providers),
            config.backend.intra_op_threads,
            **worker_settings(config.backend, config.server.max_message_bytes),  # [backend] isolation
        ),
        policy=policy,
        poll_interval=repo_cfg.poll_interval_s,
        wrap_model=batching.wrap if batching is not None else None,
        rollout=rollout_settings(config),
    )


class Gateway:
    """One gateway: start() binds and serves, stop() stops accepting and drains in-flight calls."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        audit_path = config.audit.path
        self.audit = AuditLog(None if audit_path in ("-", "") else Path(audit_path))
        verifier = TokenVerifier(
            None if config.auth.jwks_url else config.auth.jwks,
            jwks_url=config.auth.jwks_url or None,
            jwks_ca=Path(config.auth.jwks_ca) if config.auth.jwks_ca else None,
            reload_interval=config.auth.jwks_refresh_s if config.auth.jwks_url else None,
            issuer=config.auth.issuer,
            audience=config.auth.audience,
            algorithms=tuple(config.auth.algorithms),
            leeway=config.auth.leeway_s,
            max_lifetime=config.auth.max_token_lifetime_s,
        )
        self.batching = Batching.of(config.batching) if config.batching.enabled else None
        if self.batching is not None:  # batch-size and queue-time histograms on the same /metrics
            self.metrics.registry.register(self.batching.stats)
        self.manager = build_manager(config, self.batching)
        self.recorder = CallRecorder(self.audit, self.metrics)
        revocation = RevocationList(Path(config.tls.crl), config.tls.ca) if config.tls.crl else None
        authorizer = Authorizer(verifier, revocation=revocation, client_ca=config.tls.ca)
        proxy = ProxyTrust(config.tls.mode, config.tls.proxy_identities, authorizer.check_peer)
        self.tracing = Tracing(config.tracing) if config.tracing.enabled else None  # spans: server/tracing.py
        self.guard = Guard(
            authorizer,
            self.recorder,
            proxy,
            self.tracing,
            message_timeout_s=config.server.message_timeout_s,
            waiting=Slots(config.server.max_concurrent_requests, config.server.max_concurrent_per_peer),
        )
        self.manager.metrics = self.metrics
        self.manager.audit_hook = audit_hook(self.recorder)  # rollout decisions and failover, audited
        self._unwatch_workers = watch_workers(self.audit, self.metrics.registry, config.backend.isolation)
        self.dataplane = DataPlane(self.manager)
        self.metrics.registry.register(self.dataplane.histograms)  # per-model queue / compute time
        if self.tracing is not None:
            self.dataplane.tracing = self.tracing
            self.manager.trace_steps(self.tracing.step)
        self.dataplane.monitor = drift_monitor(
            config.monitor, self.manager, self.metrics.registry, workers=config.server.workers
        )
        self.explainer = Explainer(config.explain)  # gRPC Explain and REST :explain share it (one rate limit)
        # every gRPC service the server registers, by full name: reflection lists exactly these
        self.services: dict[str, object] = {}
        self.grpc_port = 0
        self.rest_port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._rest: RestServer | None = None
        self._metrics_http: MetricsServer | None = None
        self._peers = PeerCache()
        self._health = PublicHealth(self.guard, self._peers)
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.config
        self.manager.poll()
        self.manager.start()
        limit = cfg.server.max_message_bytes
        # the application's limits count authenticated callers only (per certificate, after the token);
        # gRPC's own cap, counted before any check, stays as a backstop well above them
        self.grpc_slots = Slots(cfg.server.max_concurrent_requests, cfg.server.max_concurrent_per_peer)
        self._server = grpc.aio.server(
            maximum_concurrent_rpcs=BACKSTOP_FACTOR * cfg.server.max_concurrent_requests or None,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", max(limit, 4 << 20)),
                ("grpc.so_reuseport", 1 if cfg.server.workers > 1 else 0),  # workers share the port
            ],
        )
        peers = self._peers
        inference = InferenceService(self.manager, self.guard, peers, self.grpc_slots, self.dataplane)
        add_inference = inference_grpc.add_GRPCInferenceServiceServicer_to_server
        self._add(inference_pb2, "GRPCInferenceService", inference, add_inference)
        release = ReleaseService(self.manager, self.guard, peers, cfg.server, self.grpc_slots)
        self._add(release_pb2, "Release", release, release_pb2_grpc.add_ReleaseServicer_to_server)
        tfs = (self.dataplane, self.guard, peers, self.grpc_slots, limit)
        add_predict = prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server
        self._add(prediction_service_pb2, "PredictionService", PredictionService(*tfs), add_predict)
        add_status = model_service_pb2_grpc.add_ModelServiceServicer_to_server
        self._add(model_service_pb2, "ModelService", ModelService(*tfs), add_status)
        explain = ExplainService(self.dataplane, self.explainer, self.guard, peers, self.grpc_slots)
        self._add(explain_pb2, "Explain", explain, explain_pb2_grpc.add_ExplainServicer_to_server)
        self._add(health_pb2, "Health", self._health, health_pb2_grpc.add_HealthServicer_to_server)
        pool.mirror(health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
        names = (*self.services, reflection.SERVICE_NAME, REFLECTION_V1)
        reflector = PublicReflection(names, self.guard, peers, pool=pool.POOL)
        add_reflection = reflection_pb2_grpc.add_ServerReflectionServicer_to_server
        self._add(reflection_pb2, "ServerReflection", reflector, add_reflection)
        reflector_v1 = PublicReflectionV1(names, self.guard, peers, pool=pool.POOL)
        add_reflection_v1 = reflection_v1_grpc.add_ServerReflectionServicer_to_server
        self._add(reflection_v1_pb2, "ServerReflection", reflector_v1, add_reflection_v1)
        creds = server_credentials(cfg.tls.ca, cfg.tls.cert, cfg.tls.key, cfg.tls.require_client_auth)
        self.grpc_port = self._server.add_secure_port(cfg.server.grpc_address, creds)
        await self._server.start()
        if cfg.server.rest:
            ctx = ssl_context_for_rest(cfg.tls.ca, cfg.tls.cert, cfg.tls.key, cfg.tls.require_client_auth)
            self._rest = RestServer(
                cfg.server.rest_address,
                self.manager,
                self.guard,
                ctx,
                RestLimits.from_config(cfg.server),
                self.dataplane,
            )
            self._rest.reuse_port = cfg.server.workers > 1
            self._rest.app.explainer = self.explainer
            await self._rest.start()
            self.rest_port = self._rest.port
        if cfg.server.metrics_address:
            self._metrics_http = MetricsServer(cfg.server.metrics_address, self.guard)
            await self._metrics_http.start()
            self.metrics_port = self._metrics_http.port
        await self._sync_health()
        self._health_task = asyncio.create_task(self._health_loop())
        log.info(
            "sealgate serving: gRPC %s, REST %s, metrics %s",
            self.grpc_port,
            self.rest_port or "off",
            self.metrics_port or "off",
        )

    def _add(self, module: Any, service: str, servicer: object, add: Callable[[Any, grpc.aio.Server], None]) -> None:
        """Register `servicer` as `module`'s `service` on the gRPC server and in `self.services`."""
        assert self._server is not None
        register(self._server, add, servicer)  # unary-request methods admitted before their message is read
        self.services[module.DESCRIPTOR.services_by_name[service].full_name] = servicer

    async def _sync_health(self) -> None:
        status = health_pb2.HealthCheckResponse
        ready = self.manager.ready()
        await self._health.set("", status.SERVING if ready else status.NOT_SERVING)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_SYNC_S)
            try:
                await self._sync_health()
            except Exception:
                log.exception("health sync failed")

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish (up to `grace` s), then release everything."""
        grace = self.config.server.drain_seconds if grace is None else grace
        if self._health_task:
            self._health_task.cancel()
        await self._health.enter_graceful_shutdown()
        if self._rest:
            await self._rest.stop()
        if self._metrics_http:
            await self._metrics_http.stop()
        if self._server:
            await self._server.stop(grace)
        self.manager.close()  # drained: release every loaded model (an isolated one's worker process with it)
        self._unwatch_workers()
        self.recorder.close()
        self.audit.close()
        if self.tracing is not None:
            self.tracing.shutdown()  # export the spans still queued


class GatewayThread:
    """Run a Gateway on its own event loop in a daemon thread (tests, bench, demo)."""

    def __init__(self, config: Config) -> None:
        self.gateway = Gateway(config)
        self._loop = loops.loop_factory(config.server.event_loop)()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sealgate-gateway", daemon=True)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the gateway runs on ([server] event_loop)."""
        return self._loop

    def __enter__(self) -> Gateway:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self._loop).result(60)
        return self.gateway

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(1.0), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def serve(config: Config) -> int:
    """Run the gateway in the foreground until SIGTERM/SIGINT; drain, then return 0."""
    logs.configure(config.log)  # [log] format and level (text, or JSON lines)
    if config.server.workers > 1:  # a supervisor of N front-end processes (gateway/server/supervisor.py)
        from gateway.server.supervisor import supervise

        return supervise(config)

    # every path of the config is absolute by now: from here on, a relative path a model names reaches an
    # empty private folder, never the keys beside the config (defence in depth behind the model policy)
    cwd = enter_private_cwd()
    log.debug("working directory: %s (empty, private)", cwd)

    async def main() -> None:
        # handlers first: a SIGTERM that arrives during start-up or right after the banner still drains
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gateway = Gateway(config)
        await gateway.start()
        log.info("event loop: %s", loops.loop_name(loop))
        logs.announce(
            config.log,
            f"sealgate serving {config.repository.path}: gRPC {config.server.grpc_address} (port {gateway.grpc_port}), "
            f"REST {config.server.rest_address} (port {gateway.rest_port}), "
            f"metrics {config.server.metrics_address or 'off'} (port {gateway.metrics_port or '-'})",
        )
        await stop.wait()
        log.info("signal received: draining")
        await gateway.stop()
        log.info("stopped")

    loops.run(main(), config.server.event_loop)
    return 0
