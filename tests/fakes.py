"""A tiny in-process fake backend for tests: "sum" models that add their input's rows, no ML runtime needed.

A sum model is one file, `model.sum`, holding the width of its input as ASCII digits: input `x` FP32
[-1, width], output `sum` FP32 [-1, 1]. It also notes the name of each thread that ran it, so a test can
see whether the server ran it on the event loop or in a worker thread. Registering it touches nothing in
gateway/: `with sum_backend(): ...` adds it to the registry and removes it afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from gateway.backends import registry
from gateway.backends.base import BackendConfig, LoadedModel, TensorSpec
from gateway.backends.validation import validate_inputs, validate_outputs
from gateway.errors import UnsupportedFormat

SUFFIX = ".sum"
PLATFORM = "sealgate_sum"


class SumModel:
    """Adds the columns of `x` per row; records the threads it ran on."""

    def __init__(self, width: int, platform: str = PLATFORM) -> None:
        self.platform = platform
        self.inputs = (TensorSpec("x", "FP32", (-1, width)),)
        self.outputs = (TensorSpec("sum", "FP32", (-1, 1)),)
        self.threads: list[str] = []
        self.closed = False

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Validate like every backend does, then sum each row."""
        validate_inputs(self.inputs, inputs)
        validate_outputs(self.outputs, outputs)
        self.threads.append(threading.current_thread().name)
        return {"sum": inputs["x"].sum(axis=1, keepdims=True).astype(np.float32)}

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True


LOADED: list[SumModel] = []


def sum_files(width: int = 4, suffix: str = SUFFIX) -> dict[str, bytes]:
    """The files of a sum model of the given input width."""
    return {f"model{suffix}": str(width).encode()}


def _detector(suffix: str) -> Callable[[Collection[str]], bool]:
    """Detect exactly one file with `suffix` at the root."""

    def detect(names: Collection[str]) -> bool:
        return f"model{suffix}" in names

    return detect


def _loader(suffix: str, platform: str) -> Callable[[Mapping[str, bytes], BackendConfig], LoadedModel]:
    """Load a sum model from its one file; anything but digits is refused as a bad format."""

    def load(files: Mapping[str, bytes], config: BackendConfig) -> LoadedModel:
        text = files[f"model{suffix}"]
        if not text.isdigit():
            raise UnsupportedFormat("a sum model holds its input width as digits")
        model = SumModel(int(text), platform)
        LOADED.append(model)
        return model

    return load


def sum_backend_declaration(name: str = "sum", suffix: str = SUFFIX, runs_inline: bool = False) -> registry.Backend:
    """The whole declaration of a backend: everything the registry needs to detect, load and dispatch it."""
    platform = f"sealgate_{name.replace('-', '_')}"
    return registry.Backend(name, platform, _detector(suffix), _loader(suffix, platform), runs_inline, f"model{suffix}")


@contextmanager
def sum_backend(name: str = "sum", suffix: str = SUFFIX, runs_inline: bool = False) -> Iterator[registry.Backend]:
    """Register a sum backend for the block's duration."""
    backend = registry.register(sum_backend_declaration(name, suffix, runs_inline))
    try:
        yield backend
    finally:
        registry.unregister(name)
