"""`sealgate.v1.Release`: push, fetch, list and roll back sealed artifacts over the gateway's mTLS + JWT.

A push is authorized before its first byte is stored, received whole into a temporary file in the
repository (never over the size limit or the deadline), checked against its announced size and
SHA-256, then handed to the manager, which verifies and stores it atomically or refuses it, leaving no
trace either way.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from gateway.config import ServerConfig
from gateway.errors import InvalidInput, SealgateError, TooLarge, grpc_status
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.protos.sealgate.v1 import release_pb2_grpc as pb_grpc
from gateway.server.guard import Guard
from gateway.server.inference import PeerCache
from gateway.serving.manager import ModelManager

FETCH_CHUNK = 1 << 20


def _provenance(doc: dict[str, Any] | None) -> pb.Provenance | None:
    """The List summary of a provenance record (only well-typed fields are copied)."""
    if not isinstance(doc, dict):
        return None
    p = pb.Provenance(
        framework=str(doc.get("framework") or ""),
        created=str(doc.get("created") or ""),
        parent_version=int(doc.get("parent_version") or 0),
    )
    metrics = doc.get("metrics")
    if isinstance(metrics, dict):
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                p.metrics[str(k)] = float(v)
    privacy = doc.get("privacy")
    if isinstance(privacy, dict):
        if isinstance(privacy.get("epsilon"), int | float):
            p.epsilon = float(privacy["epsilon"])
        if isinstance(privacy.get("delta"), int | float):
            p.delta = float(privacy["delta"])
    gates = doc.get("gates")
    if isinstance(gates, dict) and isinstance(gates.get("gates"), list):  # a GateReport.to_dict()
        p.gates.extend(
            str(g.get("name")) for g in gates["gates"] if isinstance(g, dict) and g.get("status") == "passed"
        )
    elif isinstance(gates, list):
        p.gates.extend(str(g) for g in gates)
    return p


def _sha256_file(path: Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(FETCH_CHUNK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


class ReleaseService(pb_grpc.ReleaseServicer):
    """Push / Fetch / List / Rollback in front of the model manager."""

    def __init__(self, manager: ModelManager, guard: Guard, peers: PeerCache, limits: ServerConfig) -> None:
        self.manager = manager
        self.guard = guard
        self.peers = peers
        self.limits = limits

    async def _abort(self, context: Any, exc: BaseException) -> None:
        code, message = grpc_status(exc)
        await context.abort(code, message)

    # --- Push -----------------------------------------------------------------------------------
    async def Push(self, request_iterator: AsyncIterator[pb.PushRequest], context: Any) -> pb.PushResponse:
        tmp: Path | None = None
        try:
            with self.guard.call("grpc", "Push", self.peers.get(context)) as call:
                first = await anext(aiter(request_iterator), None)
                if first is None or first.WhichOneof("payload") != "metadata":
                    raise InvalidInput("a push starts with one metadata message")
                meta = first.metadata
                call.model, call.version = meta.name, str(meta.version)
                self.guard.authorize(call, context.invocation_metadata(), "release", meta.name)
                if meta.version < 1:
                    raise InvalidInput("version must be >= 1")
                if meta.size <= 0 or meta.size > self.limits.max_push_bytes:
                    raise TooLarge(f"push of {meta.size} bytes is outside 1..{self.limits.max_push_bytes}")
                if len(meta.sha256) != 64:
                    raise InvalidInput("metadata.sha256 must be 64 hex characters")
                tmp = await asyncio.wait_for(
                    self._receive(request_iterator, meta), timeout=self.limits.stream_deadline_s
                )
                status = await asyncio.to_thread(self.manager.accept_push, meta.name, int(meta.version), tmp)
                tmp = None  # the manager owns (stored or removed) the file now
                return pb.PushResponse(
                    name=meta.name,
                    version=meta.version,
                    size=meta.size,
                    sha256=meta.sha256.lower(),
                    state=pb.VersionStatus.State.Value(status.state.name),
                )
        except TimeoutError:
            exc: BaseException = SealgateError("push exceeded the stream deadline")
            exc.grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        except Exception as err:
            exc = err
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        await self._abort(context, exc)
        raise AssertionError("unreachable")

    async def _receive(self, requests: AsyncIterator[pb.PushRequest], meta: pb.ArtifactMetadata) -> Path:
        """Write the chunks to a temp file in the repository; verify count and digest; fsync."""
        root = self.manager.repo.root
        root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".push-", suffix=".tmp", dir=root)
        path = Path(name)
        h, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                async for req in requests:
                    if req.WhichOneof("payload") != "chunk":
                        raise InvalidInput("only chunks may follow the metadata")
                    size += len(req.chunk)
                    if size > meta.size:
                        raise InvalidInput(f"received more than the announced {meta.size} bytes")
                    h.update(req.chunk)
                    fh.write(req.chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if size != meta.size:
                raise InvalidInput(f"push ended after {size} of {meta.size} bytes")
            if h.hexdigest() != meta.sha256.lower():
                raise InvalidInput("the received bytes do not match metadata.sha256")
            return path
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    # --- Fetch ----------------------------------------------------------------------------------
    async def Fetch(self, request: pb.FetchRequest, context: Any) -> AsyncIterator[pb.FetchResponse]:
        try:
            with self.guard.call("grpc", "Fetch", self.peers.get(context), request.name) as call:
                self.guard.authorize(call, context.invocation_metadata(), "fetch", request.name)
                path, version = self.manager.fetch_path(request.name, request.version or None)
                call.version = str(version)
                size, digest = await asyncio.to_thread(_sha256_file, path)
                meta = pb.ArtifactMetadata(name=request.name, version=version, size=size, sha256=digest)
                yield pb.FetchResponse(metadata=meta)
                with open(path, "rb") as fh:
                    while block := fh.read(FETCH_CHUNK):
                        yield pb.FetchResponse(chunk=block)
                return
        except Exception as err:
            exc = err
        await self._abort(context, exc)

    # --- List -----------------------------------------------------------------------------------
    async def List(self, request: pb.ListRequest, context: Any) -> pb.ListResponse:
        try:
            with self.guard.call("grpc", "List", self.peers.get(context), request.name) as call:
                principal = self.guard.authorize(call, context.invocation_metadata(), None)
                models: dict[str, pb.ModelStatus] = {}
                for st in sorted(self.manager.status(), key=lambda s: (s.name, s.version)):
                    if request.name and st.name != request.name:
                        continue
                    if not (principal.can("release", st.name) or principal.can("fetch", st.name)):
                        continue
                    m = models.setdefault(st.name, pb.ModelStatus(name=st.name))
                    m.highest_version_seen = max(m.highest_version_seen, st.highest_seen)
                    v = m.versions.add(
                        version=st.version,
                        state=pb.VersionStatus.State.Value(st.state.name),
                        reason=st.reason or "",
                        pinned=st.pinned,
                        size=getattr(st, "size", 0) or 0,
                        sha256=getattr(st, "sha256", "") or "",
                    )
                    prov = _provenance(st.provenance)
                    if prov is not None:
                        v.provenance.CopyFrom(prov)
                for name, model in models.items():
                    model.serving_version = self.manager.default_version(name) or 0
                return pb.ListResponse(models=[models[k] for k in sorted(models)])
        except Exception as err:
            exc = err
        await self._abort(context, exc)
        raise AssertionError("unreachable")

    # --- Rollback -------------------------------------------------------------------------------
    async def Rollback(self, request: pb.RollbackRequest, context: Any) -> pb.RollbackResponse:
        try:
            with self.guard.call("grpc", "Rollback", self.peers.get(context), request.name) as call:
                call.version = str(request.version)
                self.guard.authorize(call, context.invocation_metadata(), "release", request.name)
                if not request.reason.strip():
                    raise InvalidInput("a rollback needs a reason")
                new, previous = await asyncio.to_thread(
                    self.manager.rollback, request.name, int(request.version), request.reason
                )
                call.reason = f"rollback from v{previous}: {request.reason[:200]}"
                return pb.RollbackResponse(name=request.name, version=new, previous_version=previous or 0)
        except Exception as err:
            exc = err
        await self._abort(context, exc)
        raise AssertionError("unreachable")
