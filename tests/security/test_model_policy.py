"""Attack class: a signed model is untrusted input (issue 10, findings 1 and 15).

Models that would read host files through ONNX external data (anywhere a tensor can live), call custom
operators, or run TensorFlow file ops are pushed through the real gateway and dropped into its
repository; each is refused with its status code and an audit line, nothing is stored or served, and
a good model keeps serving.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from onnx import AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, TensorProto, helper

from gateway.backends import load_model
from gateway.backends.onnx_policy import MAX_DEPTH, check_onnx_model
from gateway.errors import UnsafeModel
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.release.client import ReleaseClient, RemoteError
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import ONNX_OPSET, make_onnx_mlp, make_tf_savedmodel, mlp_reference, read_tree

REPO = Path(__file__).resolve().parents[2]
SECRET_NAME = "leak-secret.txt"
SECRET = b"sealgate test secret " + secrets.token_hex(16).encode()  # made per run: what a leak would show
N = len(SECRET)
EVIL = "evil"
IN, HIDDEN = 16, (32,)


# --- attack models ----------------------------------------------------------------------------------
def _external(name: str, location: str, n: int = N) -> TensorProto:
    """A UINT8 tensor of n bytes whose data ONNX Runtime would read from `location`."""
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[n], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(n))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model(
    nodes: list[NodeProto],
    *,
    functions: tuple[FunctionProto, ...] = (),
    initializers: tuple[TensorProto, ...] = (),
    opsets: tuple[str, ...] = (),
) -> ModelProto:
    """A model: input "x" FP32 [1], output "out" UINT8 [N], the given nodes, functions and initializers."""
    graph = helper.make_graph(
        nodes,
        "attack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, [N])],
        list(initializers),
    )
    imports = [helper.make_opsetid("", ONNX_OPSET), *(helper.make_opsetid(d, 1) for d in opsets)]
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


def _leak_function(location: str, name: str = "Leak", domain: str = "evil") -> FunctionProto:
    """The finding-1 function: a Constant whose value is external data at `location`."""
    const = helper.make_node("Constant", [], ["c"], value=_external("v", location))
    return helper.make_function(
        domain,
        name,
        ["x"],
        ["y"],
        [const, helper.make_node("Identity", ["c"], ["y"])],
        [helper.make_opsetid("", ONNX_OPSET)],
    )


def function_constant(location: str = SECRET_NAME) -> ModelProto:
    """Finding 1 exactly: a local function with an EXTERNAL Constant at a path relative to the cwd."""
    call = helper.make_node("Leak", ["x"], ["out"], domain="evil")
    return _model([call], functions=(_leak_function(location),), opsets=("evil",))


def nested_function() -> ModelProto:
    """The leaking function called from another local function."""
    outer = helper.make_function(
        "evil",
        "Outer",
        ["x"],
        ["y"],
        [helper.make_node("Leak", ["x"], ["y"], domain="evil")],
        [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("evil", 1)],
    )
    call = helper.make_node("Outer", ["x"], ["out"], domain="evil")
    return _model([call], functions=(outer, _leak_function(SECRET_NAME)), opsets=("evil",))


def function_attribute_default() -> ModelProto:
    """A function whose attribute default holds the external tensor, read by a Constant through a reference."""
    const = NodeProto(op_type="Constant", output=["c"])
    const.attribute.append(AttributeProto(name="value", ref_attr_name="payload", type=AttributeProto.TENSOR))
    function = helper.make_function(
        "evil",
        "Leak",
        ["x"],
        ["y"],
        [const, helper.make_node("Identity", ["c"], ["y"])],
        [helper.make_opsetid("", ONNX_OPSET)],
        attributes=[],
    )
    function.attribute_proto.append(helper.make_attribute("payload", _external("d", SECRET_NAME)))
    return _model([helper.make_node("Leak", ["x"], ["out"], domain="evil")], functions=(function,), opsets=("evil",))


def _body(kind: str) -> GraphProto:
    """A subgraph that outputs the external tensor through a Constant."""
    const = helper.make_node("Constant", [], ["b"], value=_external("v", SECRET_NAME))
    outputs = [helper.make_tensor_value_info("b", TensorProto.UINT8, [N])]
    if kind == "loop":
        inputs = [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ]
        nodes = [const, helper.make_node("Identity", ["cond"], ["cond_out"])]
        outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), *outputs]
        return helper.make_graph(nodes, "loop_body", inputs, outputs)
    if kind == "scan":
        inputs = [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])]
        return helper.make_graph([const], "scan_body", inputs, outputs)
    return helper.make_graph([const], f"{kind}_branch", [], outputs)


def if_branch() -> ModelProto:
    """The external Constant in both branches of an If."""
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=_body("then"), else_branch=_body("else"))
    return _model([node], initializers=(cond,))


def loop_body() -> ModelProto:
    """The external Constant in a Loop body."""
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [1])
    cond = helper.make_tensor("keep", TensorProto.BOOL, [], [True])
    node = helper.make_node("Loop", ["trip", "keep"], ["out"], body=_body("loop"))
    return _model([node], initializers=(trip, cond))


def scan_body() -> ModelProto:
    """The external Constant in a Scan body."""
    node = helper.make_node("Scan", ["x"], ["out"], body=_body("scan"), num_scan_inputs=1)
    return _model([node])


def if_branch_initializer() -> ModelProto:
    """An external initializer of an If branch (not the main graph: never inlined, always refused)."""
    then = helper.make_graph(
        [helper.make_node("Identity", ["t"], ["b"])],
        "then_branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.UINT8, [N])],
        [_external("t", SECRET_NAME)],
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    return _model([helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=then)], initializers=(cond,))


def sparse_initializer() -> ModelProto:
    """A sparse initializer whose values are external."""
    model = _model([helper.make_node("Identity", ["s"], ["out"])])
    indices = helper.make_tensor("s_idx", TensorProto.INT64, [N], list(range(N)))
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(_external("s", SECRET_NAME), indices, [N]))
    return model


def sparse_value_attribute() -> ModelProto:
    """A Constant in a function whose sparse_value holds external values."""
    indices = helper.make_tensor("i", TensorProto.INT64, [N], list(range(N)))
    const = helper.make_node(
        "Constant", [], ["c"], sparse_value=helper.make_sparse_tensor(_external("v", SECRET_NAME), indices, [N])
    )
    function = helper.make_function(
        "evil", "Leak", ["x"], ["y"], [const, helper.make_node("Identity", ["c"], ["y"])], [helper.make_opsetid("", 17)]
    )
    return _model([helper.make_node("Leak", ["x"], ["out"], domain="evil")], functions=(function,), opsets=("evil",))


def tensors_attribute() -> ModelProto:
    """A TENSORS attribute of a function node holding an external tensor."""
    node = helper.make_node("Identity", ["x"], ["y"])
    node.attribute.append(helper.make_attribute("extra", [_external("v", SECRET_NAME)]))
    function = helper.make_function("evil", "Leak", ["x"], ["y"], [node], [helper.make_opsetid("", ONNX_OPSET)])
    return _model([helper.make_node("Leak", ["x"], ["out"], domain="evil")], functions=(function,), opsets=("evil",))


def training_info() -> ModelProto:
    """An external initializer in a training-info initialization graph."""
    model = _model([helper.make_node("Identity", ["x"], ["out"])])
    init = helper.make_graph([], "init", [], [], [_external("t", SECRET_NAME)])
    model.training_info.add().initialization.CopyFrom(init)
    return model


def custom_domain() -> ModelProto:
    """A node of a custom-op domain."""
    return _model([helper.make_node("ReadFile", ["x"], ["out"], domain="com.evil.io")], opsets=("com.evil.io",))


def microsoft_epcontext() -> ModelProto:
    """ORT's EPContext contrib op, which reads a context file named in its attribute."""
    node = helper.make_node(
        "EPContext", ["x"], ["out"], domain="com.microsoft", embed_mode=0, ep_cache_context=SECRET_NAME
    )
    return _model([node], opsets=("com.microsoft",))


