"""Triton's gRPC extensions through stock `tritonclient.grpc`: ModelConfig, ModelStatistics, repository load and
unload (admin only, audited, done by the manager's explicit rollback pin), and server reflection v1 beside
v1alpha, down to a client that learns the API from reflection alone.

The models are the fake "sum" backend of tests/fakes.py (x FP32 [-1, 3] -> sum FP32 [-1, 1]), so no ML
runtime runs; the gateway, TLS, tokens and clients are the real ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc
from tritonclient.utils import InferenceServerException

from gateway.errors import InvalidInput
from gateway.protos.reflection.v1 import reflection_pb2 as v1_pb
from gateway.protos.reflection.v1 import reflection_pb2_grpc as v1_grpc
from gateway.server.app import Gateway, GatewayThread
from gateway.server.dataplane import version_to_load
from tests import fakes, harness
from tests.security.mint import channel

ADDER, COUNTED, SWAP = "adder", "counted", "swap"
ADMIN_SUB = "operator"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Env, Gateway]]:
    """A gateway serving adder v1+v2, counted v1 and swap v1+v2 (latest(1): each model's v2 is the default)."""
    with fakes.sum_backend():
        env = harness.make_env(tmp_path_factory.mktemp("extensions"))
        for name, version in ((ADDER, 1), (ADDER, 2), (COUNTED, 1), (SWAP, 1), (SWAP, 2)):
            harness.seal_model(env, name, version, fakes.sum_files(3))
        with GatewayThread(env.config) as gw:
            deadline = time.time() + 60
            want = {ADDER: 2, COUNTED: 1, SWAP: 2}
            while time.time() < deadline and any(gw.manager.default_version(n) != v for n, v in want.items()):
                time.sleep(0.1)
            assert {n: gw.manager.default_version(n) for n in want} == want
            yield env, gw


def _headers(env: harness.Env, scopes: str, sub: str = "tester") -> dict[str, str]:
    return {"authorization": "Bearer " + harness.token(env, scopes, sub=sub)}


def _code(fn: Callable[[], Any]) -> str:
    """The status a tritonclient call fails with (AssertionError if it succeeds)."""
    try:
        fn()
    except InferenceServerException as exc:
        return str(exc.status())
    raise AssertionError("the call succeeded")


def _infer(client: Any, model: str, x: np.ndarray, headers: dict[str, str]) -> Any:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], headers=headers)


def _audit(env: harness.Env, gw: Gateway, seen: int, method: str) -> list[tuple[str | None, str | None, str]]:
    """(subject, model, status) of the audit records of `method` written since record `seen`."""
    return [(r["subject"], r["model"], r["status"]) for r in env.audit_lines(gw)[seen:] if r["method"] == method]


# --- ModelConfig ----------------------------------------------------------------------------------
def test_model_config_reports_platform_tensors_and_dims(served: tuple[harness.Env, Gateway]) -> None:
    """get_model_config: the served version's platform, no batching dimension, each tensor's type and dims."""
    env, gw = served
    headers = _headers(env, f"infer:{ADDER}")
    with harness.triton(env, gw.grpc_port) as client:
        config = client.get_model_config(ADDER, headers=headers).config
        as_json = client.get_model_config(ADDER, "2", headers=headers, as_json=True)["config"]
        bad_version = _code(lambda: client.get_model_config(ADDER, "1" * 300, headers=headers))
        not_serving = _code(lambda: client.get_model_config(ADDER, "1", headers=headers))
        denied = _code(lambda: client.get_model_config(ADDER, headers=_headers(env, f"infer:{COUNTED}")))
        anonymous = _code(lambda: client.get_model_config(ADDER))
    assert (config.name, config.platform, config.max_batch_size) == (ADDER, fakes.PLATFORM, 0)
    assert list(config.version_policy.specific.versions) == [2]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", 11, [-1, 3])]  # TYPE_FP32
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("sum", 11, [-1, 1])]
    assert as_json["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", "3"]}
    assert bad_version == "StatusCode.INVALID_ARGUMENT"
    assert not_serving == "StatusCode.UNAVAILABLE"  # stored and verified, but latest(1) serves v2 only
    assert (denied, anonymous) == ("StatusCode.PERMISSION_DENIED", "StatusCode.UNAUTHENTICATED")


