"""`sealgate monitor MODEL`: read the drift gauges from the gateway's metrics listener and judge them.

The listener is plain HTTP (`[server] metrics_address`, loopback by default); this reads one scrape, keeps the
`sealgate_drift_*` samples of one model, and reports per version: sampled rows, the top-k features by PSI,
the max PSI and a verdict: DRIFT (max PSI above the threshold), OK, or WAITING (fewer sampled rows than
the gateway's `[monitor] min_samples`, so no PSI yet).

With `[server] workers = N` each front-end worker has its own listener (metrics port + i) and its own share
of the traffic: given every worker's URL (repeated, or one URL and `workers`), this sums the workers' sampled
rows and per-bin live counts (`sealgate_drift_live_count`, exported only by several workers) and computes PSI
from the sums, exactly as one process would over the same inputs.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.errors import InvalidInput, NotFound, Unavailable, clip
from gateway.monitor.reference import MAX_BINS
from gateway.monitor.reference import psi as psi_of

TIMEOUT_S = 10.0
MAX_BYTES = 64 << 20  # one scrape; a larger answer is not a sealgate metrics listener
DRIFT, OK, WAITING = "DRIFT", "OK", "WAITING"
MAX_WORKERS = 64  # as [server] workers
Counts = dict[int, dict[str, dict[int, list[float]]]]  # version -> feature -> bin -> [live, reference]


def worker_urls(urls: Sequence[str], workers: int = 1) -> list[str]:
    """The metrics URL of each front-end worker: `urls` as given, or one URL's port + 0 .. workers - 1."""
    if not 1 <= workers <= MAX_WORKERS or not 1 <= len(urls) <= MAX_WORKERS:
        raise InvalidInput(f"--workers and the --metrics-url count must be within 1..{MAX_WORKERS}")
    if workers == 1:
        return list(urls)
    if len(urls) != 1:
        raise InvalidInput("--workers N takes one --metrics-url (worker 0's); or repeat --metrics-url per worker")
    parts = urllib.parse.urlsplit(urls[0])
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or port + workers - 1 > 65535 or parts.hostname is None:
        raise InvalidInput(f"--workers needs a --metrics-url with an explicit port, not {clip(urls[0], 200)!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return [urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{port + i}")) for i in range(workers)]