def graph_initializer(location: str) -> ModelProto:
    """A main-graph external initializer (the inlined kind) at a location outside the artifact."""
    return _model([helper.make_node("Identity", ["w"], ["out"])], initializers=(_external("w", location),))


def _cases(secret: Path) -> dict[str, tuple[ModelProto, str]]:
    """Attack name -> (model, text the refusal must contain)."""
    external = "unsafe ONNX model: external data is not allowed"
    dotdot = f"../{secret.parent.name}/{SECRET_NAME}"
    return {
        "function-constant": (function_constant(), external),
        "function-constant-absolute": (function_constant(str(secret)), external),
        "function-constant-dotdot": (function_constant(dotdot), external),
        "function-constant-ort-mem-addr": (function_constant("*/_ORT_MEM_ADDR_/*"), external),
        "nested-function": (nested_function(), external),
        "function-attribute-default": (function_attribute_default(), external),
        "if-branch": (if_branch(), external),
        "if-branch-initializer": (if_branch_initializer(), external),
        "loop-body": (loop_body(), external),
        "scan-body": (scan_body(), external),
        "sparse-initializer": (sparse_initializer(), external),
        "sparse-value-attribute": (sparse_value_attribute(), external),
        "tensors-attribute": (tensors_attribute(), external),
        "training-info": (training_info(), external),
        "custom-domain": (custom_domain(), "unsafe ONNX model: opset import of domain 'com.evil.io' is not allowed"),
        "microsoft-epcontext": (microsoft_epcontext(), "opset import of domain 'com.microsoft' is not allowed"),
        "graph-initializer-absolute": (graph_initializer(str(secret)), "leaves the model folder"),
        "graph-initializer-dotdot": (graph_initializer(dotdot), "leaves the model folder"),
    }


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Env]:
    """A gateway's world with a good model, a secret beside it, and the process's cwd in that world."""
    env = harness.make_env(tmp_path_factory.mktemp("policy"))
    (env.root / SECRET_NAME).write_bytes(SECRET)
    harness.seal_model(env, "good", 1, make_onnx_mlp(IN, HIDDEN, 1, seed=1))
    before = os.getcwd()
    os.chdir(env.root)  # where the finding's relative path resolved: the server's working directory
    try:
        yield env
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    """The real gateway, in-process, on loopback."""
    with GatewayThread(env.config) as gw:
        deadline = time.time() + 30
        while not any(s.name == "good" and s.state.name == "SERVING" for s in gw.manager.status()):
            assert time.time() < deadline, "the good model never became SERVING"
            time.sleep(0.05)
        yield gw