def test_a_bad_version_is_refused_with_a_clipped_echo(served: tuple[harness.Env, Gateway]) -> None:
    """A 300-digit version comes back INVALID_ARGUMENT with the echo clipped, never the whole input."""
    env, gw = served
    with harness.triton(env, gw.grpc_port) as client, pytest.raises(InferenceServerException) as err:
        client.get_model_config(ADDER, "9" * 300, headers=_headers(env, f"infer:{ADDER}"))
    assert "9" * 129 not in str(err.value) and len(str(err.value)) < 600


# --- ModelStatistics ------------------------------------------------------------------------------
def test_statistics_count_requests_and_time_each_phase(served: tuple[harness.Env, Gateway]) -> None:
    """Three inferences and one bad one: success 3 / fail 1, each phase counted and timed, as Triton says."""
    env, gw = served
    headers = _headers(env, f"infer:{COUNTED}")
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    with harness.triton(env, gw.grpc_port) as client:
        before = client.get_inference_statistics(COUNTED, headers=headers).model_stats
        for _ in range(3):
            np.testing.assert_array_equal(_infer(client, COUNTED, x, headers).as_numpy("sum"), [[6.0], [15.0]])
        assert _code(lambda: _infer(client, COUNTED, np.zeros((1, 5), np.float32), headers)).endswith("ARGUMENT")
        after = client.get_inference_statistics(COUNTED, "1", headers=headers).model_stats
    assert [(s.name, s.version, s.inference_stats.success.count) for s in before] == [(COUNTED, "1", 0)]
    (stats,) = after
    infer = stats.inference_stats
    assert (stats.name, stats.version, stats.inference_count, stats.execution_count) == (COUNTED, "1", 3, 3)
    assert (infer.success.count, infer.fail.count) == (3, 1) and infer.fail.ns > 0
    phases = (infer.queue, infer.compute_input, infer.compute_infer, infer.compute_output)
    assert [p.count for p in phases] == [3, 3, 3, 3]
    assert all(p.ns > 0 for p in phases[1:])  # the fake model runs in a worker: decode, run, encode all timed
    assert sum(p.ns for p in phases) <= infer.success.ns
    assert abs(stats.last_inference / 1000 - time.time()) < 60


def test_statistics_without_a_name_list_only_what_the_token_may_infer(served: tuple[harness.Env, Gateway]) -> None:
    """All models: each serving version the caller may infer on, nothing else; a named model needs its scope."""
    env, gw = served
    with harness.triton(env, gw.grpc_port) as client:
        mine = client.get_inference_statistics(headers=_headers(env, f"infer:{COUNTED} fetch:{ADDER}")).model_stats
        every = client.get_inference_statistics(headers=_headers(env, "infer:*")).model_stats
        seen = len(env.audit_lines(gw))
        denied = _code(lambda: client.get_inference_statistics(ADDER, headers=_headers(env, f"infer:{COUNTED}")))
        unknown = _code(lambda: client.get_inference_statistics("nope", headers=_headers(env, "infer:*")))
        anonymous = _code(lambda: client.get_inference_statistics(ADDER))
    assert [(s.name, s.version) for s in mine] == [(COUNTED, "1")]
    assert {(s.name, s.version) for s in every} == {(ADDER, "2"), (COUNTED, "1"), (SWAP, "2")}
    assert (denied, unknown, anonymous) == (
        "StatusCode.PERMISSION_DENIED",
        "StatusCode.NOT_FOUND",
        "StatusCode.UNAUTHENTICATED",
    )
    assert ("tester", ADDER, "PERMISSION_DENIED") in _audit(env, gw, seen, "grpc:ModelStatistics")


# --- RepositoryModelLoad / Unload -----------------------------------------------------------------
def _default(client: Any, headers: dict[str, str]) -> str:
    """The version an unversioned inference on `swap` reaches now."""
    return str(_infer(client, SWAP, np.ones((1, 3), np.float32), headers).get_response().model_version)


