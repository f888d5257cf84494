"""Attack class: a method or route that forgot its guard (issue 11, the declarative guard).

Walks every method of every gRPC service the running gateway registered (its `services` registry, checked
against what server reflection lists, each method read from the service's descriptor) and every REST route
of the route table, and proves each is refused without a token (UNAUTHENTICATED / 401) and with a token
lacking the scope (PERMISSION_DENIED / 403), audited and counted, nothing changed, the server still serving.
Only the documented public list (README "security model") answers a valid certificate without a token.
A method that is neither declared nor public fails the walk: a new service cannot be missed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.protos import pool
from gateway.protos.sealgate.v1 import release_pb2
from gateway.server import rest
from gateway.server.app import Gateway, GatewayThread
from gateway.server.guard import IN_STREAM, Declaration, declaration
from tests import harness
from tests.models import make_onnx_mlp
from tests.security.mint import channel

MODEL = "walk-model"  # a name no fixed answer (server metadata, extensions) contains
# the documented public list: answered with a valid client certificate and no token
PUBLIC = {
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "inference.GRPCInferenceService/ServerLive",
    "inference.GRPCInferenceService/ServerReady",
}
WRONG_SCOPE = "infer:other fetch:other release:other"  # valid, but for another model only
PUBLIC_REST = {"ServerLive", "ServerReady"}  # GET /v2/health/live and /v2/health/ready, like gRPC's


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """A gateway world serving one ONNX model `m` (FP32 [N, 8] -> [N, 1]) on gRPC and REST."""
    env = harness.make_env(tmp_path_factory.mktemp("walk"))
    harness.seal_model(env, MODEL, 1, make_onnx_mlp(8, (8,), 1, seed=1))
    return env.with_config(server={"metrics_address": ""})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    """The running gateway, once `m` serves."""
    with GatewayThread(env.config) as gw:
        assert [(s.name, s.state.name) for s in gw.manager.status()] == [(MODEL, "SERVING")]
        yield gw


def _methods(gw: Gateway) -> list[tuple[str, MethodDescriptor, Declaration | None]]:
    """(path, descriptor, declaration) of every method of every service the gateway registered."""
    found = []
    for service_name, servicer in gw.services.items():
        service = pool.POOL.FindServiceByName(service_name)
        for method in service.methods:
            handler = getattr(type(servicer), method.name, None)
            found.append((f"{service_name}/{method.name}", method, declaration(handler)))
    return found


def _request(method: MethodDescriptor, decl: Declaration | None) -> Any:
    """The first request of a call: the served model named where the method takes a model."""
    cls = message_factory.GetMessageClass(method.input_type)
    if decl is None or not decl.model:
        return cls()
    if decl.model == IN_STREAM:  # Push: the model is named in the stream's first (metadata) message
        meta = release_pb2.ArtifactMetadata(name=MODEL, version=2, size=4, sha256=hashlib.sha256(b"seal").hexdigest())
        return cls(metadata=meta)
    request = cls()
    *path, leaf = decl.model.split(".")  # a dotted field: the model named in a nested message
    setattr(functools.reduce(getattr, path, request), leaf, MODEL)
    return request


def _serialize(message: Any) -> bytes:
    """A request message's wire bytes."""
    return bytes(message.SerializeToString())


