"""Pick the backend for an opened model and load it: ONNX Runtime or TensorFlow.

The model arrives as an in-memory mapping of relative POSIX path -> bytes (the verified, decrypted
directory); backends are imported only when a model of their kind is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.backends.base import BackendConfig, LoadedModel
from gateway.errors import UnsafeArchive, UnsupportedFormat

ONNX = "onnx"
TENSORFLOW = "tensorflow"
SAVED_MODEL = "saved_model.pb"

_SHOWN = 8


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


def _listing(files: Mapping[str, bytes]) -> str:
    """A short list of the files, for error messages."""
    names = sorted(files)
    more = f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return (", ".join(names[:_SHOWN]) + more) or "no files"


def onnx_files(files: Mapping[str, bytes]) -> list[str]:
    """The *.onnx files among the model's files, sorted."""
    return sorted(path for path in files if path.endswith(".onnx"))


def detect_framework(files: Mapping[str, bytes]) -> str:
    """'onnx' for exactly one *.onnx file, 'tensorflow' for saved_model.pb at the root; else refuse."""
    found_onnx = onnx_files(files)
    has_saved_model = SAVED_MODEL in files
    if found_onnx and has_saved_model:
        raise UnsupportedFormat(
            f"ambiguous model: both a SavedModel ({SAVED_MODEL}) and ONNX files ({', '.join(found_onnx)})"
        )
    if len(found_onnx) > 1:
        raise UnsupportedFormat(f"more than one ONNX file in the model: {', '.join(found_onnx)}")
    if found_onnx:
        return ONNX
    if has_saved_model:
        return TENSORFLOW
    raise UnsupportedFormat(
        f"no model found: expected one *.onnx file or {SAVED_MODEL} at the root; found {_listing(files)}"
    )


def load_model(files: Mapping[str, bytes], config: BackendConfig | None = None) -> LoadedModel:
    """Check the paths, detect the framework and load the model with the matching backend."""
    config = config if config is not None else BackendConfig()
    check_paths(files)
    if detect_framework(files) == ONNX:
        from gateway.backends.onnx_backend import load_onnx

        return load_onnx(onnx_files(files)[0], files, config)
    from gateway.backends.tf_backend import load_tensorflow

    return load_tensorflow(files, config)