def test_load_and_unload_need_admin_and_are_audited(served: tuple[harness.Env, Gateway]) -> None:
    """An infer token is PERMISSION_DENIED, no token UNAUTHENTICATED, nothing changes; admin's calls are audited."""
    env, gw = served
    before = [(s.name, s.version, s.state.name) for s in gw.manager.status()]
    seen = len(env.audit_lines(gw))
    infer_only = _headers(env, f"infer:{SWAP} fetch:{SWAP} release:{SWAP}")
    with harness.triton(env, gw.grpc_port) as client:
        assert _code(lambda: client.load_model(SWAP, headers=infer_only)) == "StatusCode.PERMISSION_DENIED"
        assert _code(lambda: client.unload_model(SWAP, headers=infer_only)) == "StatusCode.PERMISSION_DENIED"
        assert _code(lambda: client.load_model(SWAP)) == "StatusCode.UNAUTHENTICATED"
        assert _code(lambda: client.unload_model(SWAP)) == "StatusCode.UNAUTHENTICATED"
        client.load_model(SWAP, headers=_headers(env, "admin", sub=ADMIN_SUB))  # v2 already serves: no change
    assert [(s.name, s.version, s.state.name) for s in gw.manager.status()] == before
    assert _audit(env, gw, seen, "grpc:RepositoryModelLoad") == [
        (None, SWAP, "PERMISSION_DENIED"),  # the guard records a refused call's certificate identity, no subject
        (None, None, "UNAUTHENTICATED"),  # refused on its metadata: its message (the model) was never read
        (ADMIN_SUB, SWAP, "OK"),
    ]
    assert _audit(env, gw, seen, "grpc:RepositoryModelUnload") == [
        (None, SWAP, "PERMISSION_DENIED"),
        (None, None, "UNAUTHENTICATED"),  # refused on its metadata: its message (the model) was never read
    ]


def test_unload_pins_the_earlier_version_and_load_brings_one_back(served: tuple[harness.Env, Gateway]) -> None:
    """unload: v2 stops serving, v1 (stored, verified) is the default; load: v2 again; load with a version
    policy: exactly that version; unloading the last version left is FAILED_PRECONDITION and changes nothing."""
    env, gw = served
    admin, infer = _headers(env, "admin", sub=ADMIN_SUB), _headers(env, f"infer:{SWAP}")
    seen = len(env.audit_lines(gw))
    with harness.triton(env, gw.grpc_port) as client:
        assert _default(client, infer) == "2"
        client.unload_model(SWAP, headers=admin)
        assert _default(client, infer) == "1" and not client.is_model_ready(SWAP, "2", headers=infer)
        states = {s.version: (s.state.name, s.reason, s.pinned) for s in gw.manager.status(SWAP)}
        assert states[2][0] == "RETIRED" and f"RepositoryModelUnload by {ADMIN_SUB}" in states[2][1]
        assert states[1][0::2] == ("SERVING", True)

        client.load_model(SWAP, headers=admin)  # no version: the highest the gateway can serve
        assert _default(client, infer) == "2"
        client.load_model(SWAP, headers=admin, config=json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
        assert _default(client, infer) == "1"
        assert _code(lambda: client.unload_model(SWAP, headers=admin)) == "StatusCode.FAILED_PRECONDITION"
        assert _default(client, infer) == "1"
        client.load_model(SWAP, headers=admin, config='{"version_policy": {"specific": {"versions": ["2"]}}}')
        assert _default(client, infer) == "2"
    statuses = [status for _, _, status in _audit(env, gw, seen, "grpc:RepositoryModelUnload")]
    assert statuses == ["OK", "FAILED_PRECONDITION"]
    assert [r["version"] for r in env.audit_lines(gw)[seen:] if r["method"] == "grpc:RepositoryModelLoad"] == [
        "2",
        "1",
        "2",
    ]


def test_a_load_takes_nothing_but_a_version(served: tuple[harness.Env, Gateway]) -> None:
    """Files, other config settings, other repositories and unknown versions are refused; nothing changes."""
    env, gw = served
    admin = _headers(env, "admin", sub=ADMIN_SUB)
    before = [(s.name, s.version, s.state.name) for s in gw.manager.status()]
    stub_config = json.dumps({"version_policy": {"specific": {"versions": [1]}}})
    with harness.triton(env, gw.grpc_port) as client:
        files = _code(lambda: client.load_model(SWAP, headers=admin, config=stub_config, files={"file:1/x": b"x"}))
        setting = _code(lambda: client.load_model(SWAP, headers=admin, config='{"max_batch_size": 8}'))
        broken = _code(lambda: client.load_model(SWAP, headers=admin, config='{"version_policy": '))
        missing = _code(
            lambda: client.load_model(SWAP, headers=admin, config='{"version_policy": {"specific": {"versions": [7]}}}')
        )
        unknown = _code(lambda: client.load_model("nope", headers=admin))
    assert (files, setting, broken) == ("StatusCode.INVALID_ARGUMENT",) * 3
    assert (missing, unknown) == ("StatusCode.NOT_FOUND", "StatusCode.NOT_FOUND")
    assert [(s.name, s.version, s.state.name) for s in gw.manager.status()] == before


@pytest.mark.parametrize(
    ("config", "version"),
    [
        ("{}", None),
        ('{"name": "swap", "version_policy": {"latest": {"num_versions": 1}}}', None),
        ('{"version_policy": {"specific": {"versions": [3]}}}', 3),
        ('{"version_policy": {"specific": {"versions": ["12"]}}}', 12),
    ],
)
def test_version_to_load_reads_one_version(config: str, version: int | None) -> None:
    """The load's config yields one version, or None for the highest."""
    assert version_to_load(config) == version


@pytest.mark.parametrize(
    "config",
    [
        "[]",
        '{"version_policy": {"all": {}}}',
        '{"version_policy": {"specific": {"versions": [1, 2]}}}',
        '{"version_policy": {"specific": {"versions": [true]}}}',
        '{"version_policy": {"specific": {"versions": [0]}}}',
        '{"version_policy": {"latest": {"num_versions": 2}}}',
        '{"input": []}',
        '{"a": 1, "a": 2}',
        "x" * 10_000,
    ],
)
def test_version_to_load_refuses_everything_else(config: str) -> None:
    """Anything but one version is InvalidInput, with a bounded message."""
    with pytest.raises(InvalidInput) as err:
        version_to_load(config)
    assert len(str(err.value)) < 400


# --- reflection v1 --------------------------------------------------------------------------------
def _list(stub: Any, request: Any) -> set[str]:
    (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=20))
    return {s.name for s in answer.list_services_response.service}


