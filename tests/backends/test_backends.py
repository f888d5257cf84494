"""Backends on real models: ONNX Runtime from bytes, TensorFlow SavedModels through ram://.

Checks outputs against the runtimes used directly, specs, every refusal's message, concurrency,
that nothing is written to disk, and that importing the package does not import TensorFlow.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import ModelProto, TensorProto, helper

from gateway.backends import (
    V2_DATATYPES,
    BackendConfig,
    LoadedModel,
    TensorSpec,
    detect_framework,
    load_model,
    numpy_dtype,
    v2_from_numpy,
    v2_from_onnx,
    v2_from_tf,
    validate_inputs,
    validate_outputs,
)
from gateway.backends.onnx_backend import resolve_providers
from gateway.errors import ConfigError, InvalidInput, Unavailable, UnsafeArchive, UnsupportedFormat
from tests.models import (
    keras_mlp,
    keras_two_input,
    make_onnx_gather,
    make_onnx_mlp,
    make_onnx_string_identity,
    make_tf_lookup_savedmodel,
    make_tf_savedmodel,
    make_tf_savedmodel_without_serving,
    make_tf_two_input_savedmodel,
    mlp_reference,
)

REPO = Path(__file__).resolve().parents[2]
THREADS = 16


# --- helpers --------------------------------------------------------------------------------------
@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """Empty TMPDIR and working directory for the test, to prove nothing is written to either."""
    tmpdir, cwd = tmp_path / "tmpdir", tmp_path / "cwd"
    tmpdir.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.chdir(cwd)
    yield tmpdir, cwd


def assert_empty(*folders: Path) -> None:
    """No file or folder appeared under any of `folders`."""
    for folder in folders:
        assert sorted(folder.rglob("*")) == [], f"files written under {folder}"


def run_concurrently(
    model: LoadedModel, make_inputs: Callable[[int], dict[str, np.ndarray]], tasks: int = 64
) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Call model.infer from THREADS threads at once (released together); (inputs, outputs) per task."""
    barrier = threading.Barrier(THREADS)

    def task(index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        inputs = make_inputs(index)
        if index < THREADS:
            barrier.wait(timeout=30)
        return inputs, model.infer(inputs)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(task, range(tasks)))


def close_under_load(
    model: LoadedModel,
    make_inputs: Callable[[int], dict[str, np.ndarray]],
    check: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None],
) -> list[int]:
    """Close the model while THREADS threads call it; each call must succeed or raise Unavailable."""
    served = threading.Semaphore(0)

    def worker(index: int) -> int:
        count = 0
        while True:
            inputs = make_inputs(index * 100_000 + count)
            try:
                outputs = model.infer(inputs)
            except Unavailable:
                return count
            check(inputs, outputs)
            count += 1
            served.release()

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(worker, index) for index in range(THREADS)]
        for _ in range(4 * THREADS):
            assert served.acquire(timeout=30)
        model.close()
        return [future.result(timeout=30) for future in futures]


def rows(seed: int, batch: int, dim: int) -> np.ndarray:
    """Seeded FP32 rows."""
    return np.random.default_rng(seed).standard_normal((batch, dim)).astype(np.float32)


# --- dtypes ---------------------------------------------------------------------------------------
def test_every_v2_datatype_round_trips_through_numpy() -> None:
    for datatype in V2_DATATYPES:
        assert v2_from_numpy(numpy_dtype(datatype)) == datatype
    assert numpy_dtype("BYTES") == np.dtype(object)
    assert v2_from_numpy(np.dtype(">f4")) == "FP32"
    assert v2_from_numpy(np.dtype("S5")) == "BYTES"


def test_dtype_refusals_name_the_type() -> None:
    with pytest.raises(InvalidInput, match=r"unknown datatype 'FP8'; expected one of BOOL, UINT8"):
        numpy_dtype("FP8")
    with pytest.raises(InvalidInput, match="numpy dtype complex64 has no KServe V2 datatype"):
        v2_from_numpy(np.dtype(np.complex64))
    with pytest.raises(UnsupportedFormat, match=r"ONNX type tensor\(bfloat16\) has no KServe V2 datatype"):
        v2_from_onnx("tensor(bfloat16)")
    with pytest.raises(UnsupportedFormat, match="TensorFlow dtype bfloat16 has no KServe V2 datatype"):
        v2_from_tf("bfloat16")


