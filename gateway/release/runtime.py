"""ONNX Runtime on the release machine: sessions from bytes, batched inference, interleaved p50 latency.

Sessions never write the model anywhere (no optimized-model file, no profiling), like the serving backend.
Latency runs single-threaded at batch 1 so that candidate and baseline compete on equal terms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from gateway.errors import InvalidInput

PROVIDERS = ["CPUExecutionProvider"]


@dataclass(frozen=True)
class IoSpec:
    """One model input or output as ONNX Runtime sees it: name, element type, shape (None = dynamic)."""

    name: str
    type: str
    shape: tuple[int | None, ...]


def session(model: bytes, threads: int = 1) -> ort.InferenceSession:
    """An InferenceSession over in-memory ONNX bytes (CPU, `threads` intra-op threads, full graph optimization)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = False
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=PROVIDERS)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise InvalidInput(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0][:200]}") from None


def _spec(arg: ort.NodeArg) -> IoSpec:
    shape = tuple(dim if isinstance(dim, int) else None for dim in (arg.shape or []))
    return IoSpec(arg.name, arg.type, shape)


def io_specs(sess: ort.InferenceSession) -> tuple[tuple[IoSpec, ...], tuple[IoSpec, ...]]:
    """The (inputs, outputs) of a session as comparable IoSpec tuples."""
    return tuple(_spec(a) for a in sess.get_inputs()), tuple(_spec(a) for a in sess.get_outputs())


def single_input(sess: ort.InferenceSession) -> IoSpec:
    """The only input of a session; InvalidInput for multi-input models, which the gates do not handle."""
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise InvalidInput(f"expected a model with one input, this one has {len(inputs)}")
    return _spec(inputs[0])


def predict(sess: ort.InferenceSession, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """First output of a single-input model on `x`, in batches (of the model's fixed batch size if it has one)."""
    spec = single_input(sess)
    x = np.ascontiguousarray(x, dtype=np.float32)
    step = spec.shape[0] if spec.shape and spec.shape[0] else batch
    parts = []
    for start in range(0, len(x), step):
        try:
            parts.append(sess.run(None, {spec.name: x[start : start + step]})[0])
        except Exception as exc:  # shape/type mismatches come back as onnxruntime errors
            raise InvalidInput(
                f"inference failed on data of shape {x.shape}: {str(exc).splitlines()[0][:200]}"
            ) from None
    return np.concatenate(parts, axis=0)


def p50_latencies(
    models: Mapping[str, bytes], row: np.ndarray, calls: int = 2000, rounds: int = 10
) -> dict[str, float]:
    """Median batch-1 latency in microseconds of each model, measured interleaved in this process.

    Each round runs `calls // rounds` timed calls per model, the models taking turns (order rotated each round), so
    drift of the machine (frequency, other load) hits every model alike; the ratio of two medians is the figure used.
    """
    sessions = {name: session(data) for name, data in models.items()}
    feeds = {}
    for name, sess in sessions.items():
        spec = single_input(sess)
        feeds[name] = {spec.name: np.ascontiguousarray(row.reshape(1, -1), dtype=np.float32)}
        for _ in range(50):
            sess.run(None, feeds[name])
    timings: dict[str, list[int]] = {name: [] for name in sessions}
    names = list(sessions)
    per_round = max(1, calls // rounds)
    clock = time.perf_counter_ns
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sess, feed, bucket = sessions[name], feeds[name], timings[name]
            for _ in range(per_round):
                start = clock()
                sess.run(None, feed)
                bucket.append(clock() - start)
    return {name: statistics.median(values) / 1000.0 for name, values in timings.items()}
