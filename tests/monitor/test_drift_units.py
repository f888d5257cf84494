"""Drift monitoring without a server: PSI against known distributions, the shared binning rule, the reference
record's checks (it is signed, still untrusted), sampling, the gauges, and memory that stays flat over 100k
sampled observations."""

from __future__ import annotations

import json
import logging
import math
import sys
import tracemalloc
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config import Config, MonitorConfig
from gateway.errors import ConfigError, InvalidInput
from gateway.monitor import reference as ref
from gateway.monitor.live import DriftMonitor, VersionDrift
from gateway.monitor.report import DRIFT, OK, WAITING, report
from gateway.release.drift_reference import onnx_input_names, with_drift_reference
from tests.models import make_onnx_mlp


def _served(name: str, version: int, provenance: dict[str, Any], inputs: tuple[str, ...] = ("input",)) -> Any:
    """What the monitor reads of a ServedModel: name, version, provenance, the model's input names."""
    model = SimpleNamespace(inputs=[SimpleNamespace(name=n) for n in inputs])
    return SimpleNamespace(name=name, version=version, provenance=provenance, model=model)


# --- PSI math ----------------------------------------------------------------------------------------
def test_psi_of_known_proportions() -> None:
    """50/50 against 90/10 is 0.4·ln(1.8) + 0.4·ln(5); identical proportions give 0; counts scale away."""
    expected = 0.4 * math.log(0.9 / 0.5) + 0.4 * math.log(0.5 / 0.1)
    got = ref.psi(np.array([[50, 50], [10, 30]]), np.array([[900, 100], [100, 300]]))
    assert got[0] == pytest.approx(expected, abs=1e-12)
    assert got[1] == pytest.approx(0.0, abs=1e-12)
    swapped = ref.psi(np.array([[900, 100]]), np.array([[50, 50]]))
    assert swapped[0] == pytest.approx(expected, abs=1e-12), "PSI is symmetric"


def test_psi_epsilon_floor_bounds_empty_bins_and_ignores_padding() -> None:
    """An empty live bin is floored at EPSILON (finite PSI); bins empty on both sides add nothing; no live: NaN."""
    eps = ref.EPSILON
    got = ref.psi(np.array([[50, 50, 0, 0]]), np.array([[100, 0, 0, 0]]))[0]
    expected = (1 - 0.5) * math.log(1 / 0.5) + (eps - 0.5) * math.log(eps / 0.5)
    assert got == pytest.approx(expected, rel=1e-9) and math.isfinite(got)
    assert math.isnan(ref.psi(np.array([[5, 5]]), np.array([[0, 0]]))[0])


def test_psi_of_shifted_normals_matches_theory() -> None:
    """Decile bins of N(0,1): a fresh N(0,1) sample stays near 0; N(0.5,1) gives about μ² = 0.25 (the
    continuous J-divergence), a little less once binned; N(0,2) is clearly drifted too."""
    rng = np.random.default_rng(1)
    doc = ref.build({"x": rng.normal(0, 1, 200_000)}, source="synthetic")
    parsed = ref.parse(doc, ["x"])
    counts = np.asarray(parsed.inputs[0].counts)

    def live(sample: np.ndarray) -> float:
        state = VersionDrift("m", 1, parsed, MonitorConfig(sample_rate=1.0))
        for chunk in np.array_split(sample, 200):
            state.add({"x": chunk.reshape(-1, 1)})
        return float(state.figures().psi[0])

    assert ref.psi(counts, counts)[0] == pytest.approx(0.0, abs=1e-12)
    assert live(rng.normal(0, 1, 100_000)) < 0.005
    assert 0.2 < live(rng.normal(0.5, 1, 100_000)) < 0.26
    assert live(rng.normal(0, 2, 100_000)) > 0.3