def test_reflection_v1_lists_what_v1alpha_lists(served: tuple[harness.Env, Gateway]) -> None:
    """Both reflection versions list exactly the registered services, themselves included, without a token."""
    env, gw = served
    with channel(env.certs, gw.grpc_port, "client") as ch:
        v1 = _list(v1_grpc.ServerReflectionStub(ch), v1_pb.ServerReflectionRequest(list_services=""))
        v1alpha = _list(v1alpha_grpc.ServerReflectionStub(ch), v1alpha_pb.ServerReflectionRequest(list_services=""))
    assert v1 == v1alpha == set(gw.services)
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} < v1


def test_v1_is_v1alpha_field_for_field() -> None:
    """The v1 messages are v1alpha's under a new package: same names, numbers, types, oneofs."""

    def shape(file: Any) -> dict[str, list[tuple[Any, ...]]]:
        return {
            m.name: sorted(
                (
                    f.name,
                    f.number,
                    f.type,
                    f.message_type.name if f.message_type else "",
                    f.containing_oneof.name if f.containing_oneof else "",
                )
                for f in m.fields
            )
            for m in file.message_types_by_name.values()
        }

    assert shape(v1_pb.DESCRIPTOR) == shape(v1alpha_pb.DESCRIPTOR)
    assert v1_pb.DESCRIPTOR.package == "grpc.reflection.v1"


def test_a_client_that_knows_only_reflection_v1_calls_model_config(served: tuple[harness.Env, Gateway]) -> None:
    """Learn the inference service from reflection v1 alone, build its messages, call ModelConfig with a token."""
    env, gw = served
    pool = descriptor_pool.DescriptorPool()
    with channel(env.certs, gw.grpc_port, "client") as ch:
        stub = v1_grpc.ServerReflectionStub(ch)
        request = v1_pb.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=20))
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in answer.file_descriptor_response.file_descriptor_proto
        ]
        for file in sorted(files, key=lambda f: len(f.dependency)):  # model_config.proto before its user
            pool.Add(file)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        method = service.methods_by_name["ModelConfig"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = ch.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        token = harness.token(env, f"infer:{ADDER}")
        config = call(request_cls(name=ADDER), metadata=(("authorization", f"Bearer {token}"),), timeout=20).config
        with pytest.raises(grpc.RpcError) as refused:
            call(request_cls(name=ADDER), timeout=20)
    assert {"ModelConfig", "ModelStatistics", "RepositoryModelLoad", "RepositoryModelUnload"} <= set(
        service.methods_by_name
    )
    assert (config.name, [list(t.dims) for t in config.input]) == (ADDER, [[-1, 3]])
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