def _release(env: harness.Env, gateway: Any) -> ReleaseClient:
    """A release client over mTLS with a token allowed to push the attack models."""
    target = harness.release_target(env, gateway.grpc_port, f"release:{EVIL} release:tfevil release:tfgood")
    return ReleaseClient(target, timeout_s=120)


def _listing(env: harness.Env) -> list[str]:
    return sorted(p.relative_to(env.models).as_posix() for p in env.models.rglob("*") if p.is_file())


def _headers(env: harness.Env) -> dict[str, str]:
    return {"authorization": "Bearer " + harness.token(env, "infer:*")}


def _good_still_serves(env: harness.Env, gateway: Any) -> None:
    """The good model answers correctly: a refusal left the server serving."""
    x = np.random.default_rng(0).standard_normal((2, IN)).astype(np.float32)
    with harness.triton(env, gateway.grpc_port) as client:
        inp = grpcclient.InferInput("input", [2, IN], "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer("good", [inp], headers=_headers(env)).as_numpy("output")
    np.testing.assert_allclose(out, mlp_reference(IN, HIDDEN, 1, seed=1)(x), rtol=1e-4, atol=1e-4)


def _not_served(env: harness.Env, gateway: Any, name: str) -> None:
    """Neither ready nor listed as SERVING nor answering an inference."""
    with harness.triton(env, gateway.grpc_port) as client:
        assert not client.is_model_ready(name, headers=_headers(env))
    assert not any(s.name == name and s.state.name == "SERVING" for s in gateway.manager.status())


def _refused_push(
    env: harness.Env, gateway: Any, tmp_path: Path, name: str, version: int, files: dict[str, bytes]
) -> str:
    """Push a sealed model that must be refused; check code, storage, audit; return the message."""
    sealed = harness.seal_model(env, name, version, files, out=tmp_path / f"{name}-{version}.sealed")
    before = _listing(env)
    with _release(env, gateway) as client, pytest.raises(RemoteError) as caught:
        client.push(sealed, name, version)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _listing(env) == before
    assert not [p for p in env.models.rglob("*") if p.name.endswith(".tmp")]
    lines = [r for r in env.audit_lines(gateway) if r.get("method") == "grpc:Push" and r.get("model") == name]
    assert any(r["status"] == "INVALID_ARGUMENT" and r.get("version") == str(version) for r in lines)
    _not_served(env, gateway, name)
    _good_still_serves(env, gateway)
    return str(caught.value)


# --- ONNX ----------------------------------------------------------------------------------------------
ONNX_CASES = list(_cases(Path("/x") / SECRET_NAME))


@pytest.mark.parametrize("case", ONNX_CASES)
def test_onnx_attack_push_is_refused(env: harness.Env, gateway: Any, tmp_path: Path, case: str) -> None:
    """Every way of pointing a tensor at a host file, and every custom domain, is refused at push."""
    model, expected = _cases(env.root / SECRET_NAME)[case]
    version = ONNX_CASES.index(case) + 1
    message = _refused_push(env, gateway, tmp_path, EVIL, version, {"model.onnx": model.SerializeToString()})
    assert expected in message
    assert SECRET.decode() not in message


def test_onnx_attack_dropped_into_the_repository_is_refused_at_load(env: harness.Env, gateway: Any) -> None:
    """A sealed finding-1 model placed straight in the repository folder becomes REFUSED, never SERVING."""
    harness.seal_model(env, "dropped", 1, {"model.onnx": function_constant().SerializeToString()})
    deadline = time.time() + 30
    while True:
        states = {s.version: (s.state.name, s.reason) for s in gateway.manager.status() if s.name == "dropped"}
        if states.get(1, ("", ""))[0] == "REFUSED":
            break
        assert time.time() < deadline, f"not refused: {states}"
        time.sleep(0.05)
    assert "unsafe ONNX model: external data is not allowed" in states[1][1]
    _not_served(env, gateway, "dropped")
    with harness.triton(env, gateway.grpc_port) as client:
        inp = grpcclient.InferInput("x", [1], "FP32")
        inp.set_data_from_numpy(np.zeros(1, np.float32))
        with pytest.raises(Exception) as caught:
            client.infer("dropped", [inp], headers=_headers(env))
    assert SECRET.decode() not in str(caught.value)
    _good_still_serves(env, gateway)


def test_multi_file_model_is_inlined_from_the_artifact_only(env: harness.Env, gateway: Any, tmp_path: Path) -> None:
    """A model whose weights live in the artifact's own .data file still serves; one whose file is only
    on the server's disk (the cwd) is refused."""
    files = make_onnx_mlp(IN, HIDDEN, 1, seed=7, external_data=True)
    model = load_model(files)
    x = np.ones((1, IN), np.float32)
    np.testing.assert_allclose(model.infer({"input": x})["output"], mlp_reference(IN, HIDDEN, 1, seed=7)(x), atol=1e-4)
    (env.root / "model.onnx.data").write_bytes(files.pop("model.onnx.data"))
    try:
        message = _refused_push(env, gateway, tmp_path, EVIL, 90, files)
    finally:
        (env.root / "model.onnx.data").unlink()
    assert "external data file 'model.onnx.data' is missing from the model" in message


def _chain(depth: int, fanout: int) -> ModelProto:
    """Local functions F0..F{depth}, each calling the previous one `fanout` times (F0 is an Identity)."""
    functions = [
        helper.make_function(
            "f", "F0", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])], [helper.make_opsetid("", 17)]
        )
    ]
    for level in range(1, depth + 1):
        nodes = [
            helper.make_node(
                f"F{level - 1}", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}" if i < fanout - 1 else "y"], domain="f"
            )
            for i in range(fanout)
        ]
        functions.append(
            helper.make_function(
                "f", f"F{level}", ["x"], ["y"], nodes, [helper.make_opsetid("", 17), helper.make_opsetid("f", 1)]
            )
        )
    graph = helper.make_graph(
        [helper.make_node(f"F{depth}", ["x"], ["out"], domain="f")],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("f", 1)], functions=functions
    )


