"""`sealgate.v1.Release`: push, fetch, list and roll back sealed artifacts over the gateway's mTLS + JWT.

Every call authenticates its token on the call's metadata before anything else: a push is then read
for its metadata (within FIRST_MESSAGE_TIMEOUT_S), authorized for `release:<name>`, given one of the
caller's slots, received whole into a temporary file in the repository (never over the size limit or
the stream deadline), checked against its announced size and SHA-256, then handed to the manager,
which verifies and stores it atomically or refuses it, leaving no trace either way.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.config import ServerConfig
from gateway.errors import InvalidInput, StreamTimeout, TooLarge, clip
from gateway.fsutil import write_refused
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.protos.sealgate.v1 import release_pb2_grpc as pb_grpc
from gateway.server.guard import IN_STREAM, Call, Guard, PeerCache, guarded
from gateway.server.limits import Slots, slot_key
from gateway.server.rollouts import push_rollout, rollout_fields
from gateway.serving.manager import ModelManager
from gateway.serving.repository import check_name
from gateway.versions import check_version

FETCH_CHUNK = 1 << 20
FIRST_MESSAGE_TIMEOUT_S = 10.0  # an authenticated push must send its metadata this soon (bounded by the deadline)


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


def _key(call: Call) -> str:
    """The slot key of an authenticated call: its certificate's thumbprint (limits.slot_key)."""
    assert call.principal is not None, "slots are taken after authentication only"
    return slot_key(call.peer, call.principal)


def _check_push_metadata(meta: pb.ArtifactMetadata, max_push_bytes: int) -> None:
    """Refuse a push's announced identity or size before a byte of it is received."""
    check_name(meta.name)
    check_version(meta.version)
    if meta.size <= 0 or meta.size > max_push_bytes:
        raise TooLarge(f"push of {meta.size} bytes is outside 1..{max_push_bytes}")
    if len(meta.sha256) != 64 or not all(c in "0123456789abcdefABCDEF" for c in meta.sha256):
        raise InvalidInput("metadata.sha256 must be 64 hex characters")


