"""Seal and open a large random "model" and compare with raw AES-256-GCM and SHA-256 on the same buffer.

Usage: `python bench/seal_bench.py [--size-mb 256] [--repeats 3] [--rss-sizes 256,512]`.
Throughputs (MB = MiB) are medians and bests over repeats that run the four operations in turn, all in
one process; peak RSS is measured in fresh child processes (one sealing, one opening) as MB above the
child's RSS once everything is imported and the keys are loaded (Linux VmHWM, reset at that point).
Targets (issue 2): open >= 50% of the slower raw primitive; seal peak RSS < 100 MB whatever the size.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from gateway.artifact.keys import load_identity, load_recipient, load_signer, load_trusted  # noqa: E402
from gateway.artifact.sealed import OpenedArtifact, TrustStore, open_artifact, seal_to_file  # noqa: E402
from gateway.auth import pki  # noqa: E402

MODEL_FILE = "model.bin"
OPEN_TARGET = 0.5
SEAL_RSS_TARGET_MB = 100.0


# --- workspace ------------------------------------------------------------------------------------
def make_keys(work: Path) -> None:
    """Signer and recipient key files (the dev ones `sealgate init` writes)."""
    pki.write_signing_keys(work, force=True)
    pki.write_recipient_keys(work, force=True)


def make_model(work: Path, size_mb: int) -> Path:
    """A folder holding one file of `size_mb` random MiB, written in 16 MiB blocks (bounded memory)."""
    folder = work / f"model-{size_mb}"
    folder.mkdir(exist_ok=True)
    with open(folder / MODEL_FILE, "wb") as fh:
        left = size_mb * MIB
        while left:
            block = os.urandom(min(left, 16 * MIB))
            fh.write(block)
            left -= len(block)
    return folder


def seal_once(work: Path, model: Path, out: Path) -> None:
    """Seal `model` to `out` for the gateway key, signed by the dev signing key."""
    seal_to_file(
        model,
        out,
        name="bench",
        version=1,
        signer=load_signer(work / "signing.key"),
        recipients=[load_recipient(work / "gateway.pub")],
    )


def open_once(work: Path, sealed: Path, size: int) -> OpenedArtifact:
    """Open (decrypt, check the envelope signature, unpack, OMS-verify) `sealed` into memory; check its size."""
    opened = open_artifact(
        sealed, [load_identity(work / "gateway.key")], TrustStore.of([load_trusted(work / "signing.pub")])
    )
    if len(opened.files[MODEL_FILE]) != size:
        raise RuntimeError(f"opened model holds {len(opened.files[MODEL_FILE])} bytes, expected {size}")
    return opened


# --- measurements ---------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call of `fn`; its result is freed outside the timed region."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def raw_aes(buf: memoryview) -> None:
    """One-shot AES-256-GCM over each 1 MiB chunk of `buf` (fresh nonce per chunk, as the envelope does)."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    for index, start in enumerate(range(0, len(buf), MIB)):
        aead.encrypt(index.to_bytes(12, "big"), buf[start : start + MIB], None)


def raw_sha(buf: memoryview) -> None:
    """SHA-256 of the whole buffer in one call."""
    hashlib.sha256(buf).digest()


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def child(mode: str, work: Path, model: Path, sealed: Path) -> None:
    """Run one seal or one open in this fresh process; print its peak RSS above the post-import baseline.

    VmHWM is per address space, so unlike ru_maxrss it does not inherit the parent's peak across
    fork+exec; it is reset to the current RSS once everything is imported and the keys are loaded.
    """
    keys = (load_signer(work / "signing.key"), load_identity(work / "gateway.key"))
    gc.collect()
    reset_peak()
    base = _status_mb("VmRSS")
    start = time.perf_counter()
    if mode == "seal":
        seal_once(work, model, sealed)
    else:
        open_once(work, sealed, (model / MODEL_FILE).stat().st_size)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    del keys
    print(json.dumps({"baseline_mb": base, "peak_above_mb": max(0.0, peak - base), "seconds": seconds}))


