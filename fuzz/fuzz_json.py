"""Fuzz the REST JSON tensor path: strict body parsing, JSON -> numpy per input, a real model, JSON response.

Input layout: the first byte picks one of four small real ONNX models (loaded once, in memory, with the
gateway's own loader): FP32 [-1, 4] scaled by 1e30 (so large inputs overflow to infinity and the response
encoder meets non-finite outputs), INT64 [-1] identity, BYTES [-1] identity, and a two-input model
(FP32 [-1, 2] and INT64 [-1]). The rest is a TF Serving predict body, given to the REST module's
`predict` (strict JSON parsing, JSON -> numpy per input, the model, the JSON answer); the answer must be
strict JSON (no bare NaN/Infinity) holding "predictions" or "outputs".
Allowed: SealgateError subclasses that map to a client error.
"""

from __future__ import annotations

import json
import sys
import time

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented():
    from fuzz.models import onnx_models
    from gateway.backends.base import BackendConfig
    from gateway.backends.loader import load_model
    from gateway.errors import SealgateError
    from gateway.server import rest
    from gateway.serving.status import ServedModel


def served(onnx_bytes: bytes) -> ServedModel:
    """A real model loaded by the gateway's own loader, as the serving path hands it to `rest.predict`."""
    model = load_model({"model.onnx": onnx_bytes}, BackendConfig(intra_op_threads=1, inter_op_threads=1))
    return ServedModel("fuzz", 1, model, {}, time.time())


MODELS = [served(b) for b in onnx_models()]


def _no_constant(token: str) -> None:
    raise AssertionError(f"the response holds the bare token {token}, which is not JSON")


def predict(data: bytes) -> None:
    """The target: REST's predict on one body; its answer must be strict JSON (no bare NaN/Infinity)."""
    if not data:
        return
    answer = rest.predict(MODELS[data[0] % len(MODELS)], data[1:])
    doc = json.loads(answer, parse_constant=_no_constant)
    if not isinstance(doc, dict) or not ({"predictions", "outputs"} & set(doc)):
        raise AssertionError(f"predict answered {answer[:100]!r}")


TestOneInput = Harness("json", predict, (SealgateError,))

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
