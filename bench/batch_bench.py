"""Dynamic batching and front-end workers on a compute-heavy model: the 64-2048-2048-2048-1 MLP.

Each configuration is a real `sealgate serve` (mTLS + JWT + audit, sealed model) in its own process tree,
run one after the other (never side by side: they would share the cores); the same closed-loop
`tritonclient.grpc.aio` load (batch-1 requests) at each concurrency. Prints requests/s, p50 and p99 per
configuration, the ratio to the unbatched single-worker gateway, and the mean executed batch size during the
point (warm-up included) read from the gateway's own /metrics (sealgate_batch_size).

    python bench/batch_bench.py [--seconds 5] [--concurrency 64] [--repeats 1] [--intra-op-threads 1]
                                [--max-batch-size 64] [--delay-us 2000] [--configs unbatched batched ...]

Configurations: unbatched, batched (dynamic batching), unbatched-w2 and batched-w2 (`[server] workers = 2`).
ONNX Runtime gets `--intra-op-threads` per worker (1 by default, so two workers can use two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_bench import load  # noqa: E402

from gateway.server.ports import free_loopback_port  # noqa: E402
from tests import harness  # noqa: E402
from tests.models import make_onnx_mlp  # noqa: E402

HEAVY = (64, (2048, 2048, 2048), 1)
CONFIGS = {
    "unbatched": (1, False),
    "batched": (1, True),
    "unbatched-w2": (2, False),
    "batched-w2": (2, True),
}


def _toml(base: str, grpc_port: int, rest_port: int, metrics_port: int, workers: int, batched: bool, args: Any) -> str:
    """The bench environment's config with this configuration's ports, workers and batching."""
    text = re.sub(r'grpc_address = "127.0.0.1:\d+"', f'grpc_address = "127.0.0.1:{grpc_port}"', base)
    text = re.sub(r'rest_address = "127.0.0.1:\d+"', f'rest_address = "127.0.0.1:{rest_port}"', text)
    text = text.replace('metrics_address = "127.0.0.1:0"', f'metrics_address = "127.0.0.1:{metrics_port}"')
    text = text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
    text += f'\n[backend]\nintra_op_threads = {args.intra_op_threads}\nisolation = "{args.isolation}"\n'
    if batched:
        text += (
            f'\n[batching]\nenabled = true\nmodels = ["mlp"]\nmax_batch_size = {args.max_batch_size}\n'
            f"max_queue_delay_us = {args.delay_us}\n"
        )
    return text


def _wait_serving(log: Path, proc: subprocess.Popen[bytes], workers: int, timeout: float = 180.0) -> None:
    """Until every worker printed its banner (one gateway: "sealgate serving")."""
    pattern = "sealgate serving" if workers == 1 else "sealgate worker"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if log.exists() and log.read_text().count(pattern) >= workers:
            return
        time.sleep(0.2)
    raise TimeoutError("the gateway did not start")


def _batch_totals(metrics_ports: list[int]) -> tuple[float, float]:
    """Rows and batches executed so far, over every worker's /metrics (sealgate_batch_size sum and count)."""
    total = count = 0.0
    for port in metrics_ports:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for name, value in re.findall(r'sealgate_batch_size_(sum|count)\{model="mlp"\} ([0-9.e+]+)', body):
            if name == "sum":
                total += float(value)
            else:
                count += float(value)
    return total, count


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the supervisor's workers)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--delay-us", type=int, default=2000)
    ap.add_argument(
        "--isolation", choices=("none", "process"), default="none", help="[backend] isolation of every server"
    )
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealgate-batch-bench-"))
    env = harness.make_env(work)
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(*HEAVY, seed=0))
    headers = {"authorization": "Bearer " + harness.token(env, "infer:mlp", ttl=3600)}
    base = (work / "sealgate.toml").read_text()
    print(
        f"64-2048-2048-2048-1 MLP, batch-1 requests, {args.seconds:.0f} s per point, median of {args.repeats}; "
        f"{os.cpu_count()} cores; ORT intra-op threads {args.intra_op_threads} per worker; batching: "
        f"max_batch_size {args.max_batch_size}, max_queue_delay_us {args.delay_us}"
    )
    print(
        f"{'config':>13} {'conc':>4} | {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu/req':>8} {'batch':>6} | "
        f"{'x unbatched':>11}"
    )
    reference: dict[int, float] = {}
    for name in args.configs:
        workers, batched = CONFIGS[name]
        grpc_port, rest_port, metrics_port = free_loopback_port(), free_loopback_port(), free_loopback_port()
        metrics_ports = [metrics_port + i for i in range(workers)]
        toml = work / f"{name}.toml"
        toml.write_text(_toml(base, grpc_port, rest_port, metrics_port, workers, batched, args))
        log = work / f"{name}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(toml)],
                cwd=work,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            _wait_serving(log, proc, workers)
            for c in args.concurrency:
                runs = []
                rows0, batches0 = _batch_totals(metrics_ports)
                for _ in range(args.repeats):
                    cpu0 = _tree_cpu(proc.pid)
                    result = asyncio.run(load(grpc_port, env, headers, c, args.seconds, proc.pid))
                    result["cpu_us"] = (_tree_cpu(proc.pid) - cpu0) / max(1.0, result["rps"] * args.seconds) * 1e6
                    runs.append(result)
                med = {m: statistics.median(r[m] for r in runs) for m in runs[0]}
                if name == "unbatched":
                    reference[c] = med["rps"]
                ratio = med["rps"] / reference[c] if c in reference else float("nan")
                rows1, batches1 = _batch_totals(metrics_ports)
                mean_batch = (rows1 - rows0) / (batches1 - batches0) if batches1 > batches0 else 1.0
                print(
                    f"{name:>13} {c:>4} | {med['rps']:>8.0f} {med['p50_ms']:>8.2f} {med['p99_ms']:>8.2f} "
                    f"{med['cpu_us']:>6.0f}us {mean_batch:>6.1f} | {ratio:>11.2f}",
                    flush=True,
                )
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
