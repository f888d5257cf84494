"""Fuzz the REST request path end to end: raw HTTP/1.1 bytes through `RestApp.respond`, the sans-IO entry.

The application is the real one: h11 framing, routing, the Guard (a real Authorizer over a verifier that
trusts the fuzz issuer, the recorder, metrics), strict JSON and a real ONNX model served by a real
ModelManager from a sealed file in a temporary repository (sealed with the fuzz keys, fuzz/keys.py).
Input: raw request bytes, one or several pipelined requests; `__TOKEN__` becomes a valid bearer token
(scope infer:fuzz) so mutations reach predict. Every byte the server writes back must be a sequence of
well-formed HTTP/1.1 responses, none of them a 500 (a client's bytes are never a server fault).
Allowed: nothing; `respond` answers every input with bytes.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented(("gateway", "h11")):
    from fuzz import keys
    from fuzz.models import onnx_models
    from gateway.artifact.sealed import seal_to_file
    from gateway.auth.audit import AuditLog
    from gateway.auth.authorizer import Authorizer
    from gateway.auth.jwt_verify import TokenVerifier
    from gateway.backends.base import BackendConfig
    from gateway.server.guard import Guard
    from gateway.server.metrics import Metrics
    from gateway.server.recorder import CallRecorder
    from gateway.server.rest import RestApp, RestLimits
    from gateway.serving.manager import ModelManager
    from gateway.serving.repository import Repository

MODEL = "fuzz"
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)\r\n", re.IGNORECASE)


def _world() -> tuple[RestApp, ModelManager]:
    """A repository holding the FP32 model of fuzz_json as `fuzz` v1, and the REST application over it."""
    root = Path(tempfile.mkdtemp(prefix="sealgate-fuzz-rest-"))
    atexit.register(shutil.rmtree, root, True)
    seal_to_file(
        {"model.onnx": onnx_models()[0]},
        root / MODEL / "1.sealed",
        name=MODEL,
        version=1,
        signer=keys.signer(),
        recipients=[keys.identity().public],
    )
    manager = ModelManager(
        Repository(root), [keys.identity()], keys.trust(), BackendConfig(intra_op_threads=1, inter_op_threads=1)
    )
    manager.poll()
    manager.get(MODEL)  # NotFound/Unavailable here: the world is broken, not the input
    verifier = TokenVerifier(keys.jwks_file(), keys.JWT_ISSUER, keys.JWT_AUDIENCE, reload_interval=3600)
    devnull = open(os.devnull, "w")
    guard = Guard(Authorizer(verifier), CallRecorder(AuditLog(stream=devnull), Metrics()))
    limits = RestLimits(max_body_bytes=1 << 20, request_timeout_s=2.0)
    return RestApp(manager, guard, limits), manager


APP, MANAGER = _world()
_token: tuple[bytes, float] = (b"", 0.0)


def _bearer() -> bytes:
    """A valid token for infer:fuzz, minted again shortly before it expires."""
    global _token
    if _token[1] - time.time() < 60:
        _token = (keys.jwt_token({"scope": f"infer:{MODEL}"}, ttl=900).encode(), time.time() + 900)
    return _token[0]


def check_responses(out: bytes, head_request: bool = False) -> list[int]:
    """The status codes of the responses in `out`; AssertionError unless it is only well-formed responses.

    With `head_request` (the input holds a HEAD), the last response may end at its head: the answer to a HEAD
    has headers only, and the server closes after refusing one (405)."""
    statuses, pos = [], 0
    while pos < len(out):
        match = _STATUS.match(out, pos)
        end = out.find(b"\r\n\r\n", pos)
        if match is None or end < 0:
            raise AssertionError(f"the server wrote bytes that are not an HTTP/1.1 response: {out[pos : pos + 80]!r}")
        status = int(match[1])
        head = out[pos : end + 2]
        length = _CONTENT_LENGTH.search(head)
        if length is None:
            raise AssertionError(f"a response without Content-Length: {head[:200]!r}")
        pos = end + 4 + int(length[1])
        if head_request and end + 4 == len(out):
            statuses.append(status)
            break
        if pos > len(out):
            raise AssertionError(f"a response body shorter than its Content-Length: {head[:200]!r}")
        statuses.append(status)
    return statuses


def serve(data: bytes) -> None:
    """The target: one connection's bytes in, its responses out; never a 500, never malformed output."""
    out = APP.respond(data.replace(b"__TOKEN__", _bearer()))
    for status in check_responses(out, b"HEAD " in data):
        if status == 500 or not 100 <= status <= 599:
            raise AssertionError(f"answered {status}: {out[:300]!r}")


TestOneInput = Harness("rest", serve, ())

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
