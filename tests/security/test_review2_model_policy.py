"""Second review, model policy (issue 10, classes of findings 1 and 15): new places a signed model can hide
a file reference or a forbidden op.

TensorFlow, accepted by the policy on the main of the review, refused now: a checkpoint op (`SaveV2`
writes files wherever its prefix says) in a function that is named only inside the attrs of another
function call (`f: {name: "inner", attr: {g: {func: "writer"}}}`). The policy allowed checkpoint ops in
functions "nothing the loader runs reaches" and did not follow such nested names, so it took the writer
for the unreachable saver. (TensorFlow 2's Python loader still refuses the placeholder that would make
`inner` call `g`; the policy must not depend on that.) ONNX: every new case was already refused by the
walk and stays pinned here: training algorithm graphs, GRAPHS and SPARSE_TENSORS attribute lists, sparse
initializers of subgraphs, function chains, empty-domain functions, odd domains, function attribute
defaults holding graphs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from onnx import AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, TensorProto, helper

from gateway.backends.onnx_policy import check_onnx_model
from gateway.backends.tf_policy import check_saved_model
from gateway.errors import UnsafeModel
from gateway.release.client import ReleaseClient, RemoteError
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import ONNX_OPSET

SECRET = "leak-secret.txt"


# --- ONNX ------------------------------------------------------------------------------------------------
def _external(name: str = "v") -> TensorProto:
    """A UINT8 [4] tensor whose bytes ONNX Runtime would read from a file beside the working directory."""
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[4], data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", SECRET
    return tensor


def _model(
    nodes: list[NodeProto],
    *,
    initializers: tuple[TensorProto, ...] = (),
    domains: tuple[str, ...] = (),
    functions: tuple[FunctionProto, ...] = (),
) -> ModelProto:
    graph = helper.make_graph(
        nodes,
        "attack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, [4])],
        list(initializers),
    )
    imports = [helper.make_opsetid("", ONNX_OPSET), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


def _body(tensor: TensorProto) -> GraphProto:
    """A branch whose only node is a Constant holding `tensor`."""
    const = helper.make_node("Constant", [], ["b"], value=tensor)
    return helper.make_graph([const], "branch", [], [helper.make_tensor_value_info("b", TensorProto.UINT8, [4])])


def _function(name: str, nodes: list[NodeProto], domain: str = "evil", calls_local: bool = False) -> FunctionProto:
    imports = [helper.make_opsetid("", ONNX_OPSET), *([helper.make_opsetid(domain, 1)] if calls_local else [])]
    return helper.make_function(domain, name, ["x"], ["y"], nodes, imports)


def _identity() -> ModelProto:
    return _model([helper.make_node("Identity", ["x"], ["out"])])


def _training_algorithm(graph: GraphProto) -> ModelProto:
    model = _identity()
    model.training_info.add().algorithm.CopyFrom(graph)
    return model


def _sparse() -> Any:
    indices = helper.make_tensor("i", TensorProto.INT64, [4], [0, 1, 2, 3])
    return helper.make_sparse_tensor(_external(), indices, [4])


def _onnx_cases() -> dict[str, tuple[ModelProto, str]]:
    """Case -> (model, words of the refusal)."""
    external = "external data is not allowed"
    cases: dict[str, tuple[ModelProto, str]] = {}
    cases["training algorithm initializer"] = (
        _training_algorithm(helper.make_graph([], "alg", [], [], [_external()])),
        external,
    )
    branch = _body(_external())
    cases["training algorithm If branch"] = (
        _training_algorithm(
            helper.make_graph(
                [helper.make_node("If", ["c"], ["o"], then_branch=branch, else_branch=branch)], "a", [], []
            )
        ),
        external,
    )
    cases["training algorithm custom op"] = (
        _training_algorithm(
            helper.make_graph([helper.make_node("Evil", ["x"], ["o"], domain="com.evil")], "a", [], [])
        ),
        "operator domain 'com.evil' is not allowed",
    )
    node = helper.make_node("Identity", ["x"], ["y"])
    node.attribute.append(helper.make_attribute("gs", [_body(_external())]))
    cases["GRAPHS attribute list in a function"] = (
        _model(
            [helper.make_node("F", ["x"], ["out"], domain="evil")],
            domains=("evil",),
            functions=(_function("F", [node]),),
        ),
        external,
    )
    node = helper.make_node("Identity", ["x"], ["out"])
    listed = AttributeProto(name="sts", type=AttributeProto.SPARSE_TENSORS)
    listed.sparse_tensors.append(_sparse())
    node.attribute.append(listed)
    cases["SPARSE_TENSORS attribute list"] = (_model([node]), external)
    branch = _body(helper.make_tensor("k", TensorProto.UINT8, [4], [1, 2, 3, 4]))
    branch.sparse_initializer.append(_sparse())
    cases["sparse initializer of an If branch"] = (
        _model([helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)]),
        external,
    )
    node = helper.make_node("Constant", [], ["out"], value=_external())
    node.attribute[0].ref_attr_name = "unused"
    cases["main-graph attribute with ref_attr_name"] = (_model([node]), external)
    leaf = _function("H", [helper.make_node("Constant", [], ["y"], value=_external())])
    middle = _function("G", [helper.make_node("H", ["x"], ["y"], domain="evil")], calls_local=True)
    top = _function("F", [helper.make_node("G", ["x"], ["y"], domain="evil")], calls_local=True)
    cases["function chain F -> G -> H"] = (
        _model(
            [helper.make_node("F", ["x"], ["out"], domain="evil")], domains=("evil",), functions=(top, middle, leaf)
        ),
        external,
    )
    empty = _function("Leak", [helper.make_node("Constant", [], ["y"], value=_external())], domain="")
    cases["empty-domain local function"] = (
        _model([helper.make_node("Leak", ["x"], ["out"])], functions=(empty,)),
        external,
    )
    defaults = _function("F", [helper.make_node("Identity", ["x"], ["y"])])
    defaults.attribute_proto.append(helper.make_attribute("g", _body(_external())))
    cases["function attribute default graph"] = (
        _model([helper.make_node("F", ["x"], ["out"], domain="evil")], domains=("evil",), functions=(defaults,)),
        external,
    )
    cases["ai.onnx.preview.training"] = (
        _model(
            [helper.make_node("Gradient", ["x"], ["out"], domain="ai.onnx.preview.training")],
            domains=("ai.onnx.preview.training",),
        ),
        "domain 'ai.onnx.preview.training' is not allowed",
    )
    cases["domain 'ai.onnx.ml.'"] = (
        _model([helper.make_node("Identity", ["x"], ["out"], domain="ai.onnx.ml.")]),
        "operator domain 'ai.onnx.ml.' is not allowed",
    )
    cases["com.microsoft without its opset import"] = (
        _model([helper.make_node("FusedMatMul", ["x", "x"], ["out"], domain="com.microsoft")]),
        "operator domain 'com.microsoft' is not allowed",
    )
    tensor = TensorProto(name="w", data_type=TensorProto.UINT8, dims=[4])
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", SECRET
    cases["external_data entries, DEFAULT location"] = (
        _model([helper.make_node("Identity", ["w"], ["out"])], initializers=(tensor,)),
        external,
    )
    return cases


@pytest.mark.parametrize("case", list(_onnx_cases()))
def test_onnx_case_is_refused_by_the_policy(case: str) -> None:
    """The serialized model, parsed back as the backend parses it, is UnsafeModel naming the problem."""
    model, words = _onnx_cases()[case]
    parsed = ModelProto()
    parsed.ParseFromString(model.SerializeToString())
    with pytest.raises(UnsafeModel, match="unsafe ONNX model") as info:
        check_onnx_model(parsed)
    assert words in str(info.value)


# --- TensorFlow ------------------------------------------------------------------------------------------
def _saved_model(nested: str) -> dict[str, bytes]:
    """A TF2 SavedModel proto: `serve` (the loader's root) calls `inner`, naming `writer` only inside the
    call's attrs (`nested` = "func": a func attr, "list": a list(func) attr, "none": not at all); `writer`
    runs SaveV2 to a host path."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    meta = saved.meta_graphs.add()
    library = meta.graph_def.library
    writer = library.function.add()
    writer.signature.name = "__inference_writer_7"
    prefix = writer.node_def.add()
    prefix.name, prefix.op = "prefix", "Const"
    prefix.attr["dtype"].type = types_pb2.DT_STRING
    prefix.attr["value"].tensor.dtype = types_pb2.DT_STRING
    prefix.attr["value"].tensor.string_val.append(b"/tmp/written-by-a-model")
    save = writer.node_def.add()
    save.name, save.op = "save", "SaveV2"
    save.input.append("prefix:output:0")
    inner = library.function.add()
    inner.signature.name = "__inference_inner_3"
    noop = inner.node_def.add()
    noop.name, noop.op = "noop", "NoOp"
    serve = library.function.add()
    serve.signature.name = "__inference_serve_1"
    call = serve.node_def.add()
    call.name, call.op = "call", "StatefulPartitionedCall"
    call.attr["f"].func.name = inner.signature.name
    if nested == "func":
        call.attr["f"].func.attr["g"].func.name = writer.signature.name
    elif nested == "list":
        call.attr["f"].func.attr["gs"].list.func.add().name = writer.signature.name
    meta.object_graph_def.concrete_functions[serve.signature.name].SetInParent()
    node = meta.object_graph_def.nodes.add()
    node.function.concrete_functions.append(serve.signature.name)
    return {"saved_model.pb": saved.SerializeToString()}


@pytest.mark.parametrize("nested", ["func", "list"])
def test_tf_checkpoint_op_named_in_nested_attrs_is_refused(nested: str) -> None:
    """The writer is reachable from the loader's root through the nested name: SaveV2 is refused."""
    with pytest.raises(UnsafeModel, match="op 'SaveV2' is not allowed"):
        check_saved_model(_saved_model(nested))


def test_tf_saver_function_nothing_names_keeps_its_exception() -> None:
    """The narrow exception stays: a checkpoint op in a function nothing names (TF's own saver functions)."""
    check_saved_model(_saved_model("none"))


def test_tf_nested_attr_push_is_refused_on_the_live_gateway(tmp_path: Path) -> None:
    """Pushed through Release: INVALID_ARGUMENT naming SaveV2, nothing stored, audited; the gateway still lists."""
    env = harness.make_env(tmp_path).with_config(server={"rest": False, "metrics_address": ""})
    sealed = harness.seal_model(env, "tfevil", 1, _saved_model("func"), out=tmp_path / "evil.sealed")
    with GatewayThread(env.config) as gw:
        target = harness.release_target(env, gw.grpc_port, "release:tfevil")
        with ReleaseClient(target, timeout_s=60) as client:
            with pytest.raises(RemoteError) as refused:
                client.push(sealed, "tfevil", 1)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "op 'SaveV2' is not allowed" in str(refused.value)
            listed = [m for m in client.list().models if m.name == "tfevil"]
            assert all(m.serving_version == 0 for m in listed), "the refused model serves"
        deadline = time.time() + 5
        while not any(r.get("method") == "grpc:Push" for r in env.audit_lines(gw)):
            assert time.time() < deadline, "the refused push was not audited"
            time.sleep(0.05)
        lines = [r for r in env.audit_lines(gw) if r.get("method") == "grpc:Push"]
        assert [r["status"] for r in lines] == ["INVALID_ARGUMENT"]
    assert not [p for p in env.models.rglob("*") if p.is_file()]
    assert not Path("/tmp/written-by-a-model.index").exists()
