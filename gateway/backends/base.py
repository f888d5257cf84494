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


@dataclass(frozen=True)
class BackendConfig:
    """How backends run models: ONNX Runtime execution providers in order of preference, and threads.

    0 threads means the runtime's default. TensorFlow's thread pools are process-wide: they apply
    only if set before TensorFlow first runs anything.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    def __post_init__(self) -> None:
        """Refuse negative thread counts and a bare string where a tuple of providers belongs."""
        if isinstance(self.providers, str):
            raise ConfigError("backend providers must be a sequence of provider names, not one string")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigError("backend thread counts must be 0 (runtime default) or positive")
