"""What every fuzz harness shares: the bounds a call must stay within, and the guard that enforces them.

A harness is a plain `TestOneInput(data: bytes) -> None`. `Harness` wraps a target so that a call fails
(raises `FuzzFailure`) on any exception outside the target's allowed classes, on an allowed error that
would reach a client as a server fault (5xx / INTERNAL) or with an overlong message, on an allocation
above the memory bound (enforced with RLIMIT_DATA, so the allocation fails instead of happening), and on
a call slower than the time bounds. The same wrapper runs under atheris (coverage-guided, `fuzz.run`)
and in plain Python (the corpus replay in tests/security/test_fuzz_corpus.py).

This module imports nothing from `gateway`: harnesses import their targets inside `instrumented()`,
which must come before any gateway module is loaded for coverage to reach it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FUZZ_ROOT = Path(__file__).resolve().parent
CORPUS_ROOT = FUZZ_ROOT / "corpus"
STATS_ENV = "SEALGATE_FUZZ_STATS"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _env_float(name: str, default: float) -> float:
    """A float bound from the environment (the runner and `make fuzz` pass them), else the default."""
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class Bounds:
    """Per-call limits. CPU time is the strict, load-independent bound; wall time catches blocking calls.

    `max_alloc_bytes` is the growth of the data segment (heap and anonymous mappings) one call may make.
    """

    max_cpu_s: float = 1.0
    max_wall_s: float = 5.0
    max_alloc_bytes: int = 256 << 20
    max_message_chars: int = 1024

    @classmethod
    def from_env(cls) -> Bounds:
        """Defaults overridden by SEALGATE_FUZZ_MAX_CPU_S, _MAX_WALL_S and _MAX_ALLOC_MB."""
        return cls(
            max_cpu_s=_env_float("SEALGATE_FUZZ_MAX_CPU_S", cls.max_cpu_s),
            max_wall_s=_env_float("SEALGATE_FUZZ_MAX_WALL_S", cls.max_wall_s),
            max_alloc_bytes=int(_env_float("SEALGATE_FUZZ_MAX_ALLOC_MB", cls.max_alloc_bytes / (1 << 20)) * (1 << 20)),
        )


class FuzzFailure(AssertionError):
    """A harness finding: the target broke its contract for this input (the message says how)."""


@dataclass
class CallStats:
    """What the harness saw so far: calls, refusals by class, the slowest call (wall and CPU), and how many
    calls over a time bound ran within it when measured again (a loaded machine's stalls)."""

    calls: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    slowest_wall_s: float = 0.0
    slowest_cpu_s: float = 0.0
    transient_stalls: int = 0

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready summary."""
        return {
            "calls": self.calls,
            "refused": dict(sorted(self.refused.items())),
            "slowest_wall_s": round(self.slowest_wall_s, 6),
            "slowest_cpu_s": round(self.slowest_cpu_s, 6),
            "transient_stalls": self.transient_stalls,
        }


def _data_bytes() -> int:
    """The process's data segment now (statm's `data`: heap + anonymous private mappings + stack)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[5]) * _PAGE


