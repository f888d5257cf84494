"""Fuzzing (issue 10): replay the checked-in corpus of every harness, and fuzz each harness briefly.

The corpus (fuzz/corpus/<target>/) holds valid inputs and every reproduction of issue 10 that reaches
these parsers (seed-findingNN-*), plus what the fuzzer itself found (seed-fuzz-*): a replay fails on
any unhandled exception, a 5xx for client input, an allocation above the bound, or a slow call. The
brief fuzz runs each harness under atheris/libFuzzer in a subprocess, as `make fuzz` does for longer.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.common import FuzzFailure, corpus_files
from fuzz.run import TARGETS

ROOT = Path(__file__).resolve().parents[2]
BRIEF_FUZZ_S = 2


def _corpus() -> list[tuple[str, Path]]:
    return [(target, path) for target in TARGETS for path in corpus_files(target)]


def test_every_target_has_a_corpus_with_its_findings() -> None:
    """Each harness ships seeds, valid ones and the reproductions of issue 10's findings for its parser."""
    for target in TARGETS:
        names = {p.name for p in corpus_files(target)}
        assert any(n.startswith("seed-valid") for n in names), target
        assert any(n.startswith("seed-finding") for n in names), target


@pytest.mark.parametrize(("target", "path"), _corpus(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_corpus_replays_without_failure(target: str, path: Path) -> None:
    """One corpus file through its harness in plain Python: no unhandled error, no bound broken."""
    harness = importlib.import_module(f"fuzz.fuzz_{target}").TestOneInput
    try:
        harness(path.read_bytes())
    except FuzzFailure as exc:
        pytest.fail(f"{path.name}: {exc}")


def test_the_harness_catches_what_it_must() -> None:
    """The guard itself: an unexpected exception, an allocation over the bound and a 5xx refusal all fail."""
    from fuzz.common import Bounds, Harness
    from gateway.errors import ConfigError, InvalidInput

    def raise_key_error(data: bytes) -> None:
        raise KeyError(data)

    def allocate(data: bytes) -> None:
        bytearray(64 << 20)

    def server_fault(data: bytes) -> None:
        raise ConfigError("a client's input should never map to 500")

    def refuse(data: bytes) -> None:
        raise InvalidInput("bad input")

    bounds = Bounds(max_alloc_bytes=16 << 20)
    for target in (raise_key_error, allocate, server_fault):
        with pytest.raises(FuzzFailure):
            Harness("probe", target, (InvalidInput, ConfigError), bounds)(b"x")
    probe = Harness("probe", refuse, (InvalidInput,), bounds)
    probe(b"x")
    assert probe.stats.refused == {"InvalidInput": 1}
    bytearray(64 << 20)  # the bound is lifted after the call


@pytest.mark.parametrize("target", TARGETS)
def test_brief_fuzz(target: str, tmp_path: Path) -> None:
    """Fuzz one harness for a few seconds under atheris, on a copy of its corpus: libFuzzer reports no crash."""
    pytest.importorskip("atheris")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--seconds", str(BRIEF_FUZZ_S), target],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{target} " in proc.stdout and " ok " in proc.stdout, proc.stdout
