"""Conversion to ONNX, each with an output-parity check against the source model on sample inputs.

TF SavedModels (and Keras models, through a SavedModel export) go through tf2onnx in process; torch models are
exported from a *fresh* instance of their class loaded with the given weights (the dynamo exporter, dynamic batch,
one file), because exporting a wrapped (Opacus) module fails and a fresh module is what a consumer can rebuild.
TensorFlow, tf2onnx and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import ConfigError, InvalidInput
from gateway.release import onnx_graph, parity
from gateway.release.parity import DEFAULT_TOLERANCE, ParityReport

DEFAULT_OPSET = 17
SAMPLE_ROWS = 16
Samples = np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Conversion:
    """The ONNX bytes and how closely they reproduce the source model."""

    onnx: bytes
    parity: ParityReport
    source: str


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "tf2onnx", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _random_rows(shape: tuple[int | None, ...], dtype: np.dtype, seed: int) -> np.ndarray:
    """Seeded standard-normal samples for an input spec; the batch (and any unknown) dims become SAMPLE_ROWS/1."""
    if any(d is None for d in shape[1:]):
        raise InvalidInput(f"input shape {shape} has unknown inner dimensions: pass sample inputs")
    rng = np.random.default_rng(seed)
    dims = (shape[0] or SAMPLE_ROWS, *[int(d) for d in shape[1:] if d is not None])
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(dims).astype(dtype)
    raise InvalidInput(f"cannot invent samples for a {dtype} input: pass sample inputs")


# --- TensorFlow ---------------------------------------------------------------------------------------------------
def _signature(path: Path, signature: str) -> Any:
    import tensorflow as tf

    if not (path / "saved_model.pb").is_file():
        raise ConfigError(f"{path} is not a TF SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(str(path))
    if signature not in loaded.signatures:
        raise ConfigError(f"SavedModel has no signature {signature!r}; it has {sorted(loaded.signatures)}")
    return loaded, loaded.signatures[signature]


def _named_samples(specs: Mapping[str, Any], samples: Samples | None, seed: int) -> dict[str, np.ndarray]:
    if samples is None:
        return {
            name: _random_rows(tuple(spec.shape.as_list()), spec.dtype.as_numpy_dtype, seed + i)
            for i, (name, spec) in enumerate(sorted(specs.items()))
        }
    if isinstance(samples, np.ndarray):
        if len(specs) != 1:
            raise InvalidInput(f"the model has inputs {sorted(specs)}: pass samples as a mapping")
        return {next(iter(specs)): samples}
    if set(samples) != set(specs):
        raise InvalidInput(f"samples name {sorted(samples)}, the model takes {sorted(specs)}")
    return dict(samples)


def _tf2onnx_saved_model(path: Path, signature: str, opset: int) -> bytes:
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    _quiet_tensorflow()
    try:
        graph_def, inputs, outputs, _tables, renames = tf_loader.from_saved_model(
            str(path),
            None,
            None,
            "serve",
            [signature],
            None,
            False,
            return_initialized_tables=True,
            return_tensors_to_rename=True,
        )
        proto, _ = tf2onnx_convert.from_graph_def(
            graph_def, input_names=inputs, output_names=outputs, opset=opset, tensors_to_rename=renames
        )
    except (ConfigError, InvalidInput):
        raise
    except Exception as exc:  # tf2onnx raises anything from ValueError to its own errors
        raise InvalidInput(f"tf2onnx could not convert {path}: {str(exc).splitlines()[0][:200]}") from None
    return onnx_graph.serialize(onnx_graph.strip_metadata(proto))


def savedmodel_to_onnx(
    path: str | Path,
    samples: Samples | None = None,
    *,
    signature: str = "serving_default",
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> Conversion:
    """Convert a SavedModel's `signature` with tf2onnx; parity against the SavedModel itself on `samples`.

    ONNX input and output names are the signature's. Without samples, seeded normal rows fill float inputs.
    """
    _quiet_tensorflow()
    import tensorflow as tf

    path = Path(path)
    _loaded, sig = _signature(path, signature)
    specs = sig.structured_input_signature[1]
    feeds = _named_samples(specs, samples, seed)
    data = _tf2onnx_saved_model(path, signature, opset)

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = sig(**{k: tf.constant(v) for k, v in inputs.items()})
        return {name: value.numpy() for name, value in result.items()}

    return Conversion(data, parity.check_onnx(data, reference, feeds, tolerance), "savedmodel")


def keras_to_onnx(
    model: Any, samples: Samples, *, opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE
) -> Conversion:
    """Convert a Keras 3 model (functional or Sequential) via a temporary SavedModel export; parity against
    the Keras model's own outputs (ONNX outputs are output_0, output_1, ... in the model's output order)."""
    _quiet_tensorflow()
    with tempfile.TemporaryDirectory(prefix="sealgate-keras-") as tmp:
        export_dir = Path(tmp) / "saved_model"
        try:
            model.export(str(export_dir), verbose=False)
        except Exception as exc:  # Keras raises ValueError/TypeError for models it cannot trace
            raise InvalidInput(f"Keras could not export the model: {str(exc).splitlines()[0][:200]}") from None
        _loaded, sig = _signature(export_dir, "serving_default")
        feeds = _named_samples(sig.structured_input_signature[1], samples, 0)
        data = _tf2onnx_saved_model(export_dir, "serving_default", opset)

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = next(iter(inputs.values())) if len(inputs) == 1 else inputs
        result = model(args, training=False)
        values = result if isinstance(result, list | tuple) else [result]
        return {f"output_{i}": np.asarray(v) for i, v in enumerate(values)}

    return Conversion(data, parity.check_onnx(data, reference, feeds, tolerance), "keras")


# --- torch --------------------------------------------------------------------------------------------------------
def fresh_module(
    model_cls: Callable[..., Any], state_dict: Mapping[str, Any], init_kwargs: Mapping[str, Any] | None = None
) -> Any:
    """A new `model_cls(**init_kwargs)` with `state_dict` loaded strictly (Opacus' `_module.` prefix removed)."""
    module = model_cls(**dict(init_kwargs or {}))
    cleaned = {k.removeprefix("_module."): v for k, v in state_dict.items()}
    try:
        module.load_state_dict(cleaned, strict=True)
    except RuntimeError as exc:
        raise InvalidInput(f"the weights do not fit {model_cls.__name__}: {str(exc).splitlines()[0][:200]}") from None
    return module.eval()


def torch_to_onnx(
    model_cls: Callable[..., Any],
    state_dict: Mapping[str, Any],
    samples: np.ndarray,
    *,
    init_kwargs: Mapping[str, Any] | None = None,
    reference: Any | None = None,
    input_name: str = "input",
    output_name: str = "output",
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Conversion:
    """Export a fresh `model_cls` with `state_dict` (one input, batch dimension dynamic) and check parity.

    The parity reference is `reference` when given — the trained module itself, which also catches state that lives
    outside its state_dict — else the fresh module (then only the exporter is checked).
    """
    import torch

    module = fresh_module(model_cls, state_dict, init_kwargs)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if samples.ndim < 2 or len(samples) == 0:
        raise InvalidInput(f"samples must be a non-empty batch, got shape {samples.shape}")
    example = torch.from_numpy(np.repeat(samples[:1], 2, axis=0))  # batch 2: a batch of 1 would be specialized
    try:
        program = torch.onnx.export(
            module,
            (example,),
            None,
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
    except Exception as exc:  # torch.export raises many error types for untraceable modules
        raise InvalidInput(f"torch could not export {model_cls.__name__}: {str(exc).splitlines()[0][:200]}") from None
    if program is None:  # only without the dynamo exporter, which this call always uses
        raise InvalidInput(f"torch exported no ONNX program for {model_cls.__name__}")
    data = onnx_graph.serialize(onnx_graph.strip_metadata(program.model_proto))
    ref_module = (reference if reference is not None else module).eval()

    def run_reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = ref_module(torch.from_numpy(inputs[input_name]))
        return {output_name: out.detach().cpu().numpy()}

    return Conversion(data, parity.check_onnx(data, run_reference, {input_name: samples}, tolerance), "torch")
