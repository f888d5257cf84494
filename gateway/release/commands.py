"""`sealgate convert` / `optimize` / `check`: thin typer commands over the release library.

The main CLI registers them with `register(app)`. Errors are sealgate's typed errors (one line, no traceback,
exit 1 from the main CLI); `check` prints its table, writes its JSON report, then fails naming each failed gate.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console

from gateway.errors import ConfigError, GateFailed, InvalidInput
from gateway.fsutil import atomic_write

if TYPE_CHECKING:
    from gateway.release.privacy_audit import AuditData

out = Console()


# --- file helpers -------------------------------------------------------------------------------------------------
def read_bytes(path: Path, what: str) -> bytes:
    """The file's bytes, or a ConfigError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _npz_key(arrays: Any, names: tuple[str, ...], path: Path) -> np.ndarray:
    for name in names:
        if name in arrays.files:
            array: np.ndarray = arrays[name]
            return array
    raise ConfigError(f"{path} has no array named {' or '.join(names)} (it has {', '.join(arrays.files) or 'none'})")


def load_xy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from an .npz holding arrays `x` (or `X`) and `y` (or `Y`)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return _npz_key(arrays, ("x", "X"), path).astype(np.float32), _npz_key(arrays, ("y", "Y"), path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read data {path}: {str(exc)[:200]}") from None


def load_x(path: Path) -> np.ndarray:
    """Sample inputs from an .npy array or the `x` array of an .npz."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read samples {path}: {str(exc)[:200]}") from None
    if isinstance(loaded, np.ndarray):
        return loaded.astype(np.float32)
    with loaded as arrays:
        return _npz_key(arrays, ("x", "X"), path).astype(np.float32)


def load_audit(path: Path) -> AuditData:
    """The privacy audit's sets from an .npz: x_members, y_members, x_nonmembers, y_nonmembers (required) and
    x_public, y_public (optional: public rows, in neither set, that train LiRA's shadow models)."""
    from gateway.release.privacy_audit import AuditData

    try:
        with np.load(path, allow_pickle=False) as arrays:
            return AuditData.from_arrays({name: arrays[name] for name in arrays.files})
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read audit data {path}: {str(exc)[:200]}") from None


def load_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or a ConfigError."""
    try:
        value = json.loads(read_bytes(path, what))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return value


def import_class(spec: str) -> Any:
    """`package.module:Class` → the class; ConfigError when it cannot be imported."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--model-class must look like package.module:Class, got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {spec}: {exc}") from None


# --- convert ------------------------------------------------------------------------------------------------------
def _detect(src: Path) -> str:
    if src.is_dir() and (src / "saved_model.pb").is_file():
        return "savedmodel"
    if src.suffix == ".keras":
        return "keras"
    if src.suffix == ".safetensors":
        return "torch"
    raise ConfigError(f"cannot tell what {src} is: pass --from savedmodel, keras or torch")


def _convert_torch(
    src: Path,
    model_class: str | None,
    init_kwargs: str | None,
    input_shape: str | None,
    samples: np.ndarray | None,
    opset: int | None,
    tolerance: float,
) -> Any:
    from safetensors.torch import load as load_safetensors

    from gateway.release.convert import SAMPLE_ROWS, torch_to_onnx

    if model_class is None:
        raise ConfigError("converting torch weights needs --model-class package.module:Class")
    try:
        state_dict = load_safetensors(read_bytes(src, "weights"))
    except (ValueError, RuntimeError, OSError) as exc:  # safetensors raises its own SafetensorError (a ValueError)
        raise ConfigError(f"{src} is not a safetensors file: {str(exc)[:200]}") from None
    try:
        kwargs = json.loads(init_kwargs) if init_kwargs else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--init-kwargs is not JSON: {exc}") from None
    model_cls = import_class(model_class)
    if samples is None:
        dims = tuple(int(d) for d in input_shape.split(",")) if input_shape else _first_linear_width(model_cls, kwargs)
        samples = np.random.default_rng(0).standard_normal((SAMPLE_ROWS, *dims)).astype(np.float32)
    return torch_to_onnx(model_cls, state_dict, samples, init_kwargs=kwargs, opset=opset, tolerance=tolerance)


def _first_linear_width(model_cls: Any, kwargs: dict[str, Any]) -> tuple[int]:
    """(in_features,) of the first nn.Linear in definition order; ConfigError when there is none."""
    from torch import nn

    first = next((m for m in model_cls(**kwargs).modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ConfigError("cannot infer the input shape (no nn.Linear first): pass --input-shape")
    return (int(first.in_features),)


def convert_cmd(
    src: Annotated[Path, typer.Argument(help="SavedModel dir, .keras file, or .safetensors torch weights.")],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the ONNX model.")],
    source: Annotated[str, typer.Option("--from", help="savedmodel, keras, torch, or auto.")] = "auto",
    model_class: Annotated[str | None, typer.Option(help="torch: the module class, package.module:Class.")] = None,
    init_kwargs: Annotated[str | None, typer.Option(help='torch: JSON keyword arguments, e.g. {"hidden": 32}.')] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="torch: input dims without batch, e.g. 64 or 3,32,32.")
    ] = None,
    samples: Annotated[Path | None, typer.Option(help="Sample inputs for the parity check (.npy, or .npz x).")] = None,
    opset: Annotated[
        int | None, typer.Option(help="ONNX opset (default: 17 for TF, the exporter's for torch).")
    ] = None,
    tolerance: Annotated[float, typer.Option(help="Largest allowed absolute output difference.")] = 1e-4,
    signature: Annotated[str, typer.Option(help="SavedModel signature to convert.")] = "serving_default",
) -> None:
    """Convert a model to ONNX and check output parity; refuses to write a model whose parity fails."""
    from gateway.release import convert

    kind = _detect(src) if source == "auto" else source
    sample_x = load_x(samples) if samples is not None else None
    if kind == "savedmodel":
        result = convert.savedmodel_to_onnx(
            src, sample_x, signature=signature, opset=opset or convert.DEFAULT_OPSET, tolerance=tolerance
        )
    elif kind == "keras":
        import keras

        try:
            model = keras.models.load_model(src, safe_mode=True)
        except Exception as exc:  # Keras raises ValueError/TypeError/OSError for unreadable files
            raise ConfigError(f"cannot load Keras model {src}: {str(exc).splitlines()[0][:200]}") from None
        if sample_x is None:
            shape = tuple(model.inputs[0].shape)
            sample_x = convert._random_rows(shape, np.dtype(np.float32), 0)
        result = convert.keras_to_onnx(model, sample_x, opset=opset or convert.DEFAULT_OPSET, tolerance=tolerance)
    elif kind == "torch":
        result = _convert_torch(src, model_class, init_kwargs, input_shape, sample_x, opset, tolerance)
    else:
        raise ConfigError(f"--from must be savedmodel, keras, torch or auto, got {source!r}")
    if not result.parity.passed:
        raise GateFailed(f"{result.parity.message}; nothing written")
    atomic_write(out_path, result.onnx)
    out.print(f"wrote {out_path} ({len(result.onnx)} bytes); {result.parity.message}", highlight=False)


# --- optimize -----------------------------------------------------------------------------------------------------
def optimize_cmd(
    model: Annotated[Path, typer.Argument(help="The ONNX model to optimize.")],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the optimized ONNX model.")],
    sparsity: Annotated[
        float | None, typer.Option("--prune", help="Magnitude pruning: fraction of weights zeroed.")
    ] = None,
    global_scope: Annotated[
        bool, typer.Option("--global/--layerwise", help="One threshold for all layers, or a share per layer.")
    ] = True,
    structured: Annotated[float | None, typer.Option(help="Remove this fraction of each hidden layer's units.")] = None,
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic or static (QDQ, needs --calib).")] = None,
    calib: Annotated[
        Path | None, typer.Option(help="Calibration inputs for static quantization (.npy or .npz x).")
    ] = None,
    finetune: Annotated[
        Path | None, typer.Option(help="Training data (.npz with x, y) to fine-tune after pruning, masks kept.")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 10,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate (SGD, momentum 0.9).")] = 0.02,
    seed: Annotated[int, typer.Option(help="Seed of the fine-tuning shuffles.")] = 0,
    record: Annotated[Path | None, typer.Option(help="Write the optimization record (JSON) here.")] = None,
) -> None:
    """Prune (structured and/or magnitude), fine-tune with the masks kept, and quantize to int8."""
    from gateway.release.optimize import OptimizeOptions
    from gateway.release.optimize import optimize as run_optimize

    if quantize not in (None, "dynamic", "static"):
        raise ConfigError(f"--quantize must be dynamic or static, got {quantize!r}")
    if quantize == "static" and calib is None:
        raise ConfigError("--quantize static needs --calib inputs")
    options = OptimizeOptions(
        structured=structured,
        sparsity=sparsity,
        scope="global" if global_scope else "layer",
        finetune_data=load_xy(finetune) if finetune is not None else None,
        finetune_epochs=epochs,
        finetune_lr=lr,
        seed=seed,
        quantize=quantize,  # type: ignore[arg-type]
        calibration=load_x(calib) if calib is not None else None,
    )
    if not any((structured, sparsity, quantize, finetune)):
        raise ConfigError("nothing to do: pass --prune, --structured, --quantize and/or --finetune")
    result = run_optimize(read_bytes(model, "model"), options)
    atomic_write(out_path, result.onnx)
    if record is not None:
        atomic_write(record, json.dumps(result.record, indent=2, sort_keys=True).encode())
    rec = result.record
    out.print(
        f"wrote {out_path}: {rec['size_bytes_before']} → {rec['size_bytes']} bytes "
        f"(compressed {rec['compressed_bytes_before']} → {rec['compressed_bytes']})",
        highlight=False,
    )
    for step in ("structured", "pruning", "finetune", "quantization"):
        if step in rec:
            out.print(f"  {step}: {json.dumps(rec[step], sort_keys=True)}", highlight=False)


# --- check --------------------------------------------------------------------------------------------------------
def check_cmd(
    candidate: Annotated[Path, typer.Argument(help="The candidate ONNX model.")],
    data: Annotated[Path, typer.Option(help="Held-out data: .npz with x and y (integer labels).")],
    baseline: Annotated[Path | None, typer.Option(help="The current release's ONNX model.")] = None,
    source: Annotated[
        Path | None, typer.Option(help="The model the candidate was made from (parity reference).")
    ] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="Largest allowed accuracy drop, in points.")] = 1.0,
    min_accuracy: Annotated[float | None, typer.Option(help="Without a baseline: least accuracy, in percent.")] = None,
    max_latency_ratio: Annotated[float, typer.Option(help="Largest allowed p50 latency ratio to the baseline.")] = 1.2,
    max_epsilon: Annotated[float | None, typer.Option(help="Largest allowed ε recorded in provenance.")] = 8.0,
    require_privacy: Annotated[bool, typer.Option(help="Fail when provenance records no ε.")] = False,
    max_size: Annotated[int | None, typer.Option(help="Largest allowed model size in bytes.")] = None,
    parity: Annotated[bool, typer.Option(help="Check output parity where it applies.")] = True,
    parity_tolerance: Annotated[float, typer.Option(help="Largest allowed absolute output difference.")] = 1e-4,
    provenance: Annotated[Path | None, typer.Option(help="provenance.json of the candidate (privacy budget).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here (for provenance).")] = None,
    audit_data: Annotated[
        Path | None,
        typer.Option(
            help="Privacy audit sets (.npz): x_members, y_members, x_nonmembers, y_nonmembers, optional x_public, "
            "y_public for LiRA's shadow models."
        ),
    ] = None,
    max_audit_auc: Annotated[float, typer.Option(help="Privacy audit: largest allowed attack AUC.")] = 0.6,
    allow_no_dp: Annotated[
        bool,
        typer.Option(
            "--allow-no-dp",
            help="Let a model trained without DP pass the privacy gates (the audit then checks AUC only).",
        ),
    ] = False,
    require_audit: Annotated[bool, typer.Option("--require-audit", help="Fail when no --audit-data is given.")] = False,
    shadow_models: Annotated[int, typer.Option(help="Privacy audit: LiRA shadow models (0: loss attack only).")] = 8,
    shadow_rows: Annotated[
        int | None, typer.Option(help="Privacy audit: public rows per shadow model (default: half of them).")
    ] = None,
) -> None:
    """Run the verification gates; prints a table, writes the report, exits non-zero naming each failed gate."""
    from gateway.release.gates import GateConfig
    from gateway.release.gates import check as run_check
    from gateway.release.privacy_audit import AuditOptions

    if not 0.5 <= max_audit_auc <= 1.0 or shadow_models < 0 or (shadow_rows is not None and shadow_rows < 2):
        raise ConfigError("--max-audit-auc must be in [0.5, 1], --shadow-models ≥ 0, --shadow-rows ≥ 2")
    x, y = load_xy(data)
    audit_sets = load_audit(audit_data) if audit_data is not None else None
    config = GateConfig(
        max_accuracy_drop=max_accuracy_drop,
        min_accuracy=min_accuracy,
        max_latency_ratio=max_latency_ratio,
        max_epsilon=max_epsilon,
        require_privacy=require_privacy,
        max_size_bytes=max_size,
        check_parity=parity,
        parity_tolerance=parity_tolerance,
        max_audit_auc=max_audit_auc,
        allow_no_dp=allow_no_dp,
        require_audit=require_audit,
        audit=AuditOptions(shadow_models=shadow_models, shadow_rows=shadow_rows),
    )
    try:
        result = run_check(
            read_bytes(candidate, "candidate"),
            read_bytes(baseline, "baseline") if baseline is not None else None,
            x,
            y,
            config,
            load_json(provenance, "provenance") if provenance is not None else None,
            source_onnx=read_bytes(source, "source model") if source is not None else None,
            audit_data=audit_sets,
        )
    except InvalidInput as exc:
        raise InvalidInput(f"cannot check: {exc}") from None
    out.print(result.table())
    if report is not None:
        atomic_write(report, result.to_json().encode())
    result.raise_for_failure()
    out.print("all gates passed", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `convert`, `optimize` and `check` to a typer app (the main `sealgate` CLI)."""
    app.command("convert")(convert_cmd)
    app.command("optimize")(optimize_cmd)
    app.command("check")(check_cmd)
