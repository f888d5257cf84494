"""A repository on a full or read-only file system: a push or a rollback is refused with a typed status
(RESOURCE_EXHAUSTED "no space left", UNAVAILABLE "cannot be written"), never INTERNAL; nothing is stored, the
version is not consumed, the refusal is audited, and the server keeps serving. The repository lives on a real
tmpfs of 256 KiB (mounting needs root: skipped where it cannot be mounted)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.errors import StorageFull, Unavailable
from gateway.release.client import ReleaseClient, RemoteError
from gateway.serving.repository import Repository
from tests import harness
from tests.models import make_onnx_mlp
from tests.security import _release as release
from tests.security._grpc import records

NAME = "disk"


def _mount(where: Path, *options: str) -> bool:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=256k", *options)), "tmpfs", str(where)])
    return done.returncode == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Env]:
    env = harness.make_env(tmp_path_factory.mktemp("storage"))
    try:
        mounted = _mount(env.models)
    except OSError:
        mounted = False
    if not mounted:
        pytest.skip("a tmpfs cannot be mounted here (needs root)")
    try:
        harness.seal_model(env, NAME, 1, make_onnx_mlp(4, (4,), 1, seed=1))
        yield env.with_config(server={"rest": False, "metrics_address": "127.0.0.1:0"})
    finally:
        subprocess.run(["umount", "-l", str(env.models)], check=False)


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with release.serving(env, NAME) as gw:
        yield gw


def _client(env: harness.Env, gateway: Any) -> ReleaseClient:
    return release.client(env, gateway, NAME)


def _states(env: harness.Env, gateway: Any) -> dict[int, str]:
    return release.states(env, gateway, NAME)


def _served(env: harness.Env, gateway: Any) -> str:
    return release.served_version(env, gateway, NAME, 4)


def _snapshot(env: harness.Env) -> dict[str, bytes]:
    return {p.relative_to(env.models).as_posix(): p.read_bytes() for p in env.models.rglob("*") if p.is_file()}


def test_a_push_larger_than_the_free_space_is_refused_and_consumes_nothing(
    env: harness.Env, gateway: Any, tmp_path: Path
) -> None:
    """Before: INTERNAL "internal error". Now RESOURCE_EXHAUSTED naming the cause; then a push that fits works."""
    big = harness.seal_model(env, NAME, 2, make_onnx_mlp(4, (512, 512), 1, seed=2), out=tmp_path / "big.sealed")
    assert big.stat().st_size > 512 * 1024
    before = _snapshot(env)
    with _client(env, gateway) as c, pytest.raises(RemoteError) as refused:
        c.push(big, NAME, 2)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert "no space left" in str(refused.value) and "nothing was stored" in str(refused.value)
    assert _snapshot(env) == before, "no partial artifact, no temp file, the ledger as it was"
    assert records(env, gateway, "grpc:Push", "RESOURCE_EXHAUSTED"), "the refusal is audited"
    assert _states(env, gateway) == {1: "SERVING"} and _served(env, gateway) == "1"
    small = harness.seal_model(env, NAME, 2, make_onnx_mlp(4, (4,), 1, seed=3), out=tmp_path / "small.sealed")
    with _client(env, gateway) as c:
        c.push(small, NAME, 2)  # version 2 was not consumed by the refusal
    deadline = time.time() + 30
    while _served(env, gateway) != "2":
        assert time.time() < deadline, "v2 never served"
        time.sleep(0.1)


def test_a_read_only_repository_refuses_a_push_as_unavailable(env: harness.Env, gateway: Any, tmp_path: Path) -> None:
    """Before: INTERNAL. Now UNAVAILABLE "cannot be written"; nothing changes and the server keeps serving."""
    artifact = harness.seal_model(env, NAME, 3, make_onnx_mlp(4, (4,), 1, seed=4), out=tmp_path / "v3.sealed")
    serving = _served(env, gateway)
    before = _snapshot(env)
    assert subprocess.run(["mount", "-o", "remount,ro", str(env.models)]).returncode == 0
    try:
        with _client(env, gateway) as c, pytest.raises(RemoteError) as refused:
            c.push(artifact, NAME, 3)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
        assert "cannot be written" in str(refused.value)
        assert records(env, gateway, "grpc:Push", "UNAVAILABLE"), "the refusal is audited"
        assert _snapshot(env) == before and _served(env, gateway) == serving
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(env.models)], check=True)


def test_storing_into_a_full_or_read_only_repository_is_typed_and_leaves_nothing(env: harness.Env) -> None:
    """The repository's own write (what a push, a fetch-only store or a copy-in end in): StorageFull or
    Unavailable, never a bare OSError; no file left in the model's folder."""
    repo = Repository(env.models)
    before = _snapshot(env)
    with pytest.raises(StorageFull, match="no space left"):
        repo.store(NAME, 90, bytes(1 << 20))  # 1 MiB into the 256 KiB file system
    assert _snapshot(env) == before
    assert subprocess.run(["mount", "-o", "remount,ro", str(env.models)]).returncode == 0
    try:
        with pytest.raises(Unavailable, match="cannot be written"):
            repo.store(NAME, 91, b"small")
        with pytest.raises(Unavailable, match="cannot be written"):
            repo.store("newmodel", 1, b"small")  # a model folder that must be made first
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(env.models)], check=True)
    assert _snapshot(env) == before
