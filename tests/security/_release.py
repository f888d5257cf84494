"""Helpers for the release-path security tests: a gateway waited on until a model's v1 serves, a release
client with release and fetch scope on one model, the versions List reports, and the version ModelInfer
serves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.release.client import ReleaseClient
from gateway.server.app import GatewayThread
from tests import harness
from tests.security._grpc import channel, raw_request, stub


@contextmanager
def serving(env: harness.Env, model: str, timeout: float = 60.0) -> Iterator[Any]:
    """A GatewayThread on `env`, once `model` v1 is SERVING."""
    with GatewayThread(env.config) as gw:
        deadline = time.time() + timeout
        while states(env, gw, model).get(1) != "SERVING":
            assert time.time() < deadline, f"{model} v1 never served"
            time.sleep(0.1)
        yield gw


def client(env: harness.Env, gateway: Any, model: str) -> ReleaseClient:
    """A release client with `release:` and `fetch:` scope on `model`."""
    return harness.release_client(env, gateway.grpc_port, f"release:{model} fetch:{model}")


def states(env: harness.Env, gateway: Any, model: str) -> dict[int, str]:
    """version -> state name, as List reports them for `model`."""
    with client(env, gateway, model) as c:
        listed = c.list(model).models
    return {v.version: pb.VersionStatus.State.Name(v.state) for m in listed for v in m.versions}


def served_version(env: harness.Env, gateway: Any, model: str, in_dim: int) -> str:
    """The version a ModelInfer on `model` (FP32 [1, in_dim]) is answered by."""
    md = (("authorization", "Bearer " + harness.token(env, f"infer:{model}")),)
    req = raw_request(model, "FP32", [1, in_dim], np.ones((1, in_dim), np.float32).tobytes())
    with channel(env, gateway) as chan:
        return str(stub(chan).ModelInfer(req, metadata=md, timeout=30).model_version)
