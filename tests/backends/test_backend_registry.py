"""Backends register through one protocol: a fake "sum" backend is detected, loaded, sealed and served.

The fake backend (tests/fakes.py) is declared entirely in the tests, so these show that adding a backend
needs nothing in gateway/server/ or gateway/artifact/: a real one is its module plus one `register(...)`
line in gateway/backends/registry.py. Whether a model runs on the event loop is the backend's word.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from gateway.artifact.sealed import inspect
from gateway.backends import detect_framework, load_model, registry
from gateway.errors import UnsupportedFormat
from gateway.server.app import GatewayThread
from tests import fakes, harness

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_backends_declare_name_platform_and_dispatch() -> None:
    """ONNX and TensorFlow are declared once, ONNX inline and TensorFlow in a worker thread."""
    declared = {b.name: (b.platform, b.runs_inline) for b in registry.backends()}
    assert declared["onnx"] == ("onnxruntime_onnx", True)
    assert declared["tensorflow"] == ("tensorflow_savedmodel", False)
    assert registry.runs_inline("onnxruntime_onnx") and not registry.runs_inline("tensorflow_savedmodel")
    assert not registry.runs_inline("no-such-platform")


def test_declarations_import_no_runtime() -> None:
    """Importing the registry, the loader and the artifact layer imports neither ONNX Runtime nor TensorFlow."""
    script = (
        "import json, sys\nimport gateway.backends.registry, gateway.backends.loader, gateway.artifact.sealed\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "onnxruntime" not in loaded and "tensorflow" not in loaded


def test_a_registered_backend_is_detected_loaded_and_removed() -> None:
    """load_model picks the fake backend by its files; unregistered, the same files are refused again."""
    with fakes.sum_backend() as backend:
        assert detect_framework(fakes.sum_files(3)) == "sum"
        assert registry.framework_of(["model.sum", "provenance.json"]) == "sum"
        model = load_model(fakes.sum_files(3))
        assert model.platform == backend.platform
        out = model.infer({"x": np.array([[1, 2, 3], [4, 5, 6]], np.float32)})["sum"]
        np.testing.assert_array_equal(out, [[6.0], [15.0]])
        with pytest.raises(UnsupportedFormat, match="ambiguous model: the files fit more than one backend"):
            load_model({**fakes.sum_files(3), "model.onnx": b""})
    with pytest.raises(UnsupportedFormat, match=r"no model found: expected one \*\.onnx file or saved_model\.pb"):
        load_model(fakes.sum_files(3))
    assert registry.framework_of(["model.sum"]) == registry.UNKNOWN


def test_a_duplicate_registration_is_refused() -> None:
    """A second backend under a taken name or platform is refused; the registry is unchanged."""
    before = registry.backends()
    with fakes.sum_backend(), pytest.raises(ValueError, match="clashes"):
        registry.register(fakes.sum_backend_declaration())
    with pytest.raises(ValueError, match="clashes with the registered 'onnx'"):
        registry.register(registry.Backend("onnx", "x", lambda names: False, registry.backends()[0].load, True, "x"))
    assert registry.backends() == before


def _framework_names(source: str) -> list[str]:
    """String constants in `source` that name a framework, and any function called detect_framework."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.lower()
            if text in ("onnx", "tensorflow", "saved_model.pb", ".onnx") or text.startswith("onnxruntime"):
                found.append(node.value)
        if isinstance(node, ast.FunctionDef) and node.name == "detect_framework":
            found.append("def detect_framework")
    return found


@pytest.mark.parametrize("layer", ["server", "artifact"])
def test_server_and_artifact_name_no_framework(layer: str) -> None:
    """No module of gateway/server/ or gateway/artifact/ names a framework or detects one itself."""
    for path in sorted((ROOT / "gateway" / layer).glob("*.py")):
        assert _framework_names(path.read_text()) == [], path.name


# --- served through the real gateway --------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Env, Any]]:
    """A gateway serving two fake models: "adder" (worker thread) and "adder-inline" (event loop)."""
    with fakes.sum_backend(), fakes.sum_backend("sum-inline", ".sumi", runs_inline=True):
        env = harness.make_env(tmp_path_factory.mktemp("registry"))
        harness.seal_model(env, "adder", 1, fakes.sum_files(3))
        harness.seal_model(env, "adder-inline", 1, fakes.sum_files(3, ".sumi"))
        with GatewayThread(env.config) as gw:
            deadline = time.time() + 60
            while time.time() < deadline and not all(
                any(s.name == n and s.state.name == "SERVING" for s in gw.manager.status())
                for n in ("adder", "adder-inline")
            ):
                time.sleep(0.1)
            yield env, gw


def _model(platform: str) -> fakes.SumModel:
    """The most recent fake model loaded with this platform."""
    return next(m for m in reversed(fakes.LOADED) if m.platform == platform)


def test_seal_names_the_registered_backend(served: tuple[harness.Env, Any]) -> None:
    """The artifact header's framework comes from the registry, not from a second detector."""
    env, _ = served
    assert inspect(env.models / "adder" / "1.sealed").framework == "sum"
    assert inspect(env.models / "adder-inline" / "1.sealed").framework == "sum-inline"


def test_grpc_serves_the_fake_backend_where_it_says(served: tuple[harness.Env, Any]) -> None:
    """tritonclient gets the sums and the declared platform; inline runs on the loop, the other in a thread."""
    env, gw = served
    headers = {"authorization": "Bearer " + harness.token(env, "infer:*")}
    x = np.array([[1, 2, 3], [0.5, 0.5, 0.5]], np.float32)
    threaded, inline = _model("sealgate_sum").threads, _model("sealgate_sum_inline").threads
    seen = len(threaded), len(inline)  # the load-time smoke test ran each once already
    with harness.triton(env, gw.grpc_port) as client:
        for name in ("adder", "adder-inline"):
            inp = grpcclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer(name, [inp], headers=headers)
            np.testing.assert_array_equal(result.as_numpy("sum"), [[6.0], [1.5]])
        assert client.get_model_metadata("adder", headers=headers).platform == "sealgate_sum"
        assert client.is_server_live(headers=headers)
    threaded, inline = threaded[seen[0] :], inline[seen[1] :]
    executor = ("asyncio_", "uvloop_")  # the loop's default executor names its threads after the loop
    assert len(threaded) == 1 and threaded[0].startswith(executor)
    assert len(inline) == 1 and not inline[0].startswith(executor)


def test_rest_serves_the_fake_backend_where_it_says(served: tuple[harness.Env, Any]) -> None:
    """TF Serving REST predict reaches the same fake models and dispatches them by the same declaration."""
    env, gw = served
    inline = _model("sealgate_sum_inline")
    before = len(inline.threads)
    answer = requests.post(
        f"https://127.0.0.1:{gw.rest_port}/v1/models/adder-inline:predict",
        json={"instances": [[1, 2, 3]]},
        headers={"authorization": "Bearer " + harness.token(env, "infer:*")},
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        verify=str(env.certs / "ca.pem"),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [[6.0]]
    assert len(inline.threads) == before + 1 and not inline.threads[-1].startswith("asyncio_")
