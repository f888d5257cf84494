"""Latency per explanation on the digits MLP through the gateway: KernelSHAP at a few nsamples, and occlusion.

Usage: `python bench/explain_bench.py [--calls 20] [--nsamples 64,256,1024] [--json out.json]`
(or `sealgate bench explain -- ...`). The model is the demo's: DigitsMLP (64-64-10) trained on 300 public
rows of scikit-learn digits, exported to ONNX, sealed with 50 of those public rows as reference.npz. A
gateway (mTLS + JWT, audit on) runs in this process on loopback; each call is one gRPC Explain of one
held-out digit (the highest-scoring class), timed at the client. Also reported: the model rows each
explanation ran ("evaluations": KernelSHAP about nsamples x 50 background rows, occlusion 64 + 3), and
the same explanation computed in-process by the Explainer alone (its plan and compute called directly:
no TLS, token, gRPC or thread hand-off). Medians and p90 over `--calls` calls, after one warm-up each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from gateway.artifact.keys import load_recipient, load_signer  # noqa: E402
from gateway.artifact.sealed import seal_to_file  # noqa: E402
from gateway.auth import pki  # noqa: E402
from gateway.auth.tokens import mint_token  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.explain.engine import Query  # noqa: E402
from gateway.protos.sealgate.v1 import explain_pb2 as pb  # noqa: E402
from gateway.protos.sealgate.v1 import explain_pb2_grpc as pb_grpc  # noqa: E402
from gateway.release import reference  # noqa: E402
from gateway.server.app import GatewayThread  # noqa: E402

MODEL = "digits"
PUBLIC_ROWS = 300


def digits_model() -> tuple[bytes, np.ndarray, np.ndarray]:
    """The demo's baseline: (ONNX bytes, public rows, held-out rows)."""
    import torch

    from fl.data import heldout_data, public_data
    from fl.tasks import DigitsMLP, export_onnx, train_centralized

    x_pub, y_pub = public_data("digits", 0, PUBLIC_ROWS)
    x_te, _ = heldout_data("digits", 0)
    torch.manual_seed(0)
    model = train_centralized(DigitsMLP(), x_pub, y_pub, epochs=30, lr=0.05, batch_size=32, seed=0)
    return export_onnx(model.state_dict(), DigitsMLP, None, 64), x_pub, x_te


def world(work: Path, onnx: bytes, public: np.ndarray) -> Path:
    """Dev PKI, the sealed model with its reference, and a config on free loopback ports."""
    certs = work / "certs"
    pki.write_dev_pki(certs)
    pki.write_signing_keys(certs)
    pki.write_recipient_keys(certs)
    pki.write_jwt_issuer(certs)
    files, record = reference.pack({"model.onnx": onnx}, reference.sample(public), source="public digits split")
    seal_to_file(
        files,
        work / "models" / MODEL / "1.sealed",
        name=MODEL,
        version=1,
        signer=load_signer(certs / "signing.key"),
        recipients=[load_recipient(certs / "gateway.pub")],
        provenance={"reference": record},
    )
    toml = work / "sealgate.toml"
    toml.write_text(
        '[server]\ngrpc_address = "127.0.0.1:0"\nrest_address = "127.0.0.1:0"\nmetrics_address = ""\n'
        '[repository]\npath = "models"\n[audit]\npath = "audit.log"\n'
        "[explain]\nmax_per_minute = 1000000\nmax_nsamples = 4096\nmax_concurrent = 4\n"
    )
    return toml


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
    }


def measure(gw: Any, stub: Any, metadata: Any, heldout: np.ndarray, method: str, nsamples: int, calls: int) -> dict:
    """Time `calls` explanations (after one warm-up) over gRPC and in-process; one row of the table."""
    served = gw.manager.get(MODEL)
    times: list[float] = []
    local: list[float] = []
    for i in range(calls + 1):
        x = heldout[i % len(heldout)]
        instance = pb.Instance(values=x.tolist())
        request = pb.ExplainRequest(model_name=MODEL, instances=[instance], method=method, nsamples=nsamples)
        started = time.perf_counter()
        answer = stub.Explain(request, metadata=metadata, timeout=120)
        took = time.perf_counter() - started
        started = time.perf_counter()
        gw.explainer.compute(gw.explainer.plan(served, Query([x.tolist()], method, nsamples)))
        if i:  # the first call warms up (and imports shap)
            times.append(took)
            local.append(time.perf_counter() - started)
    e = answer.explanations[0]
    return {
        "method": method,
        "nsamples": nsamples or None,
        "evaluations": answer.evaluations,
        "local_accuracy_error": abs(e.base_value + sum(e.values) - e.output),
        **_stats(times),
        "in_process_median_ms": statistics.median(local) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20, help="timed calls per setting")
    ap.add_argument("--nsamples", default="64,256,1024", help="KernelSHAP nsamples to measure, comma-separated")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    onnx, public, heldout = digits_model()
    settings: list[tuple[str, int]] = [("kernel_shap", int(n)) for n in args.nsamples.split(",") if n]
    settings.append(("occlusion", 0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sealgate-explain-bench-") as tmp:
        work = Path(tmp)
        config = load_config(world(work, onnx, public))
        certs = work / "certs"
        token = mint_token(certs / "jwt-issuer.key", certs / "jwks.json", "bench", [f"explain:{MODEL}"], ttl=3600)
        metadata = (("authorization", f"Bearer {token}"),)
        pem = [(certs / name).read_bytes() for name in ("ca.pem", "client.key", "client.pem")]
        with GatewayThread(config) as gw:
            while not [s for s in gw.manager.status() if s.state.name == "SERVING"]:
                time.sleep(0.1)
            with grpc.secure_channel(f"127.0.0.1:{gw.grpc_port}", grpc.ssl_channel_credentials(*pem)) as ch:
                stub = pb_grpc.ExplainStub(ch)
                for method, nsamples in settings:
                    rows.append(measure(gw, stub, metadata, heldout, method, nsamples, args.calls))
                    print(json.dumps(rows[-1]), flush=True)
    print()
    print("| method | nsamples | model rows per explanation | median (gRPC) | p90 (gRPC) | median in-process |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['nsamples'] or '-'} | {r['evaluations']:,} | {r['median_ms']:.1f} ms "
            f"| {r['p90_ms']:.1f} ms | {r['in_process_median_ms']:.1f} ms |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
