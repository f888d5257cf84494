"""Per-model queue and compute time histograms, from the phase times the data plane measures anyway.

Two families, labelled by model and version (a served version: a name no client chose freely):
`sealgate_model_queue_seconds` (waiting for a worker thread; 0 for a backend that runs inline) and
`sealgate_model_compute_seconds` by `phase` = input (decoding the request's tensors), infer (the model's
own run), output (encoding the answer). Triton exports the same split as nv_inference_queue_duration_us
and nv_inference_compute_{input,infer,output}_duration_us.

One lock and four bisects per inference, about what the Statistics record beside it costs (a
prometheus_client Histogram would cost ~10 µs per observation). The label sets are bounded: past
MAX_SERIES model versions (every version ever served by this process), new ones are counted under the model `_other`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from gateway.server.dataplane import Phases

PHASE_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
PHASES = ("queue", "input", "infer", "output")
INFER = PHASES.index("infer")
MAX_SERIES = 1024
OTHER = ("_other", 0)  # version 0 (no version is 0) is written as ""


class PhaseHistograms:
    """Histograms of where inferences spent their time, per (model, version); a prometheus_client collector."""

    def __init__(self, buckets: tuple[float, ...] = PHASE_BUCKETS) -> None:
        self._bounds = tuple(round(b * 1e9) for b in buckets)  # in ns, as ints: observations need no division
        self._labels = [repr(float(b)) for b in buckets] + ["+Inf"]
        self._lock = threading.Lock()
        # per model version: for each phase, per-bucket counts (+Inf last) then the sum in ns
        self._series: dict[tuple[str, int], list[list[int]]] = {}

    def observe(self, name: str, version: int, phases: Phases) -> None:
        """Count one successful inference's queue, input, infer and output times (unrolled: the hot path)."""
        bounds = self._bounds
        with self._lock:
            series = self._series.get((name, version)) or self._new_locked(name, version)
            queue, decode, infer, encode = series
            ns = phases.queue_ns
            queue[bisect_left(bounds, ns)] += 1
            queue[-1] += ns
            ns = phases.input_ns
            decode[bisect_left(bounds, ns)] += 1
            decode[-1] += ns
            ns = phases.infer_ns
            infer[bisect_left(bounds, ns)] += 1
            infer[-1] += ns
            ns = phases.output_ns
            encode[bisect_left(bounds, ns)] += 1
            encode[-1] += ns

    def observe_infer(self, name: str, version: int, infer_ns: int) -> None:
        """Count an inference whose only measured phase is the model's run (TF Serving REST, infer_now)."""
        with self._lock:
            hist = (self._series.get((name, version)) or self._new_locked(name, version))[INFER]
            hist[bisect_left(self._bounds, infer_ns)] += 1
            hist[-1] += infer_ns

    def _new_locked(self, name: str, version: int) -> list[list[int]]:
        """The histograms of a model version seen for the first time (those of `_other` past MAX_SERIES)."""
        key = (name, version) if len(self._series) < MAX_SERIES else OTHER
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [[0] * (len(self._bounds) + 2) for _ in PHASES]
        return series

    def collect(self) -> Iterator[Metric]:
        """The histograms as metric families (called by the registry at each scrape)."""
        with self._lock:
            series = [(key, [list(h) for h in hists]) for key, hists in self._series.items()]
        queue = HistogramMetricFamily(
            "sealgate_model_queue_seconds",
            "Time successful inferences waited for a worker thread, by model and version.",
            labels=("model", "version"),
        )
        compute = HistogramMetricFamily(
            "sealgate_model_compute_seconds",
            "Time successful inferences spent decoding inputs, running the model and encoding outputs, "
            "by model, version and phase (input, infer, output).",
            labels=("model", "version", "phase"),
        )
        for (name, number), hists in series:
            version = str(number) if number else ""
            for phase, hist in zip(PHASES, hists, strict=True):
                buckets, running = [], 0.0
                for label, n in zip(self._labels, hist[:-1], strict=True):
                    running += n
                    buckets.append((label, running))
                if phase == "queue":
                    queue.add_metric((name, version), buckets, sum_value=hist[-1] / 1e9)
                else:
                    compute.add_metric((name, version, phase), buckets, sum_value=hist[-1] / 1e9)
        yield queue
        yield compute
