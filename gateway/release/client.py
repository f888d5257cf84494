"""The release client: push, fetch, list and roll back sealed artifacts over the gateway's mTLS + JWT.

Used by the CLI, the release step and the federated module (to fetch the model it starts from).
Transfers stream in 1 MiB chunks with an optional progress callback.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import jwt

from gateway.auth.tls import channel_credentials
from gateway.errors import InvalidInput, SealgateError
from gateway.fsutil import atomic_write
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.protos.sealgate.v1 import release_pb2_grpc as pb_grpc
from gateway.versions import check_version

CHUNK = 256 << 10  # well under any sane message limit (the gateway refuses messages over its limit)
Progress = Callable[[int, int], None]
T = TypeVar("T")


class RemoteError(SealgateError):
    """The gateway refused a call; carries its status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


@dataclass
class GatewayTarget:
    """Where the gateway is and how to authenticate to it."""

    address: str
    ca: Path
    cert: Path
    key: Path
    token: str


class ReleaseClient:
    """A connection to one gateway's Release service."""

    def __init__(self, target: GatewayTarget, timeout_s: float = 600.0) -> None:
        self.target = target
        self.timeout = timeout_s
        creds = channel_credentials(target.ca, target.cert, target.key)
        self.channel = grpc.secure_channel(
            target.address,
            creds,
            options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)],
        )
        self.stub = pb_grpc.ReleaseStub(self.channel)  # type: ignore[no-untyped-call]  # generated, unannotated
        self.metadata = (("authorization", f"Bearer {target.token}"),)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ReleaseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as err:
            raise RemoteError(err.code(), err.details() or "") from None

    def push(
        self,
        path: Path,
        name: str,
        version: int,
        progress: Progress | None = None,
        *,
        store_only: bool = False,
        rollout: pb.RolloutRequest | None = None,
    ) -> pb.PushResponse:
        """Upload a sealed file; the gateway verifies it before storing it.

        `store_only` asks the gateway to keep an artifact it cannot open (sealed for other recipients)
        for Fetch only; without it such a push is refused. `already_stored` in the answer says the
        gateway held these exact bytes already (a retried push whose first attempt landed included).
        `rollout` makes the version a canary or shadow candidate beside the serving one.
        """
        path = Path(path)
        size = path.stat().st_size
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                h.update(block)
        meta = pb.ArtifactMetadata(name=name, version=version, size=size, sha256=h.hexdigest(), store_only=store_only)
        if rollout is not None:
            meta.rollout.CopyFrom(rollout)

        def requests() -> Iterator[pb.PushRequest]:
            yield pb.PushRequest(metadata=meta)
            sent = 0
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    sent += len(block)
                    yield pb.PushRequest(chunk=block)
                    if progress:
                        progress(sent, size)

        try:
            pushed: pb.PushResponse = self.stub.Push(requests(), metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                landed = self._already_stored(name, version, meta.sha256)
                if landed is not None:
                    return landed
            raise RemoteError(err.code(), err.details() or "") from None
        return pushed

    def _already_stored(self, name: str, version: int, sha256: str) -> pb.PushResponse | None:
        """A retried push whose first attempt landed: the gateway holds these exact bytes already."""
        for model in self.list(name).models:
            for v in model.versions:
                if v.version == version and v.sha256 == sha256 and v.state != pb.VersionStatus.REFUSED:
                    return pb.PushResponse(
                        name=name, version=version, size=v.size, sha256=sha256, state=v.state, already_stored=True
                    )
        return None

    def fetch(self, name: str, out: Path, version: int = 0, progress: Progress | None = None) -> pb.ArtifactMetadata:
        """Download a sealed file into `out` atomically, checking its size and SHA-256."""
        if version:
            check_version(version)  # before protobuf, which cannot hold 10**30 and would raise ValueError
        stream = self.stub.Fetch(
            pb.FetchRequest(name=name, version=version), metadata=self.metadata, timeout=self.timeout
        )
        meta_box: list[pb.ArtifactMetadata] = []
        h = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            got = 0
            for msg in stream:
                if msg.WhichOneof("payload") == "metadata":
                    meta_box.append(msg.metadata)
                    continue
                got += len(msg.chunk)
                h.update(msg.chunk)
                if progress and meta_box:
                    progress(got, meta_box[0].size)
                yield msg.chunk
            if not meta_box or got != meta_box[0].size or h.hexdigest() != meta_box[0].sha256:
                raise InvalidInput("fetched bytes do not match the announced size and SHA-256")

        try:
            atomic_write(Path(out), chunks(), 0o644, force=True)
        except grpc.RpcError as err:
            raise RemoteError(err.code(), err.details() or "") from None
        return meta_box[0]

    def list(self, name: str = "") -> pb.ListResponse:
        """Models, versions, states and provenance summaries the caller may see."""
        listed: pb.ListResponse = self._call(
            lambda: self.stub.List(pb.ListRequest(name=name), metadata=self.metadata, timeout=30)
        )
        return listed

    def rollback(self, name: str, version: int, reason: str) -> pb.RollbackResponse:
        """Serve an earlier version again, explicitly."""
        check_version(version)
        req = pb.RollbackRequest(name=name, version=version, reason=reason)
        done: pb.RollbackResponse = self._call(lambda: self.stub.Rollback(req, metadata=self.metadata, timeout=60))
        return done


def push_summary(resp: pb.PushResponse) -> str:
    """The one line `sealgate push` prints: "pushed ..." for a new version, "already stored ..." otherwise."""
    state = pb.VersionStatus.State.Name(resp.state)
    if resp.already_stored:
        return f"already stored {resp.name} v{resp.version} ({resp.size} bytes, identical): {state}; nothing changed"
    return f"pushed {resp.name} v{resp.version} ({resp.size} bytes): {state}"


def check_token_fresh(token: str) -> None:
    """Refuse a bearer token that is no JWT or has expired, before long work (a release's gates) that the
    gateway would then refuse. A convenience only: the gateway verifies every token itself."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": True})
    except jwt.ExpiredSignatureError:
        raise SealgateError("the token has expired: mint a new one (`sealgate token`)") from None
    except jwt.InvalidTokenError:
        raise SealgateError("the token is not a JWT (see `sealgate token`)") from None
    if not isinstance(claims.get("exp"), int | float):
        raise SealgateError("the token has no expiry (`exp`); the gateway refuses such tokens")


def token_from_env(token: str | None) -> str:
    """The bearer token from --token or SEALGATE_TOKEN, or a clear error."""
    value = token or os.environ.get("SEALGATE_TOKEN", "")
    if not value:
        raise SealgateError("no token: pass --token or set SEALGATE_TOKEN (see `sealgate token`)")
    return value.strip()
