"""What tracing costs per call: one in-process gateway per setting (mTLS + JWT + audit, a sealed 64-256-256-1
MLP), a stock tritonclient.grpc client sending `traceparent` on every call, sequential calls.

Settings: tracing off (the default), on with every trace recorded (exporter "none": spans are made and
dropped, so the figure is the gateway's own cost, not an exporter's), and on with sample_ratio 0 and an
unsampled caller (spans are non-recording). Rounds alternate the settings to spread a busy machine's noise.

    .venv/bin/python bench/trace_bench.py [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

IN_DIM = 64
SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "off": ({"enabled": False}, "01"),
    "on, sampled": ({"enabled": True, "exporter": "none", "sample_ratio": 1.0}, "01"),
    "on, unsampled": ({"enabled": True, "exporter": "none", "sample_ratio": 0.0}, "00"),
}


def run(env: harness.Env, setting: str, calls: int) -> list[float]:
    """Latencies (µs) of `calls` sequential ModelInfer calls against a fresh gateway with `setting`."""
    tracing, flags = SETTINGS[setting]
    with GatewayThread(env.with_config(tracing=tracing).config) as gw:
        while not gw.manager.versions("mlp"):
            time.sleep(0.05)
        client = harness.triton(env, gw.grpc_port)
        token = harness.token(env, "infer:mlp")
        x = np.random.default_rng(0).standard_normal((1, IN_DIM)).astype(np.float32)
        inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
        inp.set_data_from_numpy(x)
        took = []
        for i in range(calls + 100):
            headers = {
                "authorization": "Bearer " + token,
                "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}",
            }
            began = time.perf_counter()
            client.infer("mlp", [inp], headers=headers)
            if i >= 100:  # the first calls warm the channel and caches
                took.append((time.perf_counter() - began) * 1e6)
        client.close()
        return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = harness.make_env(Path(tmp))
        harness.seal_model(env, "mlp", 1, make_onnx_mlp(IN_DIM, (256, 256), 1, seed=0))
        results: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name in SETTINGS:
                results[name] += run(env, name, args.calls)
    base = statistics.median(results["off"])
    print(f"{'tracing':>14} | {'calls':>6} {'p50 µs':>8} {'p99 µs':>8} {'vs off':>7}")
    for name, took in results.items():
        took.sort()
        p50, p99 = statistics.median(took), took[int(0.99 * (len(took) - 1))]
        print(f"{name:>14} | {len(took):>6} {p50:>8.0f} {p99:>8.0f} {p50 / base:>6.2f}x")


if __name__ == "__main__":
    main()
