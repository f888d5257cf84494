"""Peer benchmark: sealgate against NVIDIA Triton (2.51, through `nvidia-pytriton`), in one run, with one client.

Both servers serve the same 64-256-256-1 MLP (the same ONNX bytes, built as bench/serve_bench.py builds it) over
mutual TLS, and the same `tritonclient.grpc.aio` closed loop drives them, interleaved, at each concurrency:
requests/s, p50, p99, the server's CPU time per request (its whole process tree, from /proc) and the client's
(its own process: with client and server on the same cores, what one costs the other); medians over repeats.
Prints a markdown table and writes JSON.

- sealgate: mTLS + JWT + audit, sealed model (as serve_bench.py starts it), in the variants asked for:
  `gw` (in-process), `batch` (`[batching] enabled`), `iso` (`[backend] isolation = "process"`), `iso-batch`;
  the isolated ones with `--worker-slots` (default 1: one call at a time, as Triton's one model instance).
- Triton: PyTriton's bundled tritonserver 2.51 has only the Python backend (no ONNX Runtime backend), so the model
  runs in a PyTriton Python callable calling ONNX Runtime (same session options as sealgate's), with Triton's
  dynamic batcher (same max batch size and queue delay as sealgate's `[batching]`) and its gRPC front end with
  `--grpc-use-ssl-mutual` and the sealgate bench's certificates. Its plain HTTP port (PyTriton's own readiness
  checks) and gRPC listen on 127.0.0.1 only; metrics are off.

Triton runs from a separate virtual environment (`make bench-triton` creates .venv-triton); this script runs in
the project's .venv and starts it with LD_LIBRARY_PATH at that interpreter's lib folder (the Python backend stub
otherwise links the system libpython and fails).

    python bench/triton_peer.py [--triton-python .venv-triton/bin/python] [--seconds 5] [--repeats 3]
        [--concurrency 1 64] [--variants gw batch iso iso-batch] [--intra-op-threads 1]
        [--max-batch-size 64] [--max-queue-delay-us 500 [5000 ...]] [--worker-slots 1] [--json build/triton_peer.json]

`python bench/triton_peer.py serve-triton ...` is the Triton side (run by the benchmark, in .venv-triton).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mlp"
VARIANTS = {  # name -> (label, TOML appended to the bench config)
    "gw": ("sealgate", ""),
    "batch": ("sealgate + batching", "batching"),
    "iso": ("sealgate, isolated", "isolation"),
    "iso-batch": ("sealgate, isolated + batching", "isolation batching"),
}


def serve_triton(argv: list[str]) -> None:
    """Serve the ONNX model through PyTriton with dynamic batching and mutual TLS on gRPC (runs in .venv-triton)."""
    import onnxruntime as ort
    from pytriton.decorators import batch  # type: ignore[import-not-found]  # only in .venv-triton
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # type: ignore[import-not-found]
    from pytriton.triton import Triton, TritonConfig  # type: ignore[import-not-found]

    ap = argparse.ArgumentParser(prog="triton_peer.py serve-triton")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--certs", type=Path, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-queue-delay-us", type=int, default=500)
    args = ap.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.intra_op_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model.read_bytes(), options, providers=["CPUExecutionProvider"])

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {"output": session.run(["output"], {"input": inputs["input"]})[0]}

    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        allow_metrics=False,
        grpc_use_ssl=True,
        grpc_use_ssl_mutual=True,
        grpc_server_cert=args.certs / "server.pem",
        grpc_server_key=args.certs / "server.key",
        grpc_root_cert=args.certs / "ca.pem",
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(64,))],
            outputs=[Tensor(name="output", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.serve()


async def check_same_outputs(ports: dict[str, int], certs: Path, headers: dict[str, str]) -> float:
    """Send the same 8 rows to every server; the largest absolute difference from the first server's outputs."""
    import tritonclient.grpc.aio as aioclient

    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    outs = []
    for port in ports.values():
        client = aioclient.InferenceServerClient(
            f"127.0.0.1:{port}",
            ssl=True,
            root_certificates=str(certs / "ca.pem"),
            private_key=str(certs / "client.key"),
            certificate_chain=str(certs / "client.pem"),
        )
        rows = []
        for row in x:
            inp = aioclient.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(row[None, :])
            rows.append((await client.infer(MODEL, [inp], headers=headers)).as_numpy("output"))
        await client.close()
        outs.append(np.concatenate(rows))
    return max(float(np.abs(o - outs[0]).max()) for o in outs)


