"""Privacy-utility benchmark of federated DP fine-tuning: digits, 10 non-IID clients (Dirichlet α=0.5 over labels),
sample-level (ε, δ=1e-5) per client with DP-SGD (Opacus, RDP), ε in {1, 3, 8, no DP}, same rounds and
hyperparameters, run on Flower's Simulation Engine; prints final held-out accuracy.

Default mode "finetune" is the setting sealgate is for: clients fine-tune the model the gateway already serves.
That model is stood in for by one trained centrally on a small public split (100 rows, 7% of the training
pool, never given to any client); "scratch" starts from random weights instead, as STACK.md's calibration did.

    python bench/fl_privacy_utility.py [--mode finetune|scratch|both] [--rounds 10] [--public 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl.data import heldout_data, public_data  # noqa: E402
from fl.runner import run_federated  # noqa: E402
from fl.tasks import DigitsMLP, evaluate, save_weights, train_centralized  # noqa: E402


def parse_epsilon(text: str) -> float | None:
    """'none' (no DP) or a positive ε."""
    return None if text.lower() in ("none", "inf", "nodp") else float(text)


def pretrain(public: int, seed: int) -> tuple[bytes, float]:
    """The stand-in for the served release: an MLP trained on `public` rows; (safetensors, held-out accuracy)."""
    torch.manual_seed(seed)
    x, y = public_data("digits", seed, public)
    model = train_centralized(DigitsMLP(), x, y, epochs=60, lr=0.05, batch_size=16, seed=seed)
    x_te, y_te = heldout_data("digits", seed)
    return save_weights(model.state_dict()), evaluate(model, x_te, y_te)[1]


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """Run every ε for one mode and return {label: accuracy}, the start model's first."""
    start, public = None, 0
    if mode == "finetune":
        start, start_acc = pretrain(args.public, args.seed)
        public = args.public
        print(
            f"[finetune] start model: trained centrally on {args.public} public rows (no client holds them), "
            f"held-out accuracy {start_acc:.4f}",
            flush=True,
        )
    else:
        print("[scratch] start model: random initialisation", flush=True)
    results: dict[str, float] = {}
    for eps in args.epsilons:
        label = "no DP" if eps is None else f"ε={eps:g}"
        accs = []
        for rep in range(args.repeats):
            t0 = time.time()
            with tempfile.TemporaryDirectory(prefix="fl-bench-") as out:
                res = run_federated(
                    "digits",
                    clients=10,
                    rounds=args.rounds,
                    epsilon=eps,
                    delta=1e-5,
                    alpha=0.5,
                    start_weights=start,
                    out_dir=out,
                    seed=args.seed,
                    public_size=public,
                    lr=args.lr,
                    batch_size=args.batch_size,
                    max_grad_norm=args.clip,
                )
            accs.append(res.rows[-1].accuracy)
            results.setdefault("start model", res.summary.initial_accuracy)
            spent = res.privacy.get("epsilon")
            spent_txt = "-" if spent is None else f"{spent:.3f}"
            print(
                f"[{mode}] {label:>6} run {rep + 1}: accuracy {accs[-1]:.4f}  (ε spent {spent_txt}, "
                f"{len(res.rows)} rounds, client sizes {sorted(res.privacy['client_sizes'])}, {time.time() - t0:.0f}s)",
                flush=True,
            )
        results[label] = statistics.mean(accs)
        if args.repeats > 1:
            print(f"[{mode}] {label:>6}: mean {results[label]:.4f}, min {min(accs):.4f}, max {max(accs):.4f}")
    if "no DP" in results and "ε=3" in results:
        gap = results["no DP"] - results["ε=3"]
        verdict = "within" if gap <= 0.05 else "NOT within"
        print(f"[{mode}] ε=3 is {gap * 100:.1f} points below no DP: {verdict} the 5-point target", flush=True)
    return results


def main() -> None:
    """Parse arguments, run the requested modes, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["finetune", "scratch", "both"], default="finetune")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--public", type=int, default=100, help="public rows for the start model (finetune)")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--clip", type=float, default=1.0, help="per-sample clipping norm")
    parser.add_argument("--seed", type=int, default=0, help="data split and partitions (DP noise is never seeded)")
    parser.add_argument(
        "--epsilons",
        nargs="+",
        type=parse_epsilon,
        default=[1.0, 3.0, 8.0, None],
        help="ε values, 'none' for no DP (default: 1 3 8 none)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; the table shows the mean")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    modes = ["finetune", "scratch"] if args.mode == "both" else [args.mode]
    print(
        f"digits, 10 clients, Dirichlet α=0.5, δ=1e-5, {args.rounds} rounds, batch {args.batch_size}, "
        f"lr {args.lr}, clip {args.clip}, 1 local epoch; DP-SGD (Opacus RDP) on Flower's Simulation Engine",
        flush=True,
    )
    table = {mode: run_mode(mode, args) for mode in modes}
    print(f"\nfinal held-out accuracy (mean of {args.repeats} run(s) each)")
    print("| mode | " + " | ".join(table[modes[0]]) + " |")
    print("|---" * (len(table[modes[0]]) + 1) + "|")
    for mode, row in table.items():
        print(f"| {mode} | " + " | ".join(f"{v * 100:.1f}%" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