def test_onnx_and_tf_type_names_map_to_v2() -> None:
    assert [v2_from_onnx(t) for t in ("tensor(float)", "tensor(double)", "tensor(float16)")] == [
        "FP32",
        "FP64",
        "FP16",
    ]
    assert [v2_from_onnx(t) for t in ("tensor(int64)", "tensor(uint8)", "tensor(bool)", "tensor(string)")] == [
        "INT64",
        "UINT8",
        "BOOL",
        "BYTES",
    ]
    assert [v2_from_tf(t) for t in ("float32", "half", "int32", "string", "bool")] == [
        "FP32",
        "FP16",
        "INT32",
        "BYTES",
        "BOOL",
    ]


# --- validate_inputs / validate_outputs -----------------------------------------------------------
SPECS = (TensorSpec("input", "FP32", (-1, 4)), TensorSpec("text", "BYTES", (-1,)))
GOOD = {"input": np.zeros((2, 4), np.float32), "text": np.array([b"a", b"b"], dtype=object)}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {**GOOD, "extra": np.zeros(1, np.float32)},
            "unknown input 'extra'; the model's inputs are ['input', 'text']",
        ),
        ({"input": GOOD["input"]}, "missing input 'text'; the model's inputs are ['input', 'text']"),
        ({**GOOD, "input": np.zeros((2, 4), np.float64)}, "input 'input': expected datatype FP32, got FP64"),
        (
            {**GOOD, "input": np.zeros((2, 4), np.complex64)},
            "input 'input': expected datatype FP32, got numpy complex64",
        ),
        (
            {**GOOD, "input": np.zeros(4, np.float32)},
            "input 'input': expected shape [-1, 4] (rank 2), got shape [4] (rank 1)",
        ),
        (
            {**GOOD, "input": np.zeros((2, 3), np.float32)},
            "input 'input': expected shape [-1, 4], got shape [2, 3] (dimension 1 must be 4, got 3)",
        ),
        ({**GOOD, "input": [[0.0] * 4]}, "input 'input': expected a numpy array, got list"),
        ({**GOOD, "text": np.zeros(2, np.float32)}, "input 'text': expected datatype BYTES, got FP32"),
        (
            {**GOOD, "text": np.array([b"a", "b"], dtype=object)},
            "input 'text': BYTES elements must be bytes, element 1 is str",
        ),
    ],
    ids=["unknown", "missing", "dtype", "numpy-only-dtype", "rank", "dimension", "not-array", "bytes", "str"],
)
def test_validate_inputs_refusals_say_what_was_wrong(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_inputs(SPECS, inputs)
    assert str(caught.value) == message


def test_validate_inputs_accepts_any_size_on_dynamic_dims_and_fixed_bytes() -> None:
    validate_inputs(SPECS, GOOD)
    validate_inputs(SPECS, {"input": np.zeros((0, 4), np.float32), "text": np.array([], dtype=object)})
    validate_inputs(SPECS, {"input": np.zeros((7, 4), np.float32), "text": np.array([b"ab", b"c"])})
    anything = (TensorSpec("x", "INT64", (), rank_known=False),)
    validate_inputs(anything, {"x": np.zeros((2, 3, 4), np.int64)})
    validate_inputs(anything, {"x": np.array(3, np.int64)})


def test_validate_outputs() -> None:
    outputs = (TensorSpec("a", "FP32", (-1,)), TensorSpec("b", "FP32", (-1,)))
    assert validate_outputs(outputs, None) == ("a", "b")
    assert validate_outputs(outputs, []) == ("a", "b")
    assert validate_outputs(outputs, ["b", "b"]) == ("b",)
    with pytest.raises(InvalidInput) as caught:
        validate_outputs(outputs, ["a", "c"])
    assert str(caught.value) == "unknown output 'c'; the model's outputs are ['a', 'b']"


def test_tensor_spec_and_config_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown datatype 'FLOAT'"):
        TensorSpec("x", "FLOAT", (1,))
    with pytest.raises(ValueError, match=r"bad shape \[-2\]"):
        TensorSpec("x", "FP32", (-2,))
    with pytest.raises(ConfigError, match="thread counts"):
        BackendConfig(intra_op_threads=-1)
    with pytest.raises(ConfigError, match="not one string"):
        BackendConfig(providers="CPUExecutionProvider")  # type: ignore[arg-type]


# --- detect_framework / paths ---------------------------------------------------------------------
def test_detect_framework_finds_onnx_and_savedmodel() -> None:
    assert detect_framework({"model.onnx": b"", "provenance.json": b"{}", "model.sig": b""}) == "onnx"
    assert detect_framework({"onnx/model.onnx": b"", "onnx/model.onnx.data": b""}) == "onnx"
    assert detect_framework({"saved_model.pb": b"", "variables/variables.index": b""}) == "tensorflow"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no model found: expected one *.onnx file or saved_model.pb at the root; found no files"),
        (
            {"sub/saved_model.pb": b"", "provenance.json": b""},
            "no model found: expected one *.onnx file or saved_model.pb at the root; "
            "found provenance.json, sub/saved_model.pb",
        ),
        ({"b/c.onnx": b"", "a.onnx": b""}, "more than one ONNX file in the model: a.onnx, b/c.onnx"),
        (
            {"saved_model.pb": b"", "model.onnx": b""},
            "ambiguous model: the files fit more than one backend (onnx, tensorflow); found model.onnx, saved_model.pb",
        ),
    ],
    ids=["empty", "nested-savedmodel", "two-onnx", "both"],
)
def test_detect_framework_refusals(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(UnsupportedFormat) as caught:
        detect_framework(files)
    assert str(caught.value) == message


@pytest.mark.parametrize("path", ["../model.onnx", "/model.onnx", "a//model.onnx", "a\\model.onnx", "./model.onnx"])
def test_load_model_refuses_unsafe_paths(path: str) -> None:
    with pytest.raises(UnsafeArchive, match="unsafe path in model files"):
        load_model({path: make_onnx_mlp(4, (4,), 1)["model.onnx"]})


# --- ONNX -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_mlp_files() -> dict[str, bytes]:
    """The default 64-256-256-1 MLP."""
    return make_onnx_mlp()


@pytest.fixture(scope="module")
def onnx_mlp(onnx_mlp_files: dict[str, bytes]) -> LoadedModel:
    """The MLP loaded through the backend."""
    return load_model(onnx_mlp_files)


def test_onnx_specs(onnx_mlp: LoadedModel) -> None:
    assert onnx_mlp.platform == "onnxruntime_onnx"
    assert onnx_mlp.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
    assert onnx_mlp.outputs == (TensorSpec("output", "FP32", (-1, 1)),)
    assert isinstance(onnx_mlp, LoadedModel)


def test_onnx_outputs_equal_onnxruntime_on_the_same_bytes(
    onnx_mlp: LoadedModel, onnx_mlp_files: dict[str, bytes]
) -> None:
    direct = ort.InferenceSession(onnx_mlp_files["model.onnx"], providers=["CPUExecutionProvider"])
    x = rows(1, 32, 64)
    got = onnx_mlp.infer({"input": x})
    assert list(got) == ["output"]
    np.testing.assert_array_equal(got["output"], direct.run(["output"], {"input": x})[0])
    np.testing.assert_allclose(got["output"], mlp_reference()(x), rtol=1e-4, atol=1e-4)
    assert onnx_mlp.infer({"input": x}, outputs=["output"])["output"].shape == (32, 1)


def test_onnx_refuses_bad_requests_before_running(onnx_mlp: LoadedModel) -> None:
    with pytest.raises(InvalidInput) as caught:
        onnx_mlp.infer({"input": rows(0, 2, 63)})
    assert (
        str(caught.value)
        == "input 'input': expected shape [-1, 64], got shape [2, 63] (dimension 1 must be 64, got 63)"
    )
    with pytest.raises(InvalidInput) as caught:
        onnx_mlp.infer({"input": rows(0, 2, 64)}, outputs=["logits"])
    assert str(caught.value) == "unknown output 'logits'; the model's outputs are ['output']"


def test_onnx_data_dependent_runtime_error_is_invalid_input() -> None:
    model = load_model(make_onnx_gather(4))
    np.testing.assert_array_equal(model.infer({"index": np.array([3, -1, 0])})["value"], [3.0, 3.0, 0.0])
    with pytest.raises(InvalidInput, match="the model could not run on these inputs"):
        model.infer({"index": np.array([9])})


def test_onnx_concurrent_infer_from_16_threads(onnx_mlp: LoadedModel) -> None:
    reference = mlp_reference()
    results = run_concurrently(onnx_mlp, lambda i: {"input": rows(100 + i, 1 + i % 8, 64)})
    assert len(results) == 64
    for inputs, outputs in results:
        np.testing.assert_allclose(outputs["output"], reference(inputs["input"]), rtol=1e-4, atol=1e-4)


def test_onnx_close_during_traffic_lets_calls_finish(onnx_mlp_files: dict[str, bytes]) -> None:
    model, reference = load_model(onnx_mlp_files), mlp_reference()

    def check(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        np.testing.assert_allclose(outputs["output"], reference(inputs["input"]), rtol=1e-4, atol=1e-4)

    counts = close_under_load(model, lambda i: {"input": rows(i, 4, 64)}, check)
    assert sum(counts) >= 4 * THREADS


@pytest.mark.parametrize("filename", ["model.onnx", "onnx/mlp.onnx"])
def test_onnx_external_data_is_read_from_memory(filename: str) -> None:
    files = make_onnx_mlp(16, (32,), 2, seed=3, external_data=True, filename=filename)
    assert sorted(files) == sorted([filename, f"{filename}.data"])
    x = rows(2, 5, 16)
    np.testing.assert_allclose(
        load_model(files).infer({"input": x})["output"], mlp_reference(16, (32,), 2, seed=3)(x), rtol=1e-4, atol=1e-4
    )


def test_onnx_missing_external_data_is_refused_even_if_on_disk(sandbox: tuple[Path, Path]) -> None:
    _, cwd = sandbox
    files = make_onnx_mlp(16, (32,), 2, external_data=True)
    (cwd / "model.onnx.data").write_bytes(files.pop("model.onnx.data"))
    with pytest.raises(UnsupportedFormat) as caught:
        load_model(files)
    assert str(caught.value) == "model.onnx: external data file 'model.onnx.data' is missing from the model"


def test_onnx_external_data_outside_the_model_is_refused() -> None:
    files = make_onnx_mlp(16, (32,), 2, external_data=True)
    proto = ModelProto()
    proto.ParseFromString(files["model.onnx"])
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    files["model.onnx"] = proto.SerializeToString()
    with pytest.raises(UnsafeArchive) as caught:
        load_model(files)
    assert str(caught.value) == "model.onnx: external data location '../secret.bin' leaves the model folder"


def test_onnx_string_tensors_round_trip_as_bytes() -> None:
    model = load_model(make_onnx_string_identity())
    assert model.inputs == (TensorSpec("text", "BYTES", (-1,)),)
    text = np.array([b"hello", "h\u00e9llo \u2603".encode(), b""], dtype=object)
    out = model.infer({"text": text})["text_out"]
    assert out.dtype == object
    assert list(out) == list(text)
    assert all(type(element) is bytes for element in out)
    with pytest.raises(InvalidInput) as caught:
        model.infer({"text": np.array([b"ok", b"\xff\xfe"], dtype=object)})
    assert str(caught.value) == "input 'text': ONNX string tensors hold UTF-8 text; element 1 is not UTF-8"


def test_onnx_unknown_rank_input_accepts_any_shape() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "any",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = load_model(
        {"m.onnx": helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()}
    )
    assert model.inputs == (TensorSpec("x", "FP32", (), rank_known=False),)
    x = rows(0, 3, 2)[None]
    np.testing.assert_array_equal(model.infer({"x": x})["y"], x)


def test_onnx_unloadable_bytes_are_unsupported_format() -> None:
    with pytest.raises(UnsupportedFormat, match=r"^model\.onnx is not an ONNX model \(protobuf does not parse\)$"):
        load_model({"model.onnx": b"not a model", "provenance.json": b"{}"})
    with pytest.raises(UnsupportedFormat, match=r"^ONNX Runtime cannot load model\.onnx: "):
        load_model({"model.onnx": ModelProto().SerializeToString()})


def test_provider_resolution_falls_back_to_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.backends.onnx_backend"):
        chosen = resolve_providers(
            ("CUDAExecutionProvider", "TensorrtExecutionProvider"), ["AzureExecutionProvider", "CPUExecutionProvider"]
        )
    assert chosen == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is configured but not available" in caplog.text
    assert "TensorrtExecutionProvider is configured but not available" in caplog.text
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(("CUDAExecutionProvider", "CUDAExecutionProvider"), both) == both


def test_onnx_configured_gpu_provider_runs_on_what_is_available(onnx_mlp_files: dict[str, bytes]) -> None:
    config = BackendConfig(providers=("CUDAExecutionProvider", "CPUExecutionProvider"), intra_op_threads=1)
    model = load_model(onnx_mlp_files, config)
    expected = resolve_providers(config.providers, ort.get_available_providers())
    assert list(model.providers) == expected  # type: ignore[attr-defined]
    x = rows(4, 3, 64)
    np.testing.assert_allclose(model.infer({"input": x})["output"], mlp_reference()(x), rtol=1e-4, atol=1e-4)


def test_onnx_load_and_infer_write_nothing(sandbox: tuple[Path, Path], onnx_mlp_files: dict[str, bytes]) -> None:
    model = load_model({**onnx_mlp_files, "provenance.json": b"{}"})
    model.infer({"input": rows(5, 4, 64)})
    model.close()
    assert_empty(*sandbox)


def test_closed_onnx_model_is_unavailable() -> None:
    model = load_model(make_onnx_mlp(4, (4,), 1))
    model.close()
    with pytest.raises(Unavailable, match="model is closed"):
        model.infer({"input": rows(0, 1, 4)})


def test_importing_backends_and_serving_onnx_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from gateway.backends import load_model\n"
        "from tests.models import make_onnx_mlp\n"
        "m = load_model(make_onnx_mlp(4, (4,), 1))\n"
        "assert m.infer({'input': np.ones((1, 4), np.float32)})['output'].shape == (1, 1)\n"
        "print(sorted(n for n in ('tensorflow', 'keras', 'tf_keras') if n in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- TensorFlow -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """The TF test models, exported once for the module."""
    folder = tmp_path_factory.mktemp("tf-models")
    return {
        "mlp": make_tf_savedmodel(folder),
        "two": make_tf_two_input_savedmodel(folder),
        "lookup": make_tf_lookup_savedmodel(folder),
    }


@pytest.fixture(scope="module")
def tf_models(tf_files: dict[str, dict[str, bytes]]) -> dict[str, LoadedModel]:
    """The TF test models loaded through the backend."""
    return {name: load_model(files) for name, files in tf_files.items()}


def test_tf_specs(tf_models: Mapping[str, LoadedModel]) -> None:
    mlp, two, lookup = tf_models["mlp"], tf_models["two"], tf_models["lookup"]
    assert mlp.platform == "tensorflow_savedmodel"
    assert mlp.inputs == (TensorSpec("input", "FP32", (-1, 8)),)
    assert mlp.outputs == (TensorSpec("output", "FP32", (-1, 3)),)
    assert two.inputs == (TensorSpec("features", "FP32", (-1, 4)), TensorSpec("scale", "FP32", (-1, 1)))
    assert two.outputs == (TensorSpec("scaled", "FP32", (-1, 3)), TensorSpec("score", "FP32", (-1, 1)))
    assert lookup.inputs == (TensorSpec("words", "BYTES", (-1,)),)
    assert lookup.outputs == (TensorSpec("ids", "INT64", (-1,)),)


def test_tf_outputs_equal_the_keras_model(tf_models: Mapping[str, LoadedModel]) -> None:
    x = rows(7, 16, 8)
    got = tf_models["mlp"].infer({"input": x})
    assert list(got) == ["output"]
    assert got["output"].dtype == np.float32
    np.testing.assert_allclose(got["output"], keras_mlp()(x)["output"].numpy(), rtol=1e-5, atol=1e-6)

    features, scale = rows(8, 5, 4), rows(9, 5, 1)
    expected = keras_two_input()({"features": features, "scale": scale})
    both = tf_models["two"].infer({"features": features, "scale": scale})
    for name in ("scaled", "score"):
        np.testing.assert_allclose(both[name], expected[name].numpy(), rtol=1e-5, atol=1e-6)
    only = tf_models["two"].infer({"features": features, "scale": scale}, outputs=["score"])
    assert list(only) == ["score"]


def test_tf_assets_and_strings_survive_removal_of_the_ram_copy(tf_models: Mapping[str, LoadedModel]) -> None:
    words = np.array([b"banana", b"kiwi", b"cherry", b"apple"], dtype=object)
    ids = tf_models["lookup"].infer({"words": words})["ids"]
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [1, -1, 2, 0])


def test_tf_refuses_bad_requests(tf_models: Mapping[str, LoadedModel]) -> None:
    with pytest.raises(InvalidInput) as caught:
        tf_models["mlp"].infer({"input": rows(0, 2, 8).astype(np.float64)})
    assert str(caught.value) == "input 'input': expected datatype FP32, got FP64"
    with pytest.raises(InvalidInput) as caught:
        tf_models["two"].infer({"features": rows(0, 2, 4)})
    assert str(caught.value) == "missing input 'scale'; the model's inputs are ['features', 'scale']"


def test_tf_concurrent_infer_from_16_threads(tf_models: Mapping[str, LoadedModel]) -> None:
    reference = keras_mlp()
    results = run_concurrently(tf_models["mlp"], lambda i: {"input": rows(200 + i, 1 + i % 8, 8)})
    for inputs, outputs in results:
        expected = reference(inputs["input"])["output"].numpy()
        np.testing.assert_allclose(outputs["output"], expected, rtol=1e-5, atol=1e-6)


def test_tf_close_during_traffic_lets_calls_finish(tf_files: dict[str, dict[str, bytes]]) -> None:
    model, reference = load_model(tf_files["mlp"]), keras_mlp()

    def check(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        expected = reference(inputs["input"])["output"].numpy()
        np.testing.assert_allclose(outputs["output"], expected, rtol=1e-5, atol=1e-6)

    counts = close_under_load(model, lambda i: {"input": rows(i, 2, 8)}, check)
    assert sum(counts) >= 4 * THREADS


def test_tf_load_writes_nothing_and_clears_ram(
    sandbox: tuple[Path, Path], tf_files: dict[str, dict[str, bytes]], tf_models: Mapping[str, LoadedModel]
) -> None:
    import tensorflow as tf

    before = set(tf.io.gfile.listdir("ram://sealgate"))
    model = load_model({**tf_files["mlp"], "provenance.json": b"{}"})
    assert set(tf.io.gfile.listdir("ram://sealgate")) == before
    assert model.infer({"input": rows(3, 2, 8)})["output"].shape == (2, 3)
    model.close()
    with pytest.raises(Unavailable, match="model is closed"):
        model.infer({"input": rows(3, 2, 8)})
    assert_empty(*sandbox)


def test_tf_without_serving_default_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormat) as caught:
        load_model(make_tf_savedmodel_without_serving(tmp_path))
    assert str(caught.value) == "the SavedModel has no 'serving_default' signature (it has: predict)"


def test_tf_corrupt_savedmodel_is_refused(tf_files: dict[str, dict[str, bytes]]) -> None:
    corrupt = {**tf_files["mlp"], "saved_model.pb": b"\x00garbage"}
    with pytest.raises(UnsupportedFormat, match=r"^TensorFlow cannot load the SavedModel: "):
        load_model(corrupt)
    missing_variables = {k: v for k, v in tf_files["mlp"].items() if not k.startswith("variables/")}
    with pytest.raises(UnsupportedFormat, match=r"^TensorFlow cannot load the SavedModel: "):
        load_model(missing_variables)


def test_tf_dtypes_map_to_v2() -> None:
    import tensorflow as tf

    assert [v2_from_tf(d) for d in (tf.float32, tf.float16, tf.float64, tf.int8, tf.uint64, tf.bool, tf.string)] == [
        "FP32",
        "FP16",
        "FP64",
        "INT8",
        "UINT64",
        "BOOL",
        "BYTES",
    ]
    with pytest.raises(UnsupportedFormat):
        v2_from_tf(tf.bfloat16)