def peak_in_child(mode: str, work: Path, model: Path, sealed: Path) -> dict[str, float]:
    """Run `child` in a fresh interpreter and return what it measured."""
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(work), "--model", str(model)]
    cmd += ["--sealed", str(sealed)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(work: Path, size_mb: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(median, best) MB/s (MiB of model per second) of raw AES-GCM, raw SHA-256, seal and open.

    The four run in turn within each repeat, so that a burst of load from other processes falls on all
    of them rather than on whichever happened to be measured at the time.
    """
    model = make_model(work, size_mb)
    sealed = work / f"model-{size_mb}.sealed"
    buf = memoryview((model / MODEL_FILE).read_bytes())
    ops: dict[str, Callable[[], object]] = {
        "aes": lambda: raw_aes(buf),
        "sha": lambda: raw_sha(buf),
        "seal": lambda: seal_once(work, model, sealed),
        "open": lambda: open_once(work, sealed, size_mb * MIB),
    }
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            times[name].append(timed(op))
    buf.release()
    return {name: (size_mb / statistics.median(t), size_mb / min(t)) for name, t in times.items()}


def main() -> None:
    """Parse arguments, run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256, help="model size for the throughput runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-sizes", default="256,512", help="model sizes (MB) for the peak-RSS children")
    parser.add_argument("--child", choices=["seal", "open"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sealed", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work, args.model, args.sealed)
        return
    with tempfile.TemporaryDirectory(prefix="sealgate-bench-") as tmp:
        work = Path(tmp)
        make_keys(work)
        speeds = throughput(work, args.size_mb, args.repeats)
        memory = []
        for size in sorted({int(s) for s in args.rss_sizes.split(",") if s}):
            model = work / f"model-{size}"
            if not model.exists():
                make_model(work, size)
            sealed = work / f"rss-{size}.sealed"
            sealing = peak_in_child("seal", work, model, sealed)
            memory.append((size, sealing, peak_in_child("open", work, model, sealed)))
            sealed.unlink()
    report(args, speeds, memory)


def report(
    args: argparse.Namespace, speeds: dict[str, tuple[float, float]], memory: list[tuple[int, dict, dict]]
) -> None:
    """Print the throughput and memory tables and whether the targets are met (on the medians)."""
    median = {name: value[0] for name, value in speeds.items()}
    slower = min(median["aes"], median["sha"])
    print(f"sealgate seal/open: {args.size_mb} MB random model, {args.repeats} repeats, {os.cpu_count()} CPUs")
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f} (other processes on these CPUs slow every row)")
    print(f"{'operation':<34}{'median MB/s':>12}{'vs slower raw':>15}{'best MB/s':>11}")
    rows = [
        ("raw AES-256-GCM (1 MiB chunks)", "aes"),
        ("raw SHA-256 (hashlib)", "sha"),
        ("seal (sign+encrypt to file)", "seal"),
        ("open (decrypt+verify in memory)", "open"),
    ]
    for label, name in rows:
        value, best = speeds[name]
        print(f"{label:<34}{value:>12.0f}{value / slower:>15.0%}{best:>11.0f}")
    print()
    print(f"{'model MB':>8}{'seal peak RSS +MB':>20}{'open peak RSS +MB':>20}{'seal s':>9}{'open s':>9}")
    for size, seal, opened in memory:
        print(
            f"{size:>8}{seal['peak_above_mb']:>20.1f}{opened['peak_above_mb']:>20.1f}"
            f"{seal['seconds']:>9.2f}{opened['seconds']:>9.2f}"
        )
    open_ok = median["open"] >= OPEN_TARGET * slower
    seal_ok = all(seal["peak_above_mb"] < SEAL_RSS_TARGET_MB for _, seal, _ in memory)
    print()
    print(f"open >= {OPEN_TARGET:.0%} of slower raw: {'PASS' if open_ok else 'FAIL'} ({median['open'] / slower:.0%})")
    print(f"seal peak RSS < {SEAL_RSS_TARGET_MB:.0f} MB above baseline at every size: {'PASS' if seal_ok else 'FAIL'}")


if __name__ == "__main__":
    main()
