"""The backends sealgate serves with, each declared once: name, detection, loader, inline or not, platform.

Nothing outside gateway/backends/ names a framework: the loader picks a backend here, the artifact layer
names a sealed model's framework here, the servers ask here whether a model runs on the event loop.
Adding a backend is its own module (loader and model class) plus one `register(Backend(...))` at the
bottom of this file. Declarations import no runtime: each `load` imports its module on first use, so
serving ONNX models alone never imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import UnsupportedFormat

if TYPE_CHECKING:
    from gateway.backends.base import BackendConfig, LoadedModel

UNKNOWN = "unknown"
SAVED_MODEL = "saved_model.pb"
_SHOWN = 8


@dataclass(frozen=True)
class Backend:
    """One backend's declaration; `detect` sees only file names, so it is cheap and safe on any input."""

    name: str  # the framework named in a sealed model's header and provenance: "onnx"
    platform: str  # the platform string of model metadata, as Triton names it: "onnxruntime_onnx"
    detect: Callable[
        [Collection[str]], bool
    ]  # True: these files are this backend's model (may raise UnsupportedFormat)
    load: Callable[[Mapping[str, bytes], BackendConfig], LoadedModel]
    runs_inline: bool  # True: infer() is fast and releases the GIL, run it on the event loop; False: a worker thread
    expects: str  # what `detect` looks for, for the "no model found" message: "one *.onnx file"


_BACKENDS: dict[str, Backend] = {}
_INLINE: dict[str, bool] = {}


def register(backend: Backend) -> Backend:
    """Add a backend; a second backend with the same name or platform is refused (ValueError)."""
    taken = [b.name for b in _BACKENDS.values() if backend.name == b.name or backend.platform == b.platform]
    if taken:
        raise ValueError(f"backend {backend.name!r} ({backend.platform}) clashes with the registered {taken[0]!r}")
    _BACKENDS[backend.name] = backend
    _INLINE[backend.platform] = backend.runs_inline
    return backend


def unregister(name: str) -> None:
    """Remove a backend by name (tests add and remove their fake backends); unknown names are ignored."""
    backend = _BACKENDS.pop(name, None)
    if backend is not None:
        _INLINE.pop(backend.platform, None)


def backends() -> tuple[Backend, ...]:
    """The registered backends, in registration order."""
    return tuple(_BACKENDS.values())


def _listing(names: Collection[str]) -> str:
    """A short list of the files, for error messages."""
    ordered = sorted(names)
    more = f", ... ({len(ordered) - _SHOWN} more)" if len(ordered) > _SHOWN else ""
    return (", ".join(ordered[:_SHOWN]) + more) or "no files"


def detect(names: Collection[str]) -> Backend:
    """The one backend whose model these files are; UnsupportedFormat for none or more than one."""
    found = [backend for backend in _BACKENDS.values() if backend.detect(names)]
    if len(found) > 1:
        kinds = ", ".join(b.name for b in found)
        raise UnsupportedFormat(
            f"ambiguous model: the files fit more than one backend ({kinds}); found {_listing(names)}"
        )
    if not found:
        expected = " or ".join(b.expects for b in _BACKENDS.values())
        raise UnsupportedFormat(f"no model found: expected {expected}; found {_listing(names)}")
    return found[0]


def framework_of(names: Collection[str]) -> str:
    """The name of the backend that would load these files, or "unknown" (for a header; never raises)."""
    try:
        return detect(names).name
    except UnsupportedFormat:
        return UNKNOWN


def runs_inline(platform: str) -> bool:
    """Whether a model of this platform infers on the event loop; unknown platforms run in a worker thread."""
    return _INLINE.get(platform, False)


# --- the built-in backends ------------------------------------------------------------------------
def onnx_files(names: Collection[str]) -> list[str]:
    """The *.onnx files among the model's files, sorted."""
    return sorted(path for path in names if path.endswith(".onnx"))


def _detect_onnx(names: Collection[str]) -> bool:
    """Exactly one *.onnx file, anywhere; more than one is refused rather than guessed between."""
    found = onnx_files(names)
    if len(found) > 1 and SAVED_MODEL not in names:
        raise UnsupportedFormat(f"more than one ONNX file in the model: {', '.join(found)}")
    return bool(found)


def _load_onnx(files: Mapping[str, bytes], config: BackendConfig) -> LoadedModel:
    from gateway.backends.onnx_backend import load_onnx

    return load_onnx(onnx_files(files)[0], files, config)


def _load_tensorflow(files: Mapping[str, bytes], config: BackendConfig) -> LoadedModel:
    from gateway.backends.tf_backend import load_tensorflow

    return load_tensorflow(files, config)


register(Backend("onnx", "onnxruntime_onnx", _detect_onnx, _load_onnx, True, "one *.onnx file"))
register(
    Backend(
        "tensorflow",
        "tensorflow_savedmodel",
        lambda names: SAVED_MODEL in names,
        _load_tensorflow,
        False,
        f"{SAVED_MODEL} at the root",
    )
)