class ReleaseService(pb_grpc.ReleaseServicer):
    """Push / Fetch / List / Rollback in front of the model manager.

    Every method authenticates the token on the call's metadata before it reads, parses or holds
    anything; an authorized call then takes one of the caller's slots (keyed by its certificate), so
    a peer without a valid token holds no slot and one peer cannot take them all.
    """

    def __init__(
        self,
        manager: ModelManager,
        guard: Guard,
        peers: PeerCache,
        limits: ServerConfig,
        slots: Slots | None = None,
    ) -> None:
        self.manager = manager
        self.guard = guard
        self.peers = peers
        self.limits = limits
        self.slots = slots or Slots(limits.max_concurrent_requests, getattr(limits, "max_concurrent_per_peer", 0))
        self.first_message_s = min(FIRST_MESSAGE_TIMEOUT_S, limits.stream_deadline_s)

    # --- Push -----------------------------------------------------------------------------------
    @guarded("release", model=IN_STREAM)
    async def Push(self, request_iterator: AsyncIterator[pb.PushRequest], call: Call) -> pb.PushResponse:
        """Receive, check and hand over one sealed artifact; its name is authorized once its metadata is read."""
        tmp: Path | None = None
        try:
            deadline = time.monotonic() + self.limits.stream_deadline_s
            meta = await self._first_metadata(request_iterator)
            call.model, call.version = clip(meta.name, 64), clip(meta.version)
            self.guard.authorize(call, call.metadata, "release", meta.name)
            _check_push_metadata(meta, self.limits.max_push_bytes)
            with self.slots.hold(_key(call)):
                try:
                    tmp = await asyncio.wait_for(
                        self._receive(request_iterator, meta), timeout=max(0.0, deadline - time.monotonic())
                    )
                except TimeoutError:
                    raise StreamTimeout("push exceeded the stream deadline") from None
                result = await asyncio.to_thread(
                    self.manager.accept_push,
                    meta.name,
                    int(meta.version),
                    tmp,
                    store_only=meta.store_only,
                    **push_rollout(meta.rollout),  # canary / shadow (gateway/server/rollouts.py)
                )
            tmp = None  # the manager owns (stored or removed) the file now
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        if result.already_stored:
            call.reason = "already stored: nothing changed"
        return pb.PushResponse(
            name=meta.name,
            version=meta.version,
            size=meta.size,
            sha256=meta.sha256.lower(),
            state=pb.VersionStatus.State.Value(result.state.name),
            already_stored=result.already_stored,
        )

    async def _first_metadata(self, requests: AsyncIterator[pb.PushRequest]) -> pb.ArtifactMetadata:
        """The push's first message, which must be its metadata, within `first_message_s`."""
        try:
            first = await asyncio.wait_for(anext(aiter(requests), None), timeout=self.first_message_s)
        except TimeoutError:
            raise StreamTimeout(f"no push metadata within {self.first_message_s:g} s") from None
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidInput("a push starts with one metadata message")
        return first.metadata

    async def _receive(self, requests: AsyncIterator[pb.PushRequest], meta: pb.ArtifactMetadata) -> Path:
        """Write the chunks to a temp file in the repository; verify count and digest; fsync."""
        root = self.manager.repo.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".push-", suffix=".tmp", dir=root)
        except OSError as exc:
            raise write_refused(exc, "push") from None
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
        except OSError as exc:  # a full or read-only file system: typed for the client, nothing left behind
            path.unlink(missing_ok=True)
            raise write_refused(exc, "push") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    # --- Fetch ----------------------------------------------------------------------------------
    @guarded("fetch", model="name")
    async def Fetch(self, request: pb.FetchRequest, call: Call) -> AsyncIterator[pb.FetchResponse]:
        """Stream a stored artifact: its metadata (size, SHA-256), then its bytes in chunks."""
        check_name(request.name)
        version = check_version(request.version) if request.version else None
        path, version = self.manager.fetch_path(request.name, version)
        call.version = str(version)
        size, digest = await asyncio.to_thread(_sha256_file, path)
        meta = pb.ArtifactMetadata(name=request.name, version=version, size=size, sha256=digest)
        yield pb.FetchResponse(metadata=meta)
        with open(path, "rb") as fh:
            while block := fh.read(FETCH_CHUNK):
                yield pb.FetchResponse(chunk=block)

    # --- List -----------------------------------------------------------------------------------
    @guarded(None, model="name")
    async def List(self, request: pb.ListRequest, call: Call) -> pb.ListResponse:
        """The versions of every model (or `request.name`) the caller may release or fetch."""
        assert call.principal is not None  # set by the guard before the handler runs
        return self._list(request, call.principal)

    def _list(self, request: pb.ListRequest, principal: Any) -> pb.ListResponse:
        """The versions of every model (or `request.name`) the principal may release or fetch."""
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
            state = self.manager.rollout_state(name)
            if state is not None:  # a rollout in progress or its last decision
                model.rollout.CopyFrom(pb.RolloutStatus(**rollout_fields(state)))
        return pb.ListResponse(models=[models[k] for k in sorted(models)])

    # --- Rollback -------------------------------------------------------------------------------
    @guarded("release", model="name", version="version")
    async def Rollback(self, request: pb.RollbackRequest, call: Call) -> pb.RollbackResponse:
        """Serve an earlier stored version of a model again, with a reason for the audit log."""
        check_version(request.version)
        if not request.reason.strip():
            raise InvalidInput("a rollback needs a reason")
        new, previous = await asyncio.to_thread(
            self.manager.rollback, request.name, int(request.version), request.reason
        )
        call.reason = f"rollback from v{previous}: {clip(request.reason, 200)}"
        return pb.RollbackResponse(name=request.name, version=new, previous_version=previous or 0)
