"""Drift across front-end workers (`[server] workers > 1`), without a server: each worker's monitor exports the
per-bin counts PSI comes from, and `sealgate monitor`'s merge of the workers' scrapes gives exactly the figures
one process gives over the same inputs (max PSI, every feature's PSI, samples), even when each worker alone is
below min_samples. A one-worker gateway's exposition is unchanged, and a scrape without counts is refused
from a merge rather than misread."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config import MonitorConfig
from gateway.errors import InvalidInput
from gateway.monitor import reference as ref
from gateway.monitor.live import DriftMonitor
from gateway.monitor.report import WAITING, merged_report, report, worker_urls

CONFIG = MonitorConfig(sample_rate=1.0, min_samples=300)


def _served(provenance: dict[str, Any]) -> Any:
    """What the monitor reads of a ServedModel: a model `m` v3 with inputs `a` (5 wide) and `b` (3 wide)."""
    model = SimpleNamespace(inputs=[SimpleNamespace(name="a"), SimpleNamespace(name="b")])
    return SimpleNamespace(name="m", version=3, provenance=provenance, model=model)


def _text(monitor: DriftMonitor) -> str:
    registry = CollectorRegistry()
    registry.register(monitor)
    return generate_latest(registry).decode()


@pytest.fixture(scope="module")
def world() -> tuple[Any, list[dict[str, np.ndarray]]]:
    """A two-input reference (b has a constant column: a one-value bin) and 40 requests of 1-16 rows,
    shifted a little so PSI is not zero."""
    rng = np.random.default_rng(7)
    train = {"a": rng.normal(0, 1, (2000, 5)), "b": np.c_[rng.uniform(0, 4, (2000, 2)), np.full(2000, 2.0)]}
    served = _served({ref.KEY: ref.build(train, source="unit")})
    requests = []
    for _ in range(40):
        rows = int(rng.integers(1, 17))
        b = np.c_[rng.uniform(0.5, 4.5, (rows, 2)), np.full(rows, 2.0)]
        requests.append({"a": rng.normal(0.3, 1.2, (rows, 5)).astype(np.float32), "b": b.astype(np.float32)})
    return served, requests


def test_merged_workers_equal_one_process_to_the_last_bit(world: tuple[Any, list[dict[str, np.ndarray]]]) -> None:
    """Requests spread over 3 worker monitors: each alone is below min_samples (WAITING, no PSI), the merge
    of their scrapes equals one process's report over all requests exactly."""
    served, requests = world
    single = DriftMonitor(CONFIG)
    workers = [DriftMonitor(CONFIG, counts=True) for _ in range(3)]
    for i, inputs in enumerate(requests):
        single.observe(served, inputs)
        workers[(i * 7) % 3].observe(served, inputs)  # an uneven spread, as the kernel's
    rows = sum(len(r["a"]) for r in requests)
    assert rows >= CONFIG.min_samples
    one = report(_text(single), "m", top=100)
    texts = [_text(w) for w in workers]
    assert all(report(t, "m")["verdict"] == WAITING for t in texts), "each worker sees a share: no PSI alone"
    merged = merged_report(texts, "m", top=100)
    assert one["verdict"] == merged["verdict"] != WAITING
    (a,), (b,) = one["versions"], merged["versions"]
    assert a["samples"] == b["samples"] == rows and a["mismatched"] == b["mismatched"] == 0
    assert a["psi_max"] is not None and a["psi_max"] > 0 and b["psi_max"] == a["psi_max"]
    assert b["features"] == a["features"] and len(a["features"]) == 8  # a[0..4], b[0..2], same order and values


def test_one_worker_exposition_is_unchanged_and_cannot_be_merged(
    world: tuple[Any, list[dict[str, np.ndarray]]],
) -> None:
    """Without counts (one worker) no per-bin series are exported; merging such scrapes is refused with a
    message naming the URL, never computed from partial figures. Counts are bounded by the reference."""
    served, requests = world
    plain, counted = DriftMonitor(CONFIG), DriftMonitor(CONFIG, counts=True)
    for inputs in requests[:5]:
        plain.observe(served, inputs)
        counted.observe(served, inputs)
    text = _text(plain)
    assert "sealgate_drift_live_count" not in text and "sealgate_drift_reference_count" not in text
    with pytest.raises(InvalidInput, match=re.escape("http://127.0.0.1:9/metrics exports no drift counts")):
        merged_report([_text(counted), text], "m", where=["http://127.0.0.1:8/metrics", "http://127.0.0.1:9/metrics"])
    counted_text = _text(counted)
    bins = {line.split(" ")[0] for line in counted_text.splitlines() if line.startswith("sealgate_drift_live_count{")}
    parsed = ref.parse(served.provenance[ref.KEY], ["a", "b"])
    assert len(bins) == sum(int(n) + 1 for r in parsed.inputs for n in r.nedges)  # real bins only, no padding


def test_worker_urls() -> None:
    """--workers N expands worker 0's URL to ports +0..N-1; repeated URLs are taken as given; refusals."""
    assert worker_urls(["http://127.0.0.1:8502/metrics"], 3) == [
        "http://127.0.0.1:8502/metrics",
        "http://127.0.0.1:8503/metrics",
        "http://127.0.0.1:8504/metrics",
    ]
    given = ["http://127.0.0.1:1/metrics", "http://127.0.0.1:7/metrics"]
    assert worker_urls(given) == given
    for urls, workers in ((given, 2), (["http://127.0.0.1/metrics"], 2), (given[:1], 0), (given[:1], 65)):
        with pytest.raises(InvalidInput):
            worker_urls(urls, workers)
