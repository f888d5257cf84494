"""Small, real models built in memory for tests: ONNX graphs written with onnx.helper, Keras/TF SavedModels.

Every builder is deterministic in its seed and returns the model's files as `dict[str, bytes]`
(relative POSIX path -> bytes), the shape the artifact layer hands to the backends. Each has a
reference (numpy function or the Keras model itself) to compare served outputs against.
TensorFlow and Keras are imported inside the TF builders only, so ONNX-only tests stay fast.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, external_data_helper, helper, numpy_helper

ONNX_OPSET = 17
MLP_INPUT = "input"
MLP_OUTPUT = "output"


def read_tree(directory: str | Path) -> dict[str, bytes]:
    """Every file under `directory` as relative POSIX path -> bytes."""
    root = Path(directory)
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# --- ONNX -----------------------------------------------------------------------------------------
def mlp_weights(
    in_dim: int = 64, hidden: Sequence[int] = (256, 256), out_dim: int = 1, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (W, b) per layer, float32, He-scaled so activations stay in a sane range."""
    rng = np.random.default_rng(seed)
    sizes = [in_dim, *hidden, out_dim]
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        weight = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        bias = rng.standard_normal(fan_out) * 0.1
        layers.append((weight.astype(np.float32), bias.astype(np.float32)))
    return layers


def mlp_reference(
    in_dim: int = 64, hidden: Sequence[int] = (256, 256), out_dim: int = 1, seed: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """The MLP of `make_onnx_mlp` with the same arguments, as a numpy function (ReLU between layers)."""
    layers = mlp_weights(in_dim, hidden, out_dim, seed)

    def forward(x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32)
        for index, (weight, bias) in enumerate(layers):
            h = h @ weight + bias
            if index < len(layers) - 1:
                h = np.maximum(h, 0.0)
        return h

    return forward


def _externalize(initializers: list[TensorProto], location: str) -> bytes:
    """Move initializer payloads into one external-data blob (64-byte aligned), in memory."""
    blob = bytearray()
    for tensor in initializers:
        blob.extend(b"\0" * (-len(blob) % 64))
        raw = tensor.raw_data
        external_data_helper.set_external_data(tensor, location, offset=len(blob), length=len(raw))
        blob.extend(raw)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
    return bytes(blob)


def make_onnx_mlp(
    in_dim: int = 64,
    hidden: Sequence[int] = (256, 256),
    out_dim: int = 1,
    seed: int = 0,
    *,
    external_data: bool = False,
    filename: str = "model.onnx",
) -> dict[str, bytes]:
    """An ONNX MLP: input "input" FP32 [-1, in_dim] -> output "output" FP32 [-1, out_dim].

    With `external_data`, the weights go to `<filename>.data` beside the model, as torch exports
    large models; the mapping then holds both files.
    """
    nodes = []
    initializers = []
    current = MLP_INPUT
    layers = mlp_weights(in_dim, hidden, out_dim, seed)
    for index, (weight, bias) in enumerate(layers):
        last = index == len(layers) - 1
        initializers += [numpy_helper.from_array(weight, f"W{index}"), numpy_helper.from_array(bias, f"b{index}")]
        gemm_out = MLP_OUTPUT if last else f"gemm{index}"
        nodes.append(helper.make_node("Gemm", [current, f"W{index}", f"b{index}"], [gemm_out], name=f"dense{index}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{index}"], name=f"relu{index}"))
            current = f"relu{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(MLP_INPUT, TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info(MLP_OUTPUT, TensorProto.FLOAT, ["batch", out_dim])],
        initializers,
    )
    files: dict[str, bytes] = {}
    if external_data:
        data_name = f"{filename.rsplit('/', 1)[-1]}.data"
        folder = filename.rsplit("/", 1)[0] + "/" if "/" in filename else ""
        files[folder + data_name] = _externalize(list(graph.initializer), data_name)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="sealgate-tests"
    )
    files[filename] = model.SerializeToString()
    return files