@contextlib.contextmanager
def _memory_bound(limit: int) -> Iterator[None]:
    """Let the data segment grow by at most `limit` bytes inside the block: a larger allocation fails
    with MemoryError rather than taking the machine's memory. The previous limit is restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    ceiling = _data_bytes() + limit
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    if soft != resource.RLIM_INFINITY:
        ceiling = min(ceiling, soft)
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


class Harness:
    """Wrap `target(data)` as a TestOneInput that enforces `bounds` and the allowed exception classes."""

    def __init__(
        self,
        name: str,
        target: Callable[[bytes], None],
        allowed: tuple[type[BaseException], ...],
        bounds: Bounds | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.allowed = allowed
        self.bounds = bounds or Bounds.from_env()
        self.stats = CallStats()
        self._stats_path = os.environ.get(STATS_ENV)
        self._last_dump = 0.0

    def __call__(self, data: bytes) -> None:
        """Run one input; raise FuzzFailure on any broken bound, return normally otherwise.

        A call over a time bound is measured once more: only an input that is slow again fails, so a
        stall of a loaded machine (page reclaim, a descheduled process) is counted, not reported.
        """
        b = self.bounds
        cpu, wall = self._run(data)
        if cpu > b.max_cpu_s or wall > b.max_wall_s:
            cpu, wall = self._run(data)
            if cpu > b.max_cpu_s or wall > b.max_wall_s:
                raise FuzzFailure(
                    f"{self.name}: one call took {cpu:.3f} s CPU / {wall:.3f} s wall, twice "
                    f"(bounds {b.max_cpu_s} s CPU, {b.max_wall_s} s wall)"
                )
            self.stats.transient_stalls += 1

    def _run(self, data: bytes) -> tuple[float, float]:
        """One bounded call of the target; returns its (CPU, wall) seconds."""
        b = self.bounds
        self.stats.calls += 1
        wall0, cpu0 = time.perf_counter(), time.process_time()
        try:
            with _memory_bound(b.max_alloc_bytes):
                self.target(data)
        except self.allowed as exc:
            self._check_refusal(exc)
        except MemoryError:
            raise FuzzFailure(
                f"{self.name}: an allocation above the bound of {b.max_alloc_bytes >> 20} MiB in one call"
            ) from None
        except FuzzFailure:
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise FuzzFailure(f"{self.name}: unhandled {type(exc).__name__}: {str(exc)[:300]}") from exc
        finally:
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            self._note_time(wall, cpu)
        return cpu, wall

    def _check_refusal(self, exc: BaseException) -> None:
        """An allowed refusal must still be a client error with a bounded, one-line message."""
        kind = type(exc).__name__
        self.stats.refused[kind] = self.stats.refused.get(kind, 0) + 1
        from gateway.errors import SealgateError  # here, not at the top: see the module docstring
        from gateway.server.status_map import codes

        status = codes(exc)[1] if isinstance(exc, SealgateError) else 400
        if isinstance(status, int) and status >= 500:
            raise FuzzFailure(f"{self.name}: client input became a server error {status} ({kind}: {str(exc)[:200]})")
        message = str(exc)
        if len(message) > self.bounds.max_message_chars:
            raise FuzzFailure(
                f"{self.name}: {kind} message of {len(message)} characters echoes unbounded input: {message[:200]}..."
            )
        if "\n" in message or "\r" in message:
            raise FuzzFailure(f"{self.name}: {kind} message spans several lines: {message[:200]!r}")

    def _note_time(self, wall: float, cpu: float) -> None:
        slower = wall > self.stats.slowest_wall_s or cpu > self.stats.slowest_cpu_s
        self.stats.slowest_wall_s = max(self.stats.slowest_wall_s, wall)
        self.stats.slowest_cpu_s = max(self.stats.slowest_cpu_s, cpu)
        if self._stats_path and (slower or time.monotonic() - self._last_dump > 5.0):
            self._last_dump = time.monotonic()
            tmp = self._stats_path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(self.stats.as_dict(), fh)
            os.replace(tmp, self._stats_path)


def _running_as_fuzzer() -> bool:
    """True when the process was started as a harness entry point (`python -m fuzz.fuzz_<target>`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name.startswith("fuzz.fuzz_")


def instrumented(include: Sequence[str] = ("gateway",)) -> contextlib.AbstractContextManager[object]:
    """`atheris.instrument_imports` for the listed packages when fuzzing; a no-op in plain Python (replay)."""
    if not _running_as_fuzzer():
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=list(include))


def fuzz_main(harness: Harness) -> None:
    """Hand `harness` to atheris/libFuzzer with this process's command line (corpus dirs, -flags)."""
    import atheris

    atheris.Setup(sys.argv, harness)
    atheris.Fuzz()


def corpus_files(target: str) -> list[Path]:
    """The checked-in corpus of a target, in a stable order."""
    folder = CORPUS_ROOT / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