def _nested_ifs(depth: int) -> ModelProto:
    """If nodes nested `depth` deep in each other's then-branches (else-branches are leaves)."""
    out = [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])]
    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "leaf", [], out)
    inner = leaf
    for level in range(depth):
        node = helper.make_node("If", ["c"], ["o"], then_branch=inner, else_branch=leaf)
        inner = helper.make_graph([node], f"level{level}", [], out)
    model = helper.make_model(inner, opset_imports=[helper.make_opsetid("", 17)])
    return model


def test_structure_bounds_are_enforced() -> None:
    """Exponential function expansion, self-calling functions and deep nesting are refused before ORT."""
    check_onnx_model(_chain(3, 2))
    with pytest.raises(UnsafeModel, match="more than 1000000 nodes"):
        check_onnx_model(_chain(24, 2))  # 2**24 nodes once inlined, from a model of ~50 nodes
    recursive = _chain(1, 1)
    recursive.functions[0].node[0].CopyFrom(helper.make_node("F0", ["x"], ["y"], domain="f"))
    with pytest.raises(UnsafeModel, match="calls itself"):
        check_onnx_model(recursive)
    check_onnx_model(_nested_ifs(20))  # protobuf itself refuses messages nested ~100 deep
    check_onnx_model(_chain(MAX_DEPTH - 2, 1))
    with pytest.raises(UnsafeModel, match="nest deeper than 64"):
        check_onnx_model(_chain(MAX_DEPTH + 1, 1))


