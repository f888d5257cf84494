"""Serving benchmark: the gateway (mTLS + JWT + metrics + audit, sealed model) against a bare grpc.aio
V2 server with the same mTLS calling ONNX Runtime inline, in the same run, same model (64-256-256-1 MLP).

Closed-loop load from `tritonclient.grpc.aio` at several concurrencies; prints requests/s, p50 and p99
for each server, its process's CPU time per request (all threads, from /proc), and the ratios. Each
server runs in its own process; the load generator in this one.

    python bench/serve_bench.py [--seconds 5] [--concurrency 1 16 64] [--repeats 3] [--intra-op-threads 0]
                                [--baseline-ref GIT_REF [--baseline-loop asyncio|uvloop]]
                                [--event-loop auto|uvloop|asyncio] [--isolated [--spin-us US ...]]

With `--isolated`, another server runs in the same run: the gateway with `[backend] isolation = "process"`
(the model in a sandboxed worker process), and an "isolated / in-process" table gives the cost of isolation
(CPU per request then counts the gateway and its workers). `--spin-us 0 1000` runs one isolated gateway per
`[backend] worker_spin_us` value instead, in the same run (what the worker's bounded spin buys and costs).

With `--baseline-ref`, a third server runs in the same run: the gateway as it was at that commit (checked out
into a temporary git worktree), so a change's cost is a ratio measured on the same machine at the same time
("after / before" columns). It runs on asyncio's loop, as it shipped; `--baseline-loop uvloop` runs it on
uvloop (installed as the loop policy before its CLI starts), and `--event-loop asyncio` runs this tree's
gateways on asyncio's loop: the same-loop ratios separate what a change costs from what the loop gives back.

Both servers get the same ONNX Runtime session options. With ORT's default (a spinning intra-op pool) that
pool takes a core of its own; with `--intra-op-threads 1` both servers run about twice as fast on 2 cores and
the gateway's per-call work weighs more. The README reports both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.server.ports import free_loopback_port  # noqa: E402
from tests import harness  # noqa: E402
from tests.models import make_onnx_mlp  # noqa: E402


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


def cpu_seconds(root: int) -> float:
    """User + system CPU time of a process and all its live descendants, all threads (Linux /proc; NaN elsewhere):
    a gateway and its isolated model workers, or Triton's tree (PyTriton -> tritonserver -> Python backend stub)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    if root not in cpu:
        return float("nan")
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += seconds
    return total


