"""Streaming drift histograms of live inputs, per served (model, version), against the release's reference.

The data plane hands each successful request's decoded inputs to `DriftMonitor.observe`. The sampling
decision comes first and costs a dict lookup and an addition (a deterministic credit: rate 0.1 bins one
request in ten); a sampled request's rows (at most `MAX_CELLS` values per input) are binned with one
vectorized comparison and one `np.bincount`. Only counts are kept: two windows of fixed bins per feature
(the current and the previous `window_rows` sampled rows), so memory is fixed by the reference whatever
the traffic, and PSI follows recent inputs. Scrapes read the figures through a prometheus_client collector.

Metric labels come only from the served model's own reference (input names checked against the model's
inputs, feature indices below the reference's width) and its name and version: never from a client, and
at most `reference.MAX_FEATURES` series per monitored version.

With several front-end workers (`[server] workers > 1`) each worker sees only the calls the kernel spread to
it, so its PSI is a share's. Such a monitor (`counts=True`) also exports the counts PSI is computed from, per
reference bin (live windows and reference, bin labels below the reference's `MAX_BINS + 3`), and `sealgate
monitor` sums the workers' live counts before computing PSI (gateway/monitor/report.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.config import MonitorConfig
from gateway.errors import InvalidInput
from gateway.monitor import reference as ref

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.serving.status import ServedModel

log = logging.getLogger("sealgate.monitor")
MAX_CELLS = 16_384  # values binned per input and sampled request: bounds the work a sample costs the loop
MAX_TRACKED = 64  # model versions with state at once (a backstop: scrapes also drop versions that stopped)
Key = tuple[str, int]
_UNSEEN = object()  # a version the monitor has not looked at yet


@dataclass(frozen=True)
class Figures:
    """One version's drift figures at a moment: sampled rows, and PSI per feature (NaN: no data yet)."""

    model: str
    version: int
    samples: int
    mismatched: int
    features: tuple[str, ...]
    psi: np.ndarray

    @property
    def psi_max(self) -> float:
        """The largest finite per-feature PSI (NaN when none)."""
        finite = self.psi[np.isfinite(self.psi)]
        return float(finite.max()) if finite.size else float("nan")