# --- bins ---------------------------------------------------------------------------------------------
def test_edges_keep_a_bin_for_a_constant_column_and_for_over_and_underflow() -> None:
    """A constant column has bins below, at and above its value; NaN is skipped, ±inf go to the end bins."""
    edges = ref.feature_edges(np.zeros(100))
    assert edges.tolist() == [0.0, np.nextafter(0.0, 1.0)]
    counts = ref.bin_counts(np.array([-1.0, 0.0, 0.0, 2.0, np.nan, np.inf, -np.inf]), edges)
    assert counts.tolist() == [2, 2, 2]


def test_vectorized_live_bins_equal_the_reference_rule() -> None:
    """The monitor's one-shot binning over every feature (padded edges) counts exactly as searchsorted does,
    for features of different widths, with NaN and infinities in the data."""
    rng = np.random.default_rng(2)
    train = np.column_stack([rng.normal(size=500), rng.integers(0, 3, 500), np.zeros(500), rng.exponential(size=500)])
    parsed = ref.parse(json.loads(json.dumps(ref.build({"input": train}, source="t"))), ["input"])
    assert len(set(parsed.inputs[0].nedges.tolist())) > 1, "features of different widths"
    live = rng.normal(size=(64, 4)) * 3
    live[0, 0], live[1, 1], live[2, 2], live[3, 3] = np.nan, np.inf, -np.inf, 1e30
    state = VersionDrift("m", 1, parsed, MonitorConfig(sample_rate=1.0))
    state.add({"input": live.astype(np.float32)})
    inp = parsed.inputs[0]
    for j in range(4):
        edges = inp.edges[j, : inp.nedges[j]]
        expected = ref.bin_counts(live[:, j].astype(np.float32).astype(np.float64), edges)
        assert state.inputs[0].current[j, : len(expected)].tolist() == expected.tolist()
        assert state.inputs[0].current[j, len(expected) :].sum() == 0


# --- the record --------------------------------------------------------------------------------------
def test_reference_record_holds_aggregates_only() -> None:
    """The provenance record has edges and counts per feature, its source and row count, and no row values."""
    x = np.arange(60, dtype=np.float32).reshape(20, 3) + 0.123
    doc = ref.build({"input": x}, source="public split", bins=4)
    assert doc["rows"] == 20 and doc["source"] == "public split" and doc["format"] == ref.FORMAT
    features = doc["inputs"][0]
    assert len(features["edges"]) == 3 and all(sum(c) == 20 for c in features["counts"])
    assert all(len(e) <= 4 + 2 for e in features["edges"])
    text = json.dumps(doc)
    interior = [float(v) for v in x[1:-1, 0] if float(v) not in features["edges"][0]]
    assert all(repr(v) not in text for v in interior), "no row value beyond the quantile edges"


def test_release_helper_names_the_onnx_input_and_keeps_a_given_record() -> None:
    """with_drift_reference finds the ONNX model's input and records it; an existing record is left alone."""
    onnx_bytes = make_onnx_mlp(8, (4,), 2)["model.onnx"]
    assert onnx_input_names(onnx_bytes) == ["input"]
    x = np.random.default_rng(3).normal(size=(50, 8))
    prov = with_drift_reference({"metrics": {"accuracy": 0.9}}, x, onnx_bytes, source="eval")
    assert prov["metrics"] == {"accuracy": 0.9} and prov[ref.KEY]["inputs"][0]["name"] == "input"
    assert with_drift_reference({ref.KEY: {"kept": 1}}, x, onnx_bytes, source="eval")[ref.KEY] == {"kept": 1}