def scrape(url: str, timeout: float = TIMEOUT_S) -> str:
    """The exposition text at `url` (http:// only); Unavailable when it cannot be read."""
    if not url.startswith("http://"):
        raise InvalidInput(f"--metrics-url {clip(url, 200)!r} must be an http:// URL of the metrics listener")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (http:// checked above)
            body: bytes = answer.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise Unavailable(f"metrics at {clip(url, 200)} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unavailable(f"cannot read metrics at {clip(url, 200)}: {clip(reason, 200)}") from None
    if len(body) > MAX_BYTES:
        raise Unavailable(f"metrics at {clip(url, 200)} exceed {MAX_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


def report(text: str, model: str, *, top: int = 10, threshold: float | None = None) -> dict[str, Any]:
    """The drift report of `model` from exposition `text`; NotFound when the gateway monitors no version of it.

    `threshold` overrides the gateway's `sealgate_drift_threshold`.
    """
    versions, settings, _ = _read(text, model)
    return _judge(versions, settings, model, top, threshold)


def merged_report(
    texts: Sequence[str], model: str, *, top: int = 10, threshold: float | None = None, where: Sequence[str] = ()
) -> dict[str, Any]:
    """The drift report of `model` over several front-end workers' scrapes (`where` names each, for errors).

    Sampled rows, mismatches and per-bin live counts are summed; PSI is computed from the sums once they hold
    the gateway's `min_samples` rows. One scrape: `report`, unchanged. InvalidInput when a worker monitors a
    version but exports no counts (a gateway started with one worker) or the workers' references differ.
    """
    if len(texts) == 1:
        return report(texts[0], model, top=top, threshold=threshold)
    versions: dict[int, dict[str, Any]] = {}
    settings: dict[str, float] = {}
    counts: Counts = {}
    for index, text in enumerate(texts):
        name = clip(where[index], 200) if index < len(where) else f"scrape {index}"
        own, own_settings, own_counts = _read(text, model)
        settings.update(own_settings)
        for version, item in own.items():
            if version not in own_counts:
                raise InvalidInput(
                    f"{name} exports no drift counts for {clip(model, 64)!r} v{version}: only a gateway with "
                    "[server] workers > 1 does; read a single process with one --metrics-url"
                )
            total = versions.setdefault(version, _entry(version))
            total["samples"] += item["samples"]
            total["mismatched"] += item["mismatched"]
            for feature, bins in own_counts[version].items():
                into = counts.setdefault(version, {}).setdefault(feature, {})
                for b, (live, expected) in bins.items():
                    cell = into.setdefault(b, [0.0, expected])
                    if cell[1] != expected:
                        raise InvalidInput(f"{name}: the workers' references of v{version} differ ({feature})")
                    cell[0] += live
    min_samples = settings.get("sealgate_drift_min_samples", 0)
    for version, item in versions.items():
        if item["samples"] >= min_samples and version in counts:
            item["features"], item["psi_max"] = _psi(counts[version])
    return _judge(versions, settings, model, top, threshold)


def _entry(version: int) -> dict[str, Any]:
    return {"version": version, "samples": 0, "mismatched": 0, "psi_max": None, "features": []}


def _psi(features: dict[str, dict[int, list[float]]]) -> tuple[list[dict[str, Any]], float | None]:
    """PSI per feature from merged counts, computed per input on arrays padded as the gateway pads them (so
    the figures are the gateway's to the last bit), and the largest finite one."""
    by_input: dict[str, dict[int, dict[int, list[float]]]] = {}
    for feature, bins in features.items():
        name, _, index = feature[:-1].rpartition("[")
        if not feature.endswith("]") or not index.isdigit():
            continue
        by_input.setdefault(name, {})[int(index)] = bins
    found: list[dict[str, Any]] = []
    for name, columns in by_input.items():
        order = sorted(columns)
        width = 1 + max(max(bins) for bins in columns.values())
        live, expected = np.zeros((len(order), width)), np.zeros((len(order), width))
        for row, j in enumerate(order):
            for b, (seen, ref_count) in columns[j].items():
                live[row, b], expected[row, b] = seen, ref_count
        for j, value in zip(order, psi_of(expected, live).tolist(), strict=True):
            if math.isfinite(value):
                found.append({"feature": f"{name}[{j}]", "psi": value})
    return found, max((f["psi"] for f in found), default=None)


def _read(text: str, model: str) -> tuple[dict[int, dict[str, Any]], dict[str, float], Counts]:
    """One scrape's drift samples of `model`: per version its figures, the settings, and per-bin counts."""
    from prometheus_client.parser import text_string_to_metric_families

    versions: dict[int, dict[str, Any]] = {}
    settings: dict[str, float] = {}
    counts: Counts = {}

    def entry(labels: dict[str, str]) -> dict[str, Any] | None:
        if labels.get("model") != model or not labels.get("version", "").isdigit():
            return None
        version = int(labels["version"])
        return versions.setdefault(version, _entry(version))

    for family in text_string_to_metric_families(text):
        if not family.name.startswith("sealgate_drift"):
            continue
        for sample in family.samples:
            if sample.name in ("sealgate_drift_threshold", "sealgate_drift_min_samples"):
                settings[sample.name] = sample.value
                continue
            item = entry(sample.labels)
            if item is None:
                continue
            if sample.name == "sealgate_drift_samples":
                item["samples"] = int(sample.value)
            elif sample.name == "sealgate_drift_mismatched_total":
                item["mismatched"] = int(sample.value)
            elif sample.name == "sealgate_drift_psi_max":
                item["psi_max"] = sample.value
            elif sample.name == "sealgate_drift_psi" and "feature" in sample.labels:
                item["features"].append({"feature": sample.labels["feature"], "psi": sample.value})
            elif sample.name in _COUNTS and "feature" in sample.labels and _bin(sample.labels) is not None:
                bins = counts.setdefault(item["version"], {}).setdefault(sample.labels["feature"], {})
                bins.setdefault(int(sample.labels["bin"]), [0.0, 0.0])[_COUNTS[sample.name]] = sample.value
    return versions, settings, counts


_COUNTS = {"sealgate_drift_live_count": 0, "sealgate_drift_reference_count": 1}


def _bin(labels: dict[str, str]) -> int | None:
    """A count's bin index, None unless a reference could have it (so a scrape never sizes an array)."""
    text = labels.get("bin", "")
    return int(text) if text.isdigit() and len(text) <= 3 and int(text) <= MAX_BINS + 2 else None


def _judge(
    versions: dict[int, dict[str, Any]], settings: dict[str, float], model: str, top: int, threshold: float | None
) -> dict[str, Any]:
    """The report document: top features and a verdict per version, and the overall verdict."""
    if not versions:
        raise NotFound(
            f"no drift figures for model {clip(model, 64)!r}: it does not serve, its provenance has no "
            "drift_reference, or [monitor] is disabled"
        )
    limit = threshold if threshold is not None else settings.get("sealgate_drift_threshold", 0.2)
    for item in versions.values():
        item["features"] = sorted(item["features"], key=lambda f: (-f["psi"], f["feature"]))[: max(0, top)]
        psi_max = item["psi_max"]
        if psi_max is None or not math.isfinite(psi_max):
            item["verdict"] = WAITING
        else:
            item["verdict"] = DRIFT if psi_max > limit else OK
    rows = [versions[v] for v in sorted(versions)]
    overall = (
        DRIFT if any(r["verdict"] == DRIFT for r in rows) else OK if any(r["verdict"] == OK for r in rows) else WAITING
    )
    return {
        "model": model,
        "threshold": limit,
        "min_samples": int(settings.get("sealgate_drift_min_samples", 0)),
        "verdict": overall,
        "versions": rows,
    }


def render(doc: dict[str, Any], console: Console) -> None:
    """Print a report as a table per version (features by PSI, highest first) and a verdict line."""
    colors = {DRIFT: "bold red", OK: "green", WAITING: "yellow"}
    for item in doc["versions"]:
        name = escape(f"{doc['model']} v{item['version']}")
        table = Table("feature", "PSI", "over threshold", title=name, title_justify="left")
        for feature in item["features"]:
            flag = "drift" if feature["psi"] > doc["threshold"] else ""
            table.add_row(escape(feature["feature"]), f"{feature['psi']:.4f}", flag)
        if item["features"]:
            console.print(table)
        psi_max = item["psi_max"]
        shown = f"{psi_max:.4f}" if psi_max is not None and math.isfinite(psi_max) else "-"
        verdict = item["verdict"]
        console.print(
            f"{name}: {item['samples']} sampled rows (min {doc['min_samples']}), "
            f"max PSI {shown}, threshold {doc['threshold']:g}: [{colors[verdict]}]{verdict}[/]",
            highlight=False,
        )


def show(
    urls: str | Sequence[str],
    model: str,
    *,
    top: int,
    threshold: float | None,
    as_json: bool,
    console: Console,
    workers: int = 1,
) -> None:
    """Scrape each front-end worker's URL, build the (merged) report of `model`, and print it (one JSON object
    with `as_json`)."""
    chosen = worker_urls([urls] if isinstance(urls, str) else urls, workers)
    texts = [scrape(url) for url in chosen]
    doc = merged_report(texts, model, top=top, threshold=threshold, where=chosen)
    if as_json:
        print(json.dumps(doc, ensure_ascii=True, separators=(",", ":")), flush=True)
    else:
        render(doc, console)
