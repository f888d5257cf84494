"""Optimization table for the README: magnitude pruning (with and without masked fine-tuning), structured pruning
and int8 on the digits model (64-64-10), plus a wider 64-512-512-10 model where batch-1 latency is not all overhead.

Usage: `python bench/optimize.py [--seeds 0,1,2] [--json out.json]`.
Each seed re-splits the data and retrains; accuracies are means over seeds on the held-out 20% (360 rows: one row is
0.28 points), "worst Δ" the worst seed's difference to its own dense model. Sizes are bytes of the ONNX file and its
zlib (level 9) size; latency is the median batch-1 call of onnxruntime (1 thread, CPU), dense and candidate measured
interleaved in this process, given as dense / candidate (higher = faster). Fine-tuning: SGD with momentum 0.9 on the
training split, masks re-applied after every step. Targets (issue 6): 80% global sparsity after fine-tuning within 1
point of dense; half the hidden units >= 2x lower latency within 1 point; int8 >= 3.5x smaller within 0.5 point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from fl.tasks import DigitsMLP, export_onnx, load_digits_split, train_centralized  # noqa: E402
from gateway.release import runtime  # noqa: E402
from gateway.release.onnx_mlp import read_mlp, write_mlp  # noqa: E402
from gateway.release.optimize import OptimizeOptions, compressed_size, optimize  # noqa: E402


class WideMLP(nn.Module):
    """64-512-512-10: wide enough that the matrix products, not the per-call overhead, set the latency."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.net(x)


Row = dict[str, object]


def _accuracy(model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(runtime.predict(runtime.session(model), x).argmax(1) == y) * 100)


def _dense(model_cls: Callable[[], nn.Module], seed: int, split: tuple[np.ndarray, ...], epochs: int) -> bytes:
    torch.manual_seed(seed)
    x_tr, y_tr, _, _ = split
    model = train_centralized(model_cls(), x_tr, y_tr, epochs=epochs, lr=0.05, batch_size=32, seed=seed)
    return write_mlp(read_mlp(export_onnx(model.state_dict(), model_cls, None, 64)))  # clean graph, like optimize's


def _variants(
    sparsities: list[float], ft: dict[str, float]
) -> dict[str, Callable[[np.ndarray, np.ndarray], OptimizeOptions]]:
    def make(**kw: object) -> Callable[[np.ndarray, np.ndarray], OptimizeOptions]:
        tune = bool(kw.pop("tune", False))
        return lambda x, y: OptimizeOptions(
            finetune_data=(x, y) if tune else None,
            finetune_epochs=int(ft["epochs"]),
            finetune_lr=float(ft["lr"]),
            **kw,  # type: ignore[arg-type]
        )

    out = {}
    for s in sparsities:
        out[f"{int(s * 100)}% global sparsity"] = make(sparsity=s)
        out[f"{int(s * 100)}% global sparsity + fine-tune"] = make(sparsity=s, tune=True)
    out["half hidden units"] = make(structured=0.5)
    out["half hidden units + fine-tune"] = make(structured=0.5, tune=True)
    out["int8 dynamic"] = make(quantize="dynamic")
    out["int8 static (QDQ)"] = make(quantize="static")
    return out