def make_onnx_string_identity() -> dict[str, bytes]:
    """An ONNX model passing a string tensor through: "text" BYTES [-1] -> "text_out" BYTES [-1]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("text_out", TensorProto.STRING, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    return {"model.onnx": model.SerializeToString()}


def make_onnx_gather(size: int = 4) -> dict[str, bytes]:
    """An ONNX table lookup: "index" INT64 [-1] -> "value" FP32 [-1] = arange(size)[index].

    An index outside [-size, size) passes every spec check yet fails inside ONNX Runtime: the case of
    a data-dependent error that must still reach the client as INVALID_ARGUMENT.
    """
    table = numpy_helper.from_array(np.arange(size, dtype=np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["value"])],
        "gather",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["n"])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    return {"model.onnx": model.SerializeToString()}


# --- TensorFlow / Keras ---------------------------------------------------------------------------
def _set_weights(model: Any, seed: int) -> None:
    """Overwrite every weight with seeded values, independent of Keras' global random state."""
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.standard_normal(w.shape) * 0.5).astype(w.dtype) for w in model.get_weights()])


def keras_mlp(in_dim: int = 8, out_dim: int = 3, seed: int = 0) -> Any:
    """The Keras functional model behind `make_tf_savedmodel`: "input" [-1, in_dim] -> "output"."""
    import keras

    inp = keras.Input(shape=(in_dim,), name=MLP_INPUT, dtype="float32")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(out_dim, name="dense_out")(hidden)
    model = keras.Model(inputs=inp, outputs={MLP_OUTPUT: out})
    _set_weights(model, seed)
    return model


def keras_two_input(seed: int = 0) -> Any:
    """A Keras model with two inputs and two outputs.

    Inputs "features" FP32 [-1, 4] and "scale" FP32 [-1, 1]; outputs "scaled" = Dense3(features) * scale
    and "score" = Dense1(features).
    """
    import keras

    features = keras.Input(shape=(4,), name="features", dtype="float32")
    scale = keras.Input(shape=(1,), name="scale", dtype="float32")
    dense = keras.layers.Dense(3, name="dense")(features)
    scaled = keras.layers.Multiply(name="multiply")([dense, scale])
    score = keras.layers.Dense(1, name="score_dense")(features)
    model = keras.Model(inputs={"features": features, "scale": scale}, outputs={"scaled": scaled, "score": score})
    _set_weights(model, seed)
    return model


def export_keras(model: Any, directory: str | Path) -> dict[str, bytes]:
    """`model.export(directory)` (a SavedModel with `serving_default`) and its files as a mapping."""
    model.export(str(directory), verbose=False)
    return read_tree(directory)


def make_tf_savedmodel(tmp_path: str | Path, in_dim: int = 8, out_dim: int = 3, seed: int = 0) -> dict[str, bytes]:
    """The SavedModel of `keras_mlp(in_dim, out_dim, seed)`, exported under tmp_path."""
    return export_keras(keras_mlp(in_dim, out_dim, seed), Path(tmp_path) / f"mlp-{in_dim}-{out_dim}-{seed}")


def make_tf_two_input_savedmodel(tmp_path: str | Path, seed: int = 0) -> dict[str, bytes]:
    """The SavedModel of `keras_two_input(seed)`, exported under tmp_path."""
    return export_keras(keras_two_input(seed), Path(tmp_path) / f"two-input-{seed}")


def make_tf_lookup_savedmodel(
    tmp_path: str | Path, vocabulary: Sequence[str] = ("apple", "banana", "cherry")
) -> dict[str, bytes]:
    """A SavedModel with an asset: "words" BYTES [-1] -> "ids" INT64 [-1] (line number in vocab, or -1).

    Exercises string tensors and a vocabulary file under assets/ that must be read at load time.
    """
    import tensorflow as tf

    source = Path(tmp_path) / "lookup-src"
    source.mkdir(parents=True, exist_ok=True)
    vocab_file = source / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary) + "\n")

    class Lookup(tf.Module):
        """Maps each word to its line in the vocabulary file."""

        def __init__(self) -> None:
            super().__init__()
            initializer = tf.lookup.TextFileInitializer(
                str(vocab_file),
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"ids": self.table.lookup(words)}

    module = Lookup()
    target = Path(tmp_path) / "lookup"
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    vocab_file.unlink()  # only the copy under assets/ remains: loading must use it
    return read_tree(target)


def make_tf_savedmodel_without_serving(tmp_path: str | Path) -> dict[str, bytes]:
    """A SavedModel whose only signature is "predict": loadable, but not servable by default."""
    import tensorflow as tf

    class Doubler(tf.Module):
        """Doubles its input."""

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 2.0 * x}

    module = Doubler()
    target = Path(tmp_path) / "no-serving"
    tf.saved_model.save(module, str(target), signatures={"predict": module.predict})
    return read_tree(target)
