"""Load an opened model with the backend its files call for (gateway/backends/registry.py decides which).

The model arrives as an in-memory mapping of relative POSIX path -> bytes (the verified, decrypted
directory); backends are imported only when a model of their kind is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.backends import registry
from gateway.backends.base import BackendConfig, LoadedModel
from gateway.backends.registry import SAVED_MODEL, onnx_files
from gateway.errors import UnsafeArchive

ONNX = "onnx"
TENSORFLOW = "tensorflow"

__all__ = ["ONNX", "SAVED_MODEL", "TENSORFLOW", "check_paths", "detect_framework", "load_model", "onnx_files"]


def check_paths(files: Mapping[str, bytes]) -> None:
    """Refuse any path that is absolute, climbs out ('..'), has empty or '.' parts, or backslashes."""
    for path in files:
        parts = path.split("/")
        if (
            not path
            or path.startswith("/")
            or "\\" in path
            or "\x00" in path
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise UnsafeArchive(f"unsafe path in model files: {path!r}")


def detect_framework(files: Mapping[str, bytes]) -> str:
    """The name of the one registered backend these files fit ('onnx', 'tensorflow', ...); else refuse."""
    return registry.detect(files).name


def load_model(files: Mapping[str, bytes], config: BackendConfig | None = None, label: str = "") -> LoadedModel:
    """Check the paths, pick the backend from the registry and load the model with it (in a sandboxed
    worker process with `isolation = "process"`); `label` ("name:version") names it in worker events."""
    config = config if config is not None else BackendConfig()
    check_paths(files)
    if config.isolation == "process":
        from gateway.backends.isolated import load_isolated

        return load_isolated(files, config, label)
    return registry.detect(files).load(files, config)