def _doc() -> dict[str, Any]:
    return ref.build({"input": np.random.default_rng(4).normal(size=(100, 3))}, source="t")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.update(format=2), "format"),
        (lambda d: d["inputs"][0].update(name="other"), r"not a \(distinct\) input"),
        (lambda d: d["inputs"].append(dict(d["inputs"][0])), r"not a \(distinct\) input"),
        (lambda d: d["inputs"][0]["edges"][1].reverse(), "increase strictly"),
        (lambda d: d["inputs"][0]["edges"][0].__setitem__(0, float("nan")), "finite"),
        (lambda d: d["inputs"][0]["counts"][2].__setitem__(0, -1), "non-negative"),
        (lambda d: d["inputs"][0]["counts"][2].__setitem__(0, True), "non-negative"),
        (lambda d: d["inputs"][0]["counts"][0].append(1), "one more count"),
        (lambda d: d["inputs"][0].update(edges=[[0.0]] * 2000, counts=[[1, 1]] * 2000), "features"),
        (lambda d: d["inputs"][0]["edges"].__setitem__(0, list(range(100))), "edges"),
    ],
)
def test_a_bad_reference_is_refused(change: Any, words: str) -> None:
    """A malformed, oversized or mislabelled record is refused with InvalidInput naming the defect."""
    doc = _doc()
    change(doc)
    with pytest.raises(InvalidInput, match=words):
        ref.parse(doc, ["input"])


def test_build_refuses_names_that_cannot_label_a_metric_and_too_many_features() -> None:
    """Reference input names become labels: unusual characters are refused; so is data wider than the cap."""
    with pytest.raises(InvalidInput, match="cannot label"):
        ref.build({'in"put': np.zeros((3, 2))}, source="t")
    with pytest.raises(InvalidInput, match="features"):
        ref.build({"input": np.zeros((3, ref.MAX_FEATURES + 1))}, source="t")


def test_config_section_is_validated() -> None:
    """[monitor] values that cannot work are refused with the section named."""
    assert Config().monitor.psi_threshold == 0.2 and Config().monitor.enabled
    for bad in ({"sample_rate": 0.0}, {"sample_rate": 1.5}, {"psi_threshold": 0.0}, {"min_samples": 0}):
        with pytest.raises(ConfigError, match=r"\[monitor\]"):
            Config().replaced(monitor=bad)


# --- the monitor --------------------------------------------------------------------------------------
def test_sampling_is_one_in_n_and_only_models_with_a_reference_are_watched() -> None:
    """Rate 0.25 bins exactly 25 of 100 requests (the first included); a model without a reference, or with
    inputs that do not fit it, adds nothing but a mismatch count."""
    monitor = DriftMonitor(MonitorConfig(sample_rate=0.25, min_samples=1))
    served = _served("m", 1, {ref.KEY: _doc()})
    for _ in range(100):
        monitor.observe(served, {"input": np.ones((1, 3), dtype=np.float32)})
    state = monitor.state("m", 1)
    assert state is not None and state.figures().samples == 25
    plain = _served("plain", 1, {})
    monitor.observe(plain, {"input": np.ones((1, 3), dtype=np.float32)})
    assert monitor.state("plain", 1) is None
    for _ in range(4):
        monitor.observe(served, {"input": np.ones((1, 5), dtype=np.float32)})  # wrong width
    assert state.figures().samples == 25 and state.mismatched == 1


def test_an_invalid_reference_is_logged_and_not_monitored(caplog: pytest.LogCaptureFixture) -> None:
    """A reference naming an input the model does not have is never used; requests still pass untouched."""
    monitor = DriftMonitor(MonitorConfig(sample_rate=1.0))
    served = _served("m", 1, {ref.KEY: _doc()}, inputs=("pixels",))
    with caplog.at_level(logging.WARNING, logger="sealgate.monitor"):
        monitor.observe(served, {"pixels": np.ones((1, 3))})
    assert monitor.state("m", 1) is None and "not monitored" in caplog.text
    assert monitor.figures() == []


