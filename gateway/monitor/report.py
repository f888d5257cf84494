"""`sealgate monitor MODEL`: read the drift gauges from the gateway's metrics listener and judge them.

The listener is plain HTTP (`[server] metrics_address`, loopback by default); this reads one scrape, keeps the
`sealgate_drift_*` samples of one model, and reports per version: sampled rows, the top-k features by PSI,
the max PSI and a verdict: DRIFT (max PSI above the threshold), OK, or WAITING (fewer sampled rows than
the gateway's `[monitor] min_samples`, so no PSI yet).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.errors import InvalidInput, NotFound, Unavailable, clip

TIMEOUT_S = 10.0
MAX_BYTES = 64 << 20  # one scrape; a larger answer is not a sealgate metrics listener
DRIFT, OK, WAITING = "DRIFT", "OK", "WAITING"


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
    from prometheus_client.parser import text_string_to_metric_families

    versions: dict[int, dict[str, Any]] = {}
    settings: dict[str, float] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any] | None:
        if labels.get("model") != model or not labels.get("version", "").isdigit():
            return None
        version = int(labels["version"])
        return versions.setdefault(
            version, {"version": version, "samples": 0, "mismatched": 0, "psi_max": None, "features": []}
        )

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


def show(url: str, model: str, *, top: int, threshold: float | None, as_json: bool, console: Console) -> None:
    """Scrape `url`, build the report of `model`, and print it (one JSON object with `as_json`)."""
    doc = report(scrape(url), model, top=top, threshold=threshold)
    if as_json:
        print(json.dumps(doc, ensure_ascii=True, separators=(",", ":")), flush=True)
    else:
        render(doc, console)