def _call(ch: grpc.Channel, path: str, method: MethodDescriptor, request: Any, token: str | None) -> list[Any]:
    """Call `/path` with `request` (alone in a stream for a client stream) and return what the server sent.

    Raises grpc.RpcError on a refusal; a server stream is read for its first message only (Health.Watch
    waits for changes).
    """
    out = message_factory.GetMessageClass(method.output_type)
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    rpc = getattr(ch, kind)(
        f"/{path}", request_serializer=lambda m: m.SerializeToString(), response_deserializer=out.FromString
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    argument = iter([request]) if method.client_streaming else request
    result = rpc(argument, metadata=metadata, timeout=20)
    if not method.server_streaming:
        return [result]
    first = next(result)
    result.cancel()
    return [first]


def _code(ch: grpc.Channel, path: str, method: MethodDescriptor, request: Any, token: str | None) -> grpc.StatusCode:
    """The status code a call ends with (OK when it answers)."""
    try:
        _call(ch, path, method, request, token)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _state(gw: Gateway) -> list[tuple[str, int, str]]:
    """What a refused call must not change: every stored version and its state."""
    return sorted((s.name, s.version, s.state.name) for s in gw.manager.status())


def _serves(env: harness.Env, gw: Gateway) -> None:
    """The gateway still answers an authorized inference over gRPC and REST."""
    r = requests.post(
        f"https://127.0.0.1:{gw.rest_port}/v1/models/{MODEL}:predict",
        json={"instances": [[0.5] * 8]},
        headers={"authorization": f"Bearer {harness.token(env, f'infer:{MODEL}')}"},
        verify=str(env.certs / "ca.pem"),
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        timeout=30,
    )
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text


def test_the_registry_is_what_reflection_lists(env: harness.Env, gateway: Gateway) -> None:
    """The gateway's service registry equals reflection's list: no service is served unseen by the walk."""
    with channel(env.certs, gateway.grpc_port, "client") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    listed = {s.name for s in answers[0].list_services_response.service}
    assert listed == set(gateway.services)
    assert {"inference.GRPCInferenceService", "sealgate.v1.Release", "grpc.health.v1.Health"} < listed
    assert "sealgate.v1.Explain" in listed  # walked below like every service: scope explain:<model>
    assert {r.name: r.action for r in rest.ROUTES}["Explain"] == "explain"  # POST /v1/models/{name}:explain


def test_every_method_is_declared_and_the_public_list_is_exact(gateway: Gateway) -> None:
    """Each registered method carries a guard declaration; exactly the documented list is public."""
    methods = _methods(gateway)
    undeclared = [path for path, _, decl in methods if decl is None]
    assert undeclared == [], f"methods without a guard declaration: {undeclared}"
    assert {path for path, _, decl in methods if decl is not None and decl.public} == PUBLIC
    assert len(methods) >= 15  # inference 13, release 4, health 2, reflection 2


def test_every_grpc_method_refuses_a_call_without_a_token(env: harness.Env, gateway: Gateway) -> None:
    """No token: every non-public method is UNAUTHENTICATED (audited, counted); public ones answer."""
    before = _state(gateway)
    seen = len(env.audit_lines(gateway))
    failures = gateway.metrics.registry.get_sample_value("sealgate_auth_failures_total", {"reason": "missing"}) or 0
    refused: list[tuple[str, grpc.StatusCode]] = []
    answered: list[tuple[str, grpc.StatusCode]] = []
    with channel(env.certs, gateway.grpc_port, "client") as ch:
        for path, method, decl in _methods(gateway):
            code = _code(ch, path, method, _request(method, decl), None)
            (answered if path in PUBLIC else refused).append((path, code))
    assert [(p, c) for p, c in refused if c is not grpc.StatusCode.UNAUTHENTICATED] == []
    assert [(p, c) for p, c in answered if c is not grpc.StatusCode.OK] == []
    assert len(refused) + len(answered) == len(_methods(gateway)) and refused and answered
    records = env.audit_lines(gateway)[seen:]
    audited = {r["method"] for r in records if r["status"] == "UNAUTHENTICATED"}
    assert {"grpc:" + declaration_name(gateway, p) for p, _ in refused} <= audited
    after = gateway.metrics.registry.get_sample_value("sealgate_auth_failures_total", {"reason": "missing"}) or 0
    assert after - failures >= len(refused)
    assert _state(gateway) == before
    _serves(env, gateway)


def declaration_name(gw: Gateway, path: str) -> str:
    """The audit method name a registered method declares."""
    service, name = path.split("/")
    decl = declaration(getattr(type(gw.services[service]), name))
    assert decl is not None
    return decl.name


def test_every_grpc_method_refuses_a_token_without_the_scope(env: harness.Env, gateway: Gateway) -> None:
    """A valid token for another model: every method scoped to `m` is PERMISSION_DENIED; the ones that
    need only a valid token (server metadata, index, list) answer and show nothing of `m`."""
    token = harness.token(env, WRONG_SCOPE)
    before = _state(gateway)
    seen = len(env.audit_lines(gateway))
    scoped: list[tuple[str, grpc.StatusCode]] = []
    unscoped: list[tuple[str, grpc.StatusCode]] = []
    in_stream: list[str] = []
    with channel(env.certs, gateway.grpc_port, "client") as ch:
        for path, method, decl in _methods(gateway):
            if path in PUBLIC:
                continue
            assert decl is not None
            try:
                answer = _call(ch, path, method, _request(method, decl), token)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                answer, code = [], exc.code()
            if decl.action is None:
                unscoped.append((path, code))
                assert MODEL not in str(answer), f"{path} showed {MODEL} to a token without its scope"
            elif method.client_streaming and method.server_streaming:  # refused per message, in the stream
                assert code is grpc.StatusCode.OK and answer[0].error_message, path
                assert not answer[0].HasField("infer_response"), path
                in_stream.append(path)
            else:
                scoped.append((path, code))
    assert [(p, c) for p, c in scoped if c is not grpc.StatusCode.PERMISSION_DENIED] == []
    assert [(p, c) for p, c in unscoped if c is not grpc.StatusCode.OK] == []
    assert scoped and unscoped
    records = env.audit_lines(gateway)[seen:]
    denied = {r["method"] for r in records if r["status"] == "PERMISSION_DENIED" and r["model"] == MODEL}
    assert {"grpc:" + declaration_name(gateway, p) for p in [p for p, _ in scoped] + in_stream} <= denied
    assert _state(gateway) == before
    _serves(env, gateway)


def _rest(env: harness.Env, gw: Gateway, route: rest.Route, token: str | None) -> requests.Response:
    """Call a route's example path for `m`, presenting the client certificate and `token`."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    body = {"json": {"instances": [[0.5] * 8]}} if route.method == b"POST" and route.action else {}
    return requests.request(
        route.method.decode(),
        f"https://127.0.0.1:{gw.rest_port}{route.example.format(name=MODEL)}",
        headers=headers,
        verify=str(env.certs / "ca.pem"),
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        timeout=30,
        **body,
    )


def test_every_rest_route_refuses_without_a_token_or_the_scope(env: harness.Env, gateway: Gateway) -> None:
    """Every route of the table: 401 without a token; with a token for another model 403, or, for a route
    any valid token may call, an answer that shows nothing of `m`; audited. Only the public list answers
    without a token."""
    assert {r.name for r in rest.PUBLIC_ROUTES} == PUBLIC_REST and len(rest.ROUTES) >= 2
    names = [r.name for r in (*rest.ROUTES, *rest.PUBLIC_ROUTES)]
    assert len(names) == len(set(names)), "each route needs its own audit name"
    before = _state(gateway)
    seen = len(env.audit_lines(gateway))
    wrong = harness.token(env, WRONG_SCOPE)
    for route in rest.ROUTES:
        assert route.pattern.fullmatch(route.example.format(name=MODEL)), route
        none = _rest(env, gateway, route, None)
        assert none.status_code == 401, (route.name, none.text)
        denied = _rest(env, gateway, route, wrong)
        if route.action is None:
            assert denied.status_code == 200 and MODEL not in denied.text, (route.name, denied.text)
        else:
            assert denied.status_code == 403, (route.name, denied.text)
            assert set(denied.json()) == {"error"}
    for route in rest.PUBLIC_ROUTES:
        assert _rest(env, gateway, route, None).status_code == 200, route.name
    records = env.audit_lines(gateway)[seen:]
    for route in rest.ROUTES:
        statuses = [r["status"] for r in records if r["method"] == f"rest:{route.name}"]
        second = "OK" if route.action is None else "PERMISSION_DENIED"
        assert statuses == ["UNAUTHENTICATED", second], (route.name, statuses)
    for route in rest.PUBLIC_ROUTES:
        assert [r["status"] for r in records if r["method"] == f"rest:{route.name}"] == ["OK"], route.name
    assert _state(gateway) == before
    _serves(env, gateway)
