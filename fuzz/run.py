"""Run the fuzz harnesses: `python -m fuzz.run [--seconds N] [--keep] [--replay] [target ...]`.

Each target runs in its own subprocess under atheris/libFuzzer for N seconds on a temporary copy of
fuzz/corpus/<target> (with --keep, on the corpus itself, so new inputs are kept). The summary gives, per
target: executions, execs/s, coverage (`cov:` edges and `ft:` features of libFuzzer's last status line),
corpus size, peak RSS, the slowest call the harness saw, and any crash with the file reproducing it
(under fuzz/crashes/). `--replay` runs every corpus file once through the harness in plain Python
instead. The exit status is non-zero if any target failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.common import CORPUS_ROOT, FUZZ_ROOT, STATS_ENV, FuzzFailure, corpus_files

TARGETS = (
    *("tensors", "json", "artifact", "jwt", "rest", "xfcc"),
    *("reference", "drift_reference", "worker_reply", "traceparent"),  # this wave's parsers
)
CRASH_DIR = FUZZ_ROOT / "crashes"
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")
_FINAL = re.compile(r"stat::(\w+):\s*(\d+)")


@dataclass
class Result:
    """One target's outcome."""

    target: str
    ok: bool
    seconds: float
    executions: int = 0
    execs_per_s: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    peak_rss_mb: int = 0
    harness: dict[str, object] = field(default_factory=dict)
    failure: str = ""

    def line(self) -> str:
        """One summary line."""
        slow = self.harness.get("slowest_wall_s", "?")
        stalls = self.harness.get("transient_stalls", 0)
        text = (
            f"{self.target:9s} {'ok  ' if self.ok else 'FAIL'} {self.seconds:6.0f} s  execs {self.executions:>10,}"
            f"  {self.execs_per_s:>6,}/s  cov {self.cov:>5}  ft {self.ft:>6}  corpus {self.corpus:>5}"
            f"  rss {self.peak_rss_mb} MB  slowest call {slow} s" + (f" ({stalls} stalls)" if stalls else "")
        )
        return text + (f"\n          {self.failure}" if self.failure else "")


def parse_output(target: str, ok: bool, seconds: float, log: str, harness: dict[str, object]) -> Result:
    """A Result from libFuzzer's output: its last `cov:` status line and its final `stat::` lines."""
    result = Result(target, ok, seconds, harness=harness)
    statuses = _STATUS.findall(log)
    if statuses:
        execs, cov, ft, corp, _ = statuses[-1]
        result.executions, result.cov, result.ft, result.corpus = int(execs), int(cov), int(ft), int(corp)
    final = dict(_FINAL.findall(log))
    result.executions = int(final.get("number_of_executed_units", result.executions))
    result.execs_per_s = int(final.get("average_exec_per_sec", 0))
    result.peak_rss_mb = int(final.get("peak_rss_mb", 0))
    if not ok:
        lines = [ln for ln in log.splitlines() if "FuzzFailure" in ln or "Uncaught" in ln or "ERROR:" in ln]
        crashes = re.findall(r"Test unit written to (\S+)", log)
        result.failure = "; ".join([*lines[-2:], *(f"reproducer: {c}" for c in crashes)]) or log[-400:]
    return result


def fuzz(target: str, seconds: int, keep: bool, workdir: Path, extra: list[str]) -> Result:
    """Fuzz one target in a subprocess for `seconds`."""
    source = CORPUS_ROOT / target
    source.mkdir(parents=True, exist_ok=True)
    corpus = source if keep else workdir / "corpus" / target
    if not keep:
        shutil.copytree(source, corpus)
    CRASH_DIR.mkdir(exist_ok=True)
    stats = workdir / f"{target}.stats.json"
    env = {**os.environ, STATS_ENV: str(stats), "TMPDIR": str(workdir), "PYTHONPATH": str(FUZZ_ROOT.parent)}
    cmd = [
        sys.executable,
        "-m",
        f"fuzz.fuzz_{target}",
        str(corpus),
        f"-max_total_time={seconds}",
        "-timeout=30",
        "-rss_limit_mb=4096",
        "-max_len=65536",
        "-print_final_stats=1",
        f"-artifact_prefix={CRASH_DIR}/{target}-",
        *extra,
    ]
    log_path = workdir / f"{target}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=FUZZ_ROOT.parent).returncode
    harness = json.loads(stats.read_text()) if stats.exists() else {}
    return parse_output(target, rc == 0, time.monotonic() - start, log_path.read_text(errors="replace"), harness)


def replay(target: str) -> Result:
    """Run every corpus file of `target` once through its harness in this process (no atheris)."""
    import importlib

    harness = importlib.import_module(f"fuzz.fuzz_{target}").TestOneInput
    start, failures = time.monotonic(), []
    files = corpus_files(target)
    for path in files:
        try:
            harness(path.read_bytes())
        except FuzzFailure as exc:
            failures.append(f"{path.name}: {exc}")
    result = Result(target, not failures, time.monotonic() - start, len(files), corpus=len(files))
    result.harness = harness.stats.as_dict()
    result.failure = "\n          ".join(failures)
    return result


def main() -> int:
    """Command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "600")))
    parser.add_argument("--keep", action="store_true", help="fuzz in fuzz/corpus itself, keeping new inputs")
    parser.add_argument("--replay", action="store_true", help="replay the corpus in plain Python, no fuzzing")
    parser.add_argument("--libfuzzer", action="append", default=[], help="an extra libFuzzer flag (repeatable)")
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}")
    results = []
    with tempfile.TemporaryDirectory(prefix="sealgate-fuzz-") as tmp:
        for target in args.targets or TARGETS:
            if args.replay:
                result = replay(target)
            else:
                result = fuzz(target, args.seconds, args.keep, Path(tmp), args.libfuzzer)
            print(result.line(), flush=True)
            results.append(result)
    failed = [r.target for r in results if not r.ok]
    print(
        f"{len(results) - len(failed)}/{len(results)} targets without failure"
        + (f"; FAILED: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