def test_gauges_wait_for_min_samples_and_label_only_reference_features() -> None:
    """Below min_samples only the sample count is exported; then PSI per feature and the max, labelled with the
    reference's own features; versions that stopped serving are dropped at the next scrape."""
    serving = {("m", 1)}
    monitor = DriftMonitor(MonitorConfig(sample_rate=1.0, min_samples=50), lambda m, v: (m, v) in serving)
    registry = CollectorRegistry()
    registry.register(monitor)
    served = _served("m", 1, {ref.KEY: _doc()})
    monitor.observe(served, {"input": np.zeros((10, 3))})
    text = generate_latest(registry).decode()
    assert 'sealgate_drift_samples{model="m",version="1"} 10.0' in text
    assert "sealgate_drift_psi{" not in text and "sealgate_drift_psi_max{" not in text
    monitor.observe(served, {"input": np.random.default_rng(5).normal(size=(60, 3)) + 5})
    text = generate_latest(registry).decode()
    features = {line.split('feature="')[1].split('"')[0] for line in text.splitlines() if "sealgate_drift_psi{" in line}
    assert features == {"input[0]", "input[1]", "input[2]"}
    doc = report(text, "m", top=2)
    assert doc["verdict"] == DRIFT and doc["threshold"] == 0.2 and doc["min_samples"] == 50
    assert len(doc["versions"][0]["features"]) == 2 and doc["versions"][0]["samples"] == 70
    serving.clear()
    assert "sealgate_drift_samples{" not in generate_latest(registry).decode()
    assert monitor.state("m", 1) is None


def test_report_verdicts() -> None:
    """WAITING before min_samples, OK under the threshold, DRIFT above; --threshold overrides the gateway's."""
    monitor = DriftMonitor(MonitorConfig(sample_rate=1.0, min_samples=100))
    registry = CollectorRegistry()
    registry.register(monitor)
    rng = np.random.default_rng(6)
    doc = ref.build({"input": rng.normal(size=(5000, 2))}, source="t")
    served = _served("m", 1, {ref.KEY: doc})
    monitor.observe(served, {"input": rng.normal(size=(50, 2))})
    assert report(generate_latest(registry).decode(), "m")["verdict"] == WAITING
    monitor.observe(served, {"input": rng.normal(size=(4000, 2))})
    monitor.observe(served, {"input": rng.normal(size=(4000, 2))})
    text = generate_latest(registry).decode()
    assert report(text, "m")["verdict"] == OK
    assert report(text, "m", threshold=1e-9)["verdict"] == DRIFT
    with pytest.raises(Exception, match="no drift figures"):
        report(text, "other")


def test_memory_stays_flat_over_100k_sampled_observations() -> None:
    """100k sampled single-row observations (windows rotating every 30k) leave the monitor's arrays the same
    size, Python's allocated blocks where they were after the first 10k, and the heap traced over 25k of them
    (across a rotation) within a few KiB: only counts are kept."""
    rng = np.random.default_rng(7)
    doc = ref.build({"input": rng.random((5000, 64))}, source="t")
    monitor = DriftMonitor(MonitorConfig(sample_rate=1.0, window_rows=30_000))
    served = _served("digits", 1, {ref.KEY: doc})
    rows = rng.random((2048, 64)).astype(np.float32)
    singles = [rows[i : i + 1] for i in range(2048)]

    def feed(start: int, count: int) -> None:
        for i in range(start, start + count):
            monitor.observe(served, {"input": singles[i % 2048]})

    feed(0, 10_000)
    state = monitor.state("digits", 1)
    assert state is not None
    size, blocks = state.nbytes(), sys.getallocatedblocks()
    tracemalloc.start()  # traced over part of the run only: tracing every allocation is slow
    try:
        before = tracemalloc.take_snapshot()
        feed(10_000, 25_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    feed(35_000, 65_000)
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 16 * 1024, f"traced heap grew {grown} bytes over 25k observations"
    assert sys.getallocatedblocks() - blocks < 500, "allocated blocks grew over 90k observations"
    assert state.nbytes() == size < 64 * 1024
    figures = state.figures()
    assert 30_000 <= figures.samples <= 60_000, "two windows at most"
    assert figures.psi_max < 0.1, "the same distribution as the reference"