async def load(
    port: int, env: harness.Env, headers: dict[str, str], concurrency: int, seconds: float, pid: int
) -> dict[str, float]:
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(
        f"127.0.0.1:{port}",
        ssl=True,
        root_certificates=str(env.certs / "ca.pem"),
        private_key=str(env.certs / "client.key"),
        certificate_chain=str(env.certs / "client.pem"),
    )
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    inp = aioclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(50):
        await client.infer("mlp", [inp], headers=headers)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await client.infer("mlp", [inp], headers=headers)
            latencies.append(time.perf_counter() - t0)

    cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    own = time.process_time() - own0
    await client.close()
    lat = np.array(latencies)
    return {
        "rps": len(lat) / elapsed,
        "cpu_us": cpu / len(lat) * 1e6,
        "client_cpu_us": own / len(lat) * 1e6,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads for both servers (0: ORT's default, as `sealgate serve` uses)",
    )
    ap.add_argument(
        "--baseline-ref",
        default="",
        help="also run the gateway of this git commit (a temporary worktree) and report after/before ratios",
    )
    ap.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="[server] event_loop of this tree's gateways (auto: uvloop when installed, as `sealgate serve` does)",
    )
    ap.add_argument(
        "--baseline-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the loop the --baseline-ref gateway runs on (asyncio: as it shipped; uvloop: installed as the "
        "policy before its CLI starts, to compare the two trees on the same loop)",
    )
    ap.add_argument(
        "--isolated",
        action="store_true",
        help='also run the gateway with [backend] isolation = "process" and report isolated/in-process ratios',
    )
    ap.add_argument(
        "--spin-us",
        type=float,
        nargs="+",
        default=[],
        help="with --isolated: one isolated gateway per [backend] worker_spin_us value (default: the config's)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealgate-bench-"))
    gw_port, rest_port, bare_port = free_loopback_port(), free_loopback_port(), free_loopback_port()
    env = harness.make_env(work, gw_port, rest_port)
    files = make_onnx_mlp(64, (256, 256), 1, seed=0)
    (work / "model.onnx").write_bytes(files["model.onnx"])
    harness.seal_model(env, "mlp", 1, files)
    with (work / "sealgate.toml").open("a") as fh:  # both servers get the same session options
        fh.write(f'\n[backend]\nintra_op_threads = {args.intra_op_threads}\nisolation = "none"\n')  # in-process
    toml = (work / "sealgate.toml").read_text()
    (work / "sealgate.toml").write_text(toml.replace("[server]\n", f'[server]\nevent_loop = "{args.event_loop}"\n', 1))
    headers = {"authorization": "Bearer " + harness.token(env, "infer:mlp", ttl=3600)}
    py = sys.executable
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    gw = subprocess.Popen(
        [py, "-m", "gateway.cli", "serve", "--config", str(work / "sealgate.toml")],
        cwd=work,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bare = subprocess.Popen(
        [
            py,
            str(ROOT / "bench" / "bare_server.py"),
            "--port",
            str(bare_port),
            "--certs",
            str(env.certs),
            "--model",
            str(work / "model.onnx"),
            "--intra-op-threads",
            str(args.intra_op_threads),
        ],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers = {"bare": (bare_port, bare), "gw": (gw_port, gw)}
    for spin in (args.spin_us or [None]) if args.isolated else []:
        key = "iso" if spin is None else f"iso spin {spin:g}us"
        iso_port, iso_rest = free_loopback_port(), free_loopback_port()
        iso_toml = work / f"isolated-{len(servers)}.toml"
        iso_toml.write_text(
            (work / "sealgate.toml")
            .read_text()
            .replace(f"127.0.0.1:{gw_port}", f"127.0.0.1:{iso_port}")
            .replace(f"127.0.0.1:{rest_port}", f"127.0.0.1:{iso_rest}")
            .replace('path = "audit.log"', f'path = "isolated-{len(servers)}-audit.log"')
            .replace('isolation = "none"\n', 'isolation = "process"\n')
            + ("" if spin is None else f"worker_spin_us = {spin}\n")
        )
        iso = subprocess.Popen(
            [py, "-m", "gateway.cli", "serve", "--config", str(iso_toml)],
            cwd=work,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        servers[key] = (iso_port, iso)
    baseline_tree: Path | None = None
    if args.baseline_ref:
        baseline_tree = work / "baseline-tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline_ref],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        old_port, old_rest = free_loopback_port(), free_loopback_port()
        old_toml = work / "baseline.toml"
        known = (baseline_tree / "gateway" / "config.py").read_text()
        text = (
            (work / "sealgate.toml")
            .read_text()
            .replace(f"127.0.0.1:{gw_port}", f"127.0.0.1:{old_port}")
            .replace(f"127.0.0.1:{rest_port}", f"127.0.0.1:{old_rest}")
            .replace('path = "audit.log"', 'path = "baseline-audit.log"')
        )
        newer = ('metrics_address = "127.0.0.1:0"\n', 'isolation = "none"\n', f'event_loop = "{args.event_loop}"\n')
        for line in newer:
            if line.split(" =")[0] not in known:  # a key that tree does not know yet (it refuses unknown keys)
                text = text.replace(line, "")
        old_toml.write_text(text)
        uv = "import runpy, uvloop; uvloop.install(); runpy.run_module('gateway.cli', run_name='__main__')"
        cli = ["-c", uv] if args.baseline_loop == "uvloop" else ["-m", "gateway.cli"]
        old = subprocess.Popen(
            [py, *cli, "serve", "--config", str(old_toml)],
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(baseline_tree)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        servers["before"] = (old_port, old)
    try:
        for port, proc in servers.values():
            wait_port(port, proc)
        time.sleep(1.0)
        print(
            f"64-256-256-1 MLP, batch 1, {args.seconds:.0f} s per point, median of {args.repeats}; "
            f"{os.cpu_count()} cores; ORT intra-op threads {args.intra_op_threads or 'default'}"
        )
        print(
            f"{'conc':>4} | {'bare rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu/req':>8} | {'gateway rps':>11} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'cpu/req':>8} | {'rps ratio':>9} {'p50 ratio':>9}"
        )
        befores: list[str] = []
        isolated: list[str] = []
        for c in args.concurrency:
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
            for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits every server alike
                for key, (port, proc) in servers.items():
                    runs[key].append(asyncio.run(load(port, env, headers, c, args.seconds, proc.pid)))
            med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
            b, g = med["bare"], med["gw"]
            print(
                f"{c:>4} | {b['rps']:>9.0f} {b['p50_ms']:>7.2f} {b['p99_ms']:>7.2f} {b['cpu_us']:>6.0f}us | "
                f"{g['rps']:>11.0f} {g['p50_ms']:>7.2f} {g['p99_ms']:>7.2f} {g['cpu_us']:>6.0f}us | "
                f"{g['rps'] / b['rps']:>9.2f} {g['p50_ms'] / b['p50_ms']:>9.2f}"
            )
            for key in (k for k in med if k.startswith("iso")):
                i = med[key]
                isolated.append(
                    f"{c:>4} | {i['rps']:>12.0f} {i['p50_ms']:>7.2f} {i['p99_ms']:>7.2f} {i['cpu_us']:>6.0f}us | "
                    f"{i['rps'] / g['rps']:>18.3f} {i['p50_ms'] / g['p50_ms']:>18.3f}"
                    + ("" if key == "iso" else f"  ({key[4:]})")
                )
            if "before" in med:
                o = med["before"]
                befores.append(
                    f"{c:>4} | {o['rps']:>11.0f} {o['p50_ms']:>7.2f} {o['cpu_us']:>6.0f}us | "
                    f"{g['rps'] / o['rps']:>16.3f} {g['p50_ms'] / o['p50_ms']:>16.3f}"
                )
        if isolated:
            print('\nisolation = "process" against the in-process gateway above (same run, interleaved):')
            head = f"{'conc':>4} | {'isolated rps':>12} {'p50 ms':>7} {'p99 ms':>7} {'cpu/req':>8} |"
            print(f"{head} {'rps isolated/in-p':>18} {'p50 isolated/in-p':>18}")
            print("\n".join(isolated))
        if befores:
            print(
                f"\nthis tree ({args.event_loop} loop) against the gateway at {args.baseline_ref} "
                f"({args.baseline_loop} loop; same run, interleaved):"
            )
            head = f"{'conc':>4} | {'before rps':>11} {'p50 ms':>7} {'cpu/req':>8} |"
            print(f"{head} {'rps after/before':>16} {'p50 after/before':>16}")
            print("\n".join(befores))
    finally:
        for _, p in servers.values():
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if baseline_tree is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )


if __name__ == "__main__":
    main()
