"""The contract every backend meets: tensor specs, the loaded-model protocol, and backend options.

The serving layer sees only these types, so ONNX Runtime and TensorFlow models are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from gateway.backends.dtypes import V2_DATATYPES
from gateway.errors import ConfigError


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: KServe V2 datatype and shape, -1 for a dynamic dimension.

    `rank_known` is False only for a tensor whose model declares no rank; its `shape` is then ().
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    rank_known: bool = True

    def __post_init__(self) -> None:
        """Refuse specs no client could satisfy, so a bad backend fails at load, not per request."""
        if self.datatype not in V2_DATATYPES:
            raise ValueError(f"tensor {self.name!r}: unknown datatype {self.datatype!r}")
        if any(dim < -1 for dim in self.shape):
            raise ValueError(f"tensor {self.name!r}: bad shape {list(self.shape)}")
        if not self.rank_known and self.shape:
            raise ValueError(f"tensor {self.name!r}: a shape with unknown rank must be ()")


@runtime_checkable
class LoadedModel(Protocol):
    """A model ready for inference; `infer` is safe to call from many threads at once."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model; `outputs` None or empty means all outputs. Bad inputs raise InvalidInput."""
        ...

    def close(self) -> None:
        """Release the model; calls already running finish, later calls raise Unavailable."""
        ...


ISOLATIONS = ("none", "process")


@dataclass(frozen=True)
class BackendConfig:
    """How backends run models: ONNX Runtime execution providers in order of preference, and threads.

    0 threads means the runtime's default. TensorFlow's thread pools are process-wide: they apply
    only if set before TensorFlow first runs anything.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    isolation: str = "none"  # "process": each model version in a sandboxed worker (gateway/backends/isolated)
    worker_deadline_s: float = 30.0  # a call running longer kills its worker (Unavailable, restart)
    worker_restart_backoff_s: float = 0.1  # wait before the 2nd restart in a window, doubling (5 s at most)
    worker_max_crashes: int = 5  # this many crashes within the window mark the model failed
    worker_crash_window_s: float = 60.0
    worker_slots: int = 2  # calls one worker runs at once (each slot: a socket and its part of the region)
    max_message_bytes: int = 4 << 20  # sizes each slot's part of the worker's shared tensor region
    landlock: bool = True  # workers sandbox themselves where the kernel can (off only in tests)
    worker_spin_us: float = 1000.0  # an unloaded worker polls this long for the next call (0: sleep; 1 core: off)

    def __post_init__(self) -> None:
        """Refuse negative thread counts, a bare string of providers, and impossible worker settings."""
        if isinstance(self.providers, str):
            raise ConfigError("backend providers must be a sequence of provider names, not one string")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigError("backend thread counts must be 0 (runtime default) or positive")
        if self.isolation not in ISOLATIONS:
            raise ConfigError(f"backend isolation must be one of {', '.join(ISOLATIONS)}, not {self.isolation!r}")
        if not (self.worker_deadline_s > 0 and self.worker_crash_window_s > 0 and self.worker_restart_backoff_s >= 0):
            raise ConfigError("worker deadline and crash window must be positive, the restart backoff not negative")
        if self.worker_max_crashes < 1 or self.max_message_bytes < 1 or not 1 <= self.worker_slots <= 64:
            raise ConfigError("worker_max_crashes and max_message_bytes must be >= 1, worker_slots 1 to 64")
        if not 0 <= self.worker_spin_us <= 10_000:
            raise ConfigError("worker_spin_us must be between 0 and 10000")