class _InputState:
    """One input's live counts in two windows, laid out like its reference (features, width + 1)."""

    def __init__(self, reference: ref.InputReference) -> None:
        self.reference = reference
        features, bins = reference.counts.shape
        self.offsets = (np.arange(features, dtype=np.int64) * bins)[None, :]
        self.current = np.zeros((features, bins), dtype=np.int64)
        self.previous = np.zeros((features, bins), dtype=np.int64)

    def binned(self, array: np.ndarray) -> tuple[np.ndarray, int] | None:
        """Counts of a sample of `array`'s rows in this input's bins and how many rows; None if it does not fit."""
        if array.dtype.kind not in "biuf":
            return None
        data = ref.rows_of(array)
        features = self.reference.features
        if data.shape[1] != features or data.shape[0] == 0:
            return None
        limit = max(1, MAX_CELLS // features)
        if data.shape[0] > limit:  # evenly spaced rows: a bounded slice of a large batch
            data = data[np.linspace(0, data.shape[0] - 1, limit).astype(np.int64)]
        index = (data[:, :, None] >= self.reference.edges[None, :, :]).sum(axis=2)
        np.minimum(index, self.reference.nedges[None, :], out=index)  # +inf lands in the overflow bin
        flat = (index + self.offsets)[~np.isnan(data)]
        counts = np.bincount(flat, minlength=self.current.size).reshape(self.current.shape)
        return counts, int(data.shape[0])


class VersionDrift:
    """The drift state of one served (model, version): its reference, sampling credit and live counts."""

    def __init__(self, model: str, version: int, reference: ref.Reference, config: MonitorConfig) -> None:
        self.model, self.version = model, version
        self.reference = reference
        self.rate = config.sample_rate
        self.window = config.window_rows
        self.credit = 1.0 - config.sample_rate  # so the first request is sampled
        self.inputs = tuple(_InputState(r) for r in reference.inputs)
        self.rows_current = 0
        self.rows_previous = 0
        self.mismatched = 0  # sampled requests whose inputs did not fit the reference
        self._lock = threading.Lock()

    def sample(self) -> bool:
        """Whether this request is sampled (a deterministic credit, no random numbers)."""
        self.credit += self.rate
        if self.credit < 1.0:
            return False
        self.credit -= 1.0
        return True

    def add(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Bin a sampled request's inputs; inputs that do not fit the reference are counted, not binned."""
        binned = []
        for state in self.inputs:
            array = inputs.get(state.reference.name)
            done = state.binned(np.asarray(array)) if array is not None else None
            if done is None:
                with self._lock:
                    self.mismatched += 1
                return
            binned.append(done)
        rows = max(n for _, n in binned)
        with self._lock:
            for state, (counts, _) in zip(self.inputs, binned, strict=True):
                state.current += counts
            self.rows_current += rows
            if self.rows_current >= self.window:  # rotate: the oldest window is dropped
                for state in self.inputs:
                    state.previous, state.current = state.current, state.previous
                    state.current.fill(0)
                self.rows_previous, self.rows_current = self.rows_current, 0

    def figures(self) -> Figures:
        """PSI per feature over both windows, and the rows they hold."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[Figures, list[np.ndarray]]:
        """The figures and, per input, the live counts of both windows they come from, taken at one moment."""
        with self._lock:
            live = [s.current + s.previous for s in self.inputs]
            samples, mismatched = self.rows_current + self.rows_previous, self.mismatched
        values = np.concatenate(
            [ref.psi(s.reference.counts, counts) for s, counts in zip(self.inputs, live, strict=True)]
        )
        names = tuple(name for s in self.inputs for name in s.reference.feature_names())
        return Figures(self.model, self.version, samples, mismatched, names, values), live

    def nbytes(self) -> int:
        """Bytes held in arrays by this state (reference and both windows): fixed at creation."""
        total = 0
        for s in self.inputs:
            arrays = (s.current, s.previous, s.offsets, s.reference.edges, s.reference.counts, s.reference.nedges)
            total += sum(a.nbytes for a in arrays)
        return total


class DriftMonitor:
    """Drift state of every monitored version; a prometheus_client collector of its figures."""

    def __init__(
        self, config: MonitorConfig, serving: Callable[[str, int], bool] | None = None, *, counts: bool = False
    ) -> None:
        """Monitor with `config`; `serving(model, version)` (optional) says, at each scrape, what still serves;
        `counts`: also export the per-bin counts, for `sealgate monitor` to merge front-end workers."""
        self.config = config
        self.counts = counts
        self._serving = serving
        self._states: dict[Key, VersionDrift | None] = {}
        self._lock = threading.Lock()

    # --- hot path -------------------------------------------------------------------------------
    def observe(self, served: ServedModel, inputs: Mapping[str, np.ndarray]) -> None:
        """Maybe sample one request's decoded inputs for `served`; never raises, never keeps a row."""
        key = (served.name, served.version)
        state = self._states.get(key, _UNSEEN)
        if state is _UNSEEN:
            state = self._attach(served)
        if not isinstance(state, VersionDrift) or not state.sample():
            return
        try:
            state.add(inputs)
        except Exception:  # a monitoring defect must never fail a request
            log.exception("drift monitor: %s v%s: sample dropped", served.name, served.version)

    def _attach(self, served: ServedModel) -> VersionDrift | None:
        """The state of a version seen for the first time: its parsed reference, or None (not monitored)."""
        state: VersionDrift | None = None
        doc = served.provenance.get(ref.KEY)
        if doc is not None:
            try:
                names = [spec.name for spec in served.model.inputs]
                state = VersionDrift(served.name, served.version, ref.parse(doc, names), self.config)
            except InvalidInput as exc:
                log.warning("drift monitor: %s v%s not monitored: %s", served.name, served.version, exc)
        with self._lock:
            if (served.name, served.version) not in self._states:
                while len(self._states) >= MAX_TRACKED:
                    self._states.pop(next(iter(self._states)))
                self._states[(served.name, served.version)] = state
            return self._states[(served.name, served.version)]

    # --- read side ------------------------------------------------------------------------------
    def state(self, model: str, version: int) -> VersionDrift | None:
        """The drift state of a version (None: not seen, or not monitored)."""
        return self._states.get((model, version)) or None

    def figures(self) -> list[Figures]:
        """Figures of every monitored version still serving, by model and version."""
        return [fig for _, fig, _ in self._snapshots()]

    def _snapshots(self) -> list[tuple[VersionDrift, Figures, list[np.ndarray]]]:
        """Each monitored version still serving, with its figures and live counts (VersionDrift.snapshot)."""
        if self._serving is not None:
            with self._lock:
                for key in [k for k in self._states if not self._serving(*k)]:
                    del self._states[key]
        with self._lock:
            states = [s for _, s in sorted(self._states.items(), key=lambda kv: kv[0]) if s is not None]
        return [(s, *s.snapshot()) for s in states]

    def collect(self) -> Iterator[Metric]:
        """The drift gauges (called by the registry at each scrape)."""
        cfg = self.config
        samples = GaugeMetricFamily(
            "sealgate_drift_samples", "Sampled input rows in the drift windows.", labels=("model", "version")
        )
        mismatched = CounterMetricFamily(
            "sealgate_drift_mismatched",
            "Sampled requests whose inputs did not fit the model's reference histograms.",
            labels=("model", "version"),
        )
        per_feature = GaugeMetricFamily(
            "sealgate_drift_psi",
            "Population stability index of one input feature against the release's reference.",
            labels=("model", "version", "feature"),
        )
        worst = GaugeMetricFamily(
            "sealgate_drift_psi_max", "Largest per-feature PSI of a model version.", labels=("model", "version")
        )
        snapshots = self._snapshots()
        for _, fig, _ in snapshots:
            labels = [fig.model, str(fig.version)]
            samples.add_metric(labels, fig.samples)
            mismatched.add_metric(labels, fig.mismatched)
            if fig.samples < cfg.min_samples:
                continue
            for feature, value in zip(fig.features, fig.psi.tolist(), strict=True):
                if np.isfinite(value):
                    per_feature.add_metric([*labels, feature], value)
            if np.isfinite(fig.psi_max):
                worst.add_metric(labels, fig.psi_max)
        yield samples
        yield mismatched
        yield per_feature
        yield worst
        yield GaugeMetricFamily(
            "sealgate_drift_threshold", "PSI above which inputs count as drifted.", cfg.psi_threshold
        )
        yield GaugeMetricFamily(
            "sealgate_drift_min_samples", "Sampled rows a version needs before its PSI is exported.", cfg.min_samples
        )
        if self.counts:
            yield from _count_families(snapshots)


def _count_families(snapshots: list[tuple[VersionDrift, Figures, list[np.ndarray]]]) -> Iterator[Metric]:
    """Per reference bin of each feature: the live windows' count and the reference's (every version's
    real bins, whatever the samples, so that workers below min_samples still add up)."""
    labels = ("model", "version", "feature", "bin")
    live_family = GaugeMetricFamily(
        "sealgate_drift_live_count", "Sampled values per reference bin in the drift windows.", labels=labels
    )
    ref_family = GaugeMetricFamily(
        "sealgate_drift_reference_count", "The release reference's values per bin.", labels=labels
    )
    for state, fig, live in snapshots:
        version = str(fig.version)
        for input_state, counts in zip(state.inputs, live, strict=True):
            reference = input_state.reference
            for j, feature in enumerate(reference.feature_names()):
                bins = int(reference.nedges[j]) + 1
                for b, (seen, expected) in enumerate(
                    zip(counts[j, :bins].tolist(), reference.counts[j, :bins].tolist(), strict=True)
                ):
                    key = [fig.model, version, feature, str(b)]
                    live_family.add_metric(key, seen)
                    ref_family.add_metric(key, expected)
    yield live_family
    yield ref_family


def drift_monitor(
    config: MonitorConfig, manager: Any, registry: CollectorRegistry, *, workers: int = 1
) -> DriftMonitor | None:
    """The gateway's monitor, its gauges registered on `registry`, tracking what `manager` serves; None if off.

    With `workers` > 1 front-end processes it exports the per-bin counts too, for `sealgate monitor` to merge.
    """
    if not config.enabled:
        return None

    def serving(model: str, version: int) -> bool:
        return version in manager.versions(model)

    monitor = DriftMonitor(config, serving, counts=workers > 1)
    registry.register(monitor)
    return monitor