def run_model(
    name: str, model_cls: Callable[[], nn.Module], seeds: list[int], args: argparse.Namespace, sparsities: list[float]
) -> list[Row]:
    """Every variant of one model over all seeds: accuracy, sizes, latency ratio."""
    results: dict[str, list[dict[str, float]]] = {}
    dense_rows: list[dict[str, float]] = []
    ft = {"epochs": args.ft_epochs, "lr": args.ft_lr}
    for seed in seeds:
        split = load_digits_split(seed)
        x_tr, y_tr, x_te, y_te = split
        dense = _dense(model_cls, seed, split, args.epochs)
        dense_acc = _accuracy(dense, x_te, y_te)
        dense_rows.append({"acc": dense_acc, "size": len(dense), "zsize": compressed_size(dense), "lat": 1.0})
        built = {}
        for label, options in _variants(sparsities, ft).items():
            opts = options(x_tr, y_tr)
            if opts.quantize == "static":
                opts = OptimizeOptions(quantize="static", calibration=x_tr[:512])
            built[label] = optimize(dense, opts).onnx
        latency_of = {k: v for k, v in built.items() if "sparsity" not in k}  # unstructured zeros: dense speed
        p50 = runtime.p50_latencies({"dense": dense, **latency_of}, x_te[0], calls=args.calls, rounds=20)
        for label, model in built.items():
            acc = _accuracy(model, x_te, y_te)
            row = {
                "acc": acc,
                "delta": acc - dense_acc,
                "size": len(model),
                "zsize": compressed_size(model),
                "size_ratio": len(dense) / len(model),
                "zsize_ratio": compressed_size(dense) / compressed_size(model),
            }
            if label in p50:
                row["lat"] = p50["dense"] / p50[label]
                row["p50_us"] = p50[label]
            results.setdefault(label, []).append(row)
        dense_rows[-1]["p50_us"] = p50["dense"]
    rows: list[Row] = [_summarize(name, "dense", dense_rows)]
    rows += [_summarize(name, label, values) for label, values in results.items()]
    return rows


def _summarize(model: str, label: str, values: list[dict[str, float]]) -> Row:
    def mean(key: str) -> float | None:
        present = [v[key] for v in values if key in v]
        return statistics.fmean(present) if present else None

    worst = min((v["delta"] for v in values if "delta" in v), default=None)
    return {
        "model": model,
        "variant": label,
        "accuracy": mean("acc"),
        "worst_delta": worst,
        "size": mean("size"),
        "zsize": mean("zsize"),
        "size_ratio": mean("size_ratio"),
        "zsize_ratio": mean("zsize_ratio"),
        "speedup": mean("lat"),
        "p50_us": mean("p50_us"),
        "per_seed": values,
    }


def _fmt(value: object, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown(rows: list[Row]) -> str:
    """The README table."""
    lines = [
        "| model | variant | accuracy | worst Δ (points) | size (B) | zlib size (B) | smaller (file / zlib) "
        "| p50 (µs) | speed-up vs dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        smaller = "-" if r["size_ratio"] is None else f"{r['size_ratio']:.2f}x / {r['zsize_ratio']:.2f}x"
        lines.append(
            f"| {r['model']} | {r['variant']} | {_fmt(r['accuracy'], '.2f', '%')} | "
            f"{_fmt(r['worst_delta'], '+.2f')} | {_fmt(r['size'], '.0f')} | {_fmt(r['zsize'], '.0f')} | "
            f"{smaller} | {_fmt(r['p50_us'], '.1f')} | {_fmt(r['speedup'], '.2f', 'x')} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run both models over the seeds, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (split + training)")
    parser.add_argument("--epochs", type=int, default=30, help="dense training epochs")
    parser.add_argument("--ft-epochs", type=int, default=20, help="fine-tuning epochs after pruning")
    parser.add_argument("--ft-lr", type=float, default=0.01, help="fine-tuning learning rate")
    parser.add_argument("--calls", type=int, default=20000, help="timed batch-1 calls per model for p50")
    parser.add_argument("--no-wide", action="store_true", help="skip the 64-512-512-10 model")
    parser.add_argument("--json", type=Path, help="write every figure (and per-seed values) here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    rows = run_model("digits 64-64-10", DigitsMLP, seeds, args, [0.5, 0.8, 0.9])
    if not args.no_wide:
        rows += run_model("wide 64-512-512-10", WideMLP, seeds, args, [0.8])
    print(markdown(rows))
    print(
        f"\nseeds {seeds}, {time.perf_counter() - start:.0f} s; command: python bench/optimize.py "
        f"--seeds {args.seeds} --epochs {args.epochs} --ft-epochs {args.ft_epochs} --ft-lr {args.ft_lr}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