def gateway_toml(
    base: str, key: str, ports: tuple[int, int], defaults: tuple[int, int], args: Any, delay_us: int
) -> str:
    """The bench config with its own ports and audit file, and the sections this variant (`key`: NAME or
    NAME@DELAY) turns on."""
    name = key.split("@")[0]
    text = (
        base.replace(f"127.0.0.1:{defaults[0]}", f"127.0.0.1:{ports[0]}")
        .replace(f"127.0.0.1:{defaults[1]}", f"127.0.0.1:{ports[1]}")
        .replace('path = "audit.log"', f'path = "audit-{key.replace("@", "-")}.log"')
    )
    features = VARIANTS[name][1].split()
    text += f"\n[backend]\nintra_op_threads = {args.intra_op_threads}\n"
    text += f'isolation = "{"process" if "isolation" in features else "none"}"\n'
    if "isolation" in features:
        text += f"worker_slots = {args.worker_slots}\n"
    if "batching" in features:
        text += (
            f"\n[batching]\nenabled = true\nmax_batch_size = {args.max_batch_size}\nmax_queue_delay_us = {delay_us}\n"
        )
    return text


def best_triton(at: dict[str, Any]) -> dict[str, float] | None:
    """Triton's best figures at one concurrency over the queue delays run: the highest req/s, the lowest p50."""
    runs = [m for key, m in at.items() if key.startswith("triton")]
    if not runs:
        return None
    return {"rps": max(m["rps"] for m in runs), "p50_ms": min(m["p50_ms"] for m in runs)}