def test_release_path_models_pass_the_policy() -> None:
    """What sealgate's own release path makes (float, dynamic int8, static QDQ) stays loadable."""
    from gateway.release import quantize

    data = make_onnx_mlp(IN, HIDDEN, 2)["model.onnx"]
    calibration = np.random.default_rng(0).standard_normal((32, IN)).astype(np.float32)
    for variant in (data, quantize.quantize_dynamic(data), quantize.quantize_static(data, calibration)):
        model = ModelProto()
        model.ParseFromString(variant)
        check_onnx_model(model)
        assert load_model({"model.onnx": variant}).infer({"input": calibration[:2]})["output"].shape == (2, 2)


# --- TensorFlow --------------------------------------------------------------------------------------
def _tf_file_op_model(folder: Path, kind: str, target: Path) -> dict[str, bytes]:
    """A SavedModel whose serving function reads (or writes) a host file by absolute path."""
    import tensorflow as tf

    class FileOp(tf.Module):
        """Returns the content of a host file, or writes one, on every call."""

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            if kind == "read":
                return {"y": tf.io.read_file(str(target))}
            tf.io.write_file(str(target), "written by a model")
            return {"y": tf.identity(x)}

    module = FileOp()
    out = folder / f"tf-{kind}"
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    return read_tree(out)


def test_tensorflow_file_ops_are_refused_at_push_and_load(env: harness.Env, gateway: Any, tmp_path: Path) -> None:
    """ReadFile / WriteFile in a SavedModel's functions: refused at push and at load; nothing written;
    the project's Keras-exported model still pushes and serves."""
    written = env.root / "written-by-model.txt"
    reader = _tf_file_op_model(tmp_path, "read", env.root / SECRET_NAME)
    writer = _tf_file_op_model(tmp_path, "write", written)
    assert "'ReadFile' is not allowed" in _refused_push(env, gateway, tmp_path, "tfevil", 1, reader)
    assert "'WriteFile' is not allowed" in _refused_push(env, gateway, tmp_path, "tfevil", 2, writer)
    harness.seal_model(env, "tfdropped", 1, reader)
    deadline = time.time() + 60
    while not any(s.name == "tfdropped" and s.state.name == "REFUSED" for s in gateway.manager.status()):
        assert time.time() < deadline, "the dropped TF model was not refused"
        time.sleep(0.05)
    reason = next(s.reason for s in gateway.manager.status() if s.name == "tfdropped")
    assert "unsafe TensorFlow model: op 'ReadFile' is not allowed" in reason
    _not_served(env, gateway, "tfdropped")
    assert not written.exists()

    sealed = harness.seal_model(env, "tfgood", 1, make_tf_savedmodel(tmp_path, 8, 3, seed=2), out=tmp_path / "g.sealed")
    with _release(env, gateway) as client:
        assert pb.VersionStatus.State.Name(client.push(sealed, "tfgood", 1).state) == "SERVING"
    with harness.triton(env, gateway.grpc_port) as client:
        inp = grpcclient.InferInput("input", [1, 8], "FP32")
        inp.set_data_from_numpy(np.ones((1, 8), np.float32))
        assert client.infer("tfgood", [inp], headers=_headers(env)).as_numpy("output").shape == (1, 3)


# --- defence in depth: the private working directory -----------------------------------------------
def test_enter_private_cwd_gives_an_empty_private_folder() -> None:
    """In a fresh process: cwd becomes a new empty 0700 folder under the temp dir, removed at exit."""
    code = (
        "import os, stat\n"
        "from gateway.fsutil import enter_private_cwd\n"
        "p = enter_private_cwd()\n"
        "print(p)\n"
        "print(os.getcwd() == str(p), oct(stat.S_IMODE(os.stat(p).st_mode)), os.listdir('.'))\n"
        f"print(os.path.exists({SECRET_NAME!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    path, facts, found = done.stdout.splitlines()
    assert facts == "True 0o700 []"
    assert found == "False"
    assert Path(path).parent == Path(tempfile.gettempdir()).resolve()
    assert not Path(path).exists()