def markdown(results: dict[str, Any], labels: dict[str, str], concurrency: list[int]) -> str:
    """One row per server and concurrency, and each sealgate variant's ratios to Triton (its best over the
    queue delays run: the highest req/s, the lowest p50)."""
    lines = [
        "| server | conc | req/s | p50 ms | p99 ms | CPU/req µs | client CPU/req µs | req/s vs Triton "
        "| p50 vs Triton |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concurrency:
        tri = best_triton(results[str(c)])
        for key, m in results[str(c)].items():
            ratio = (
                f"{m['rps'] / tri['rps']:.2f}× | {m['p50_ms'] / tri['p50_ms']:.2f}×"
                if tri and not key.startswith("triton")
                else "— | —"
            )
            lines.append(
                f"| {labels[key]} | {c} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                f"{m['cpu_us']:,.0f} | {m['client_cpu_us']:,.0f} | {ratio} |"
            )
    return "\n".join(lines)


def verdict(results: dict[str, Any], labels: dict[str, str], concurrency: list[int]) -> list[str]:
    """The issue's targets: sealgate >= Triton's throughput at the highest concurrency, <= its p50 at the lowest."""
    lo, hi = str(min(concurrency)), str(max(concurrency))
    out: list[str] = []
    low, high = best_triton(results[lo]), best_triton(results[hi])
    if low is None or high is None or lo == hi:
        return out
    for key in results[lo]:
        if key.startswith("triton"):
            continue
        rps_ok = results[hi][key]["rps"] >= high["rps"]
        p50_ok = results[lo][key]["p50_ms"] <= low["p50_ms"]
        out.append(
            f"- {labels[key]}: throughput at c={hi} {'>=' if rps_ok else '<'} Triton's best "
            f"({'met' if rps_ok else 'missed'}); p50 at c={lo} {'<=' if p50_ok else '>'} Triton's best "
            f"({'met' if p50_ok else 'missed'})"
        )
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server we started: SIGINT/SIGTERM to its own process group (Triton's children too), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group (tritonserver, stubs, workers)
    except ProcessLookupError:
        pass
    proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triton-python", type=Path, default=ROOT / ".venv-triton" / "bin" / "python")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--no-triton", action="store_true", help="sealgate variants only (Triton not installed)")
    ap.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime intra-op threads, every server")
    ap.add_argument("--max-batch-size", type=int, default=64, help="dynamic batching, sealgate and Triton")
    ap.add_argument(
        "--max-queue-delay-us",
        type=int,
        nargs="+",
        default=[500],
        help="dynamic batching, sealgate and Triton; several: each batching server once per delay, in one run",
    )
    ap.add_argument(
        "--worker-slots",
        type=int,
        default=1,
        help="[backend] worker_slots of the isolated variants (1: one call at a time, as Triton's one model instance)",
    )
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "triton_peer.json")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary folder (certs, configs, logs)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from serve_bench import load, wait_port

    from gateway.server.ports import free_loopback_port
    from tests import harness
    from tests.models import make_onnx_mlp

    work = Path(tempfile.mkdtemp(prefix="sealgate-triton-peer-"))
    defaults = (free_loopback_port(), free_loopback_port())
    env = harness.make_env(work, *defaults)
    files = make_onnx_mlp(64, (256, 256), 1, seed=0)
    (work / "model.onnx").write_bytes(files["model.onnx"])  # the same bytes for Triton
    harness.seal_model(env, MODEL, 1, files)
    headers = {"authorization": "Bearer " + harness.token(env, f"infer:{MODEL}", ttl=3600)}
    base = (work / "sealgate.toml").read_text()
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    delays = list(dict.fromkeys(args.max_queue_delay_us))
    labels: dict[str, str] = {}
    keys: list[tuple[str, int]] = []  # (server key, its queue delay): a batching variant once per delay
    for name in args.variants:
        batched = "batching" in VARIANTS[name][1]
        for delay in delays if batched else delays[:1]:
            key = f"{name}@{delay}" if batched and len(delays) > 1 else name
            keys.append((key, delay))
            labels[key] = VARIANTS[name][0] + (f" ({delay} µs)" if batched and len(delays) > 1 else "")
    logs = []
    try:
        for key, delay in keys:
            ports = (free_loopback_port(), free_loopback_port())
            toml = work / f"{key}.toml"
            toml.write_text(gateway_toml(base, key, ports, defaults, args, delay))
            log = (work / f"{key}.log").open("wb")
            logs.append(log)
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(toml)],
                cwd=work,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            servers[key] = (ports[0], proc)
        triton_version = ""
        if not args.no_triton:
            tpy = str(args.triton_python)
            libdir = subprocess.check_output(
                [tpy, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"], text=True
            ).strip()
            triton_version = subprocess.check_output(
                [tpy, "-c", "import importlib.metadata as m; print(m.version('nvidia-pytriton'))"], text=True
            ).strip()
            tenv = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            tenv["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
            for delay in delays:
                key = f"triton@{delay}" if len(delays) > 1 else "triton"
                grpc_port, http_port = free_loopback_port(), free_loopback_port()
                log = (work / f"{key}.log").open("wb")
                logs.append(log)
                proc = subprocess.Popen(
                    [
                        *(tpy, str(Path(__file__).resolve()), "serve-triton", "--model", str(work / "model.onnx")),
                        *("--certs", str(env.certs), "--grpc-port", str(grpc_port), "--http-port", str(http_port)),
                        *("--intra-op-threads", str(args.intra_op_threads)),
                        *("--max-batch-size", str(args.max_batch_size), "--max-queue-delay-us", str(delay)),
                    ],
                    cwd=work,
                    env=tenv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                servers[key] = (grpc_port, proc)
                labels[key] = f"Triton 2.51 (PyTriton {triton_version})" + (f" ({delay} µs)" if len(delays) > 1 else "")
        started = time.perf_counter()
        for name, (port, proc) in servers.items():
            try:
                wait_port(port, proc, timeout=120.0)
            except (RuntimeError, TimeoutError) as exc:
                tail = (work / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name}: {exc}\n{tail}") from None
        for key in [k for k in servers if k.startswith("triton")]:  # PyTriton opens the port before the model
            deadline = time.time() + 120  # is bound: wait until it answers
            while True:
                try:
                    asyncio.run(check_same_outputs({key: servers[key][0]}, env.certs, headers))
                    break
                except Exception:
                    if time.time() > deadline or servers[key][1].poll() is not None:
                        tail = (work / f"{key}.log").read_text(errors="replace")[-3000:]
                        raise SystemExit(f"{key}: model never became ready\n{tail}") from None
                    time.sleep(0.5)
        print(f"all servers ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        max_diff = asyncio.run(check_same_outputs({k: v[0] for k, v in servers.items()}, env.certs, headers))
        results: dict[str, Any] = {}
        every_run: dict[str, Any] = {}
        for c in args.concurrency:
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
            for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits every server alike
                for key, (port, proc) in servers.items():
                    runs[key].append(asyncio.run(load(port, env, headers, c, args.seconds, proc.pid)))
            results[str(c)] = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
            every_run[str(c)] = runs
        for name, (_, proc) in servers.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited during the run ({proc.returncode})")
    finally:
        for _, proc in servers.values():
            stop(proc)
        for log in logs:
            log.close()
        if args.keep_work:
            print(f"work folder: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    head = (
        f"64-256-256-1 MLP, batch-1 requests, tritonclient.grpc.aio over mTLS, {args.seconds:g} s per point, "
        f"median of {args.repeats}, interleaved; {os.cpu_count()} cores; ORT intra-op threads "
        f"{args.intra_op_threads}; dynamic batching max {args.max_batch_size} rows / "
        f"{', '.join(map(str, delays))} µs; isolated worker slots {args.worker_slots}; "
        f"largest output difference between servers {max_diff:.2g}"
    )
    table = markdown(results, labels, args.concurrency)
    print(head + "\n\n" + table)
    checks = verdict(results, labels, args.concurrency)
    if checks:
        print("\ntargets (issue 12): sealgate >= Triton's req/s at the highest concurrency, <= its p50 at the lowest")
        print("\n".join(checks))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": "64-256-256-1 MLP (tests.models.make_onnx_mlp, seed 0)",
        "client": "tritonclient.grpc.aio, mTLS, batch 1, closed loop",
        "seconds": args.seconds,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "machine": platform.platform(),
        "intra_op_threads": args.intra_op_threads,
        "batching": {"max_batch_size": args.max_batch_size, "max_queue_delay_us": delays},
        "worker_slots": args.worker_slots,
        "triton": {
            "server": "tritonserver 2.51 bundled in nvidia-pytriton",
            "pytriton": triton_version,
            "backend": "python (PyTriton callable running onnxruntime; the bundle has no onnxruntime backend)",
        }
        if triton_version
        else None,
        "labels": labels,
        "max_output_difference": max_diff,
        "results": results,
        "runs": every_run,
        "targets": checks,
    }
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-triton"]:
        serve_triton(sys.argv[2:])
    else:
        main()
