"""The protobuf contracts: committed stubs match a fresh generation, and stock Triton clients talk to them.

The wire tests run a real gRPC server on 127.0.0.1 built from gateway/protos and call it with the
unmodified `tritonclient.grpc` in the same process, which also proves the private descriptor pool
keeps the two sets of `inference.*` symbols apart.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2 as triton_service_pb2
from tritonclient.utils import InferenceServerException

from gateway.errors import ConfigError
from gateway.protos import generate, pool
from gateway.protos.inference import grpc_service_pb2 as inference_pb2
from gateway.protos.inference import grpc_service_pb2_grpc as inference_grpc
from gateway.protos.sealgate.v1 import release_pb2, release_pb2_grpc

CHUNK = 4


# --- reproducible generation ----------------------------------------------------------------------
def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    """Regenerating into an empty directory reproduces every committed file byte for byte."""
    written = generate.generate(out_root=tmp_path)
    assert "inference/grpc_service_pb2.py" in written
    assert "sealgate/v1/release_pb2_grpc.py" in written
    for name in written:
        committed = generate.OUT_ROOT / name
        assert committed.is_file(), f"{name} is not committed; run `python -m gateway.protos.generate`"
        assert committed.read_bytes() == (tmp_path / name).read_bytes(), f"{name} is stale"
    assert generate.check() == []
    assert generate.generate(out_root=tmp_path) == []


def test_check_reports_changed_missing_and_orphaned_files(tmp_path: Path) -> None:
    """check() names a hand-edited stub, a deleted stub and a stub left from a removed proto."""
    out = tmp_path / "protos"
    generate.generate(out_root=out)
    edited = out / "sealgate/v1/release_pb2.pyi"
    edited.write_bytes(edited.read_bytes() + b"\n")
    (out / "inference/grpc_service_pb2_grpc.py").unlink()
    shutil.copy(out / "inference/grpc_service_pb2.py", out / "inference/old_pb2.py")
    assert generate.check(out_root=out) == [
        "inference/grpc_service_pb2_grpc.py",
        "inference/old_pb2.py",
        "sealgate/v1/release_pb2.pyi",
    ]
    generate.generate(out_root=out)
    assert generate.check(out_root=out) == []


def test_protos_importing_well_known_types_are_refused(tmp_path: Path) -> None:
    """A proto that imports a well-known type cannot live in the private pool, so generation refuses it."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x/t.proto").write_text(
        'syntax = "proto3";\npackage x;\nimport "google/protobuf/timestamp.proto";\n'
        "message T { google.protobuf.Timestamp at = 1; }\n"
    )
    with pytest.raises(ConfigError, match="timestamp_pb2"):
        generate.render(proto_root=tmp_path)


# --- wire compatibility with Triton ---------------------------------------------------------------
def _file_proto(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of a loaded file."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


def test_inference_messages_and_rpcs_equal_tritons() -> None:
    """Every message and RPC we declare is identical (names, numbers, types, options) to tritonclient's."""
    ours, theirs = _file_proto(inference_pb2.DESCRIPTOR), _file_proto(triton_service_pb2.DESCRIPTOR)
    assert ours.package == theirs.package == "inference"
    triton_messages = {message.name: message for message in theirs.message_type}
    assert len(ours.message_type) == 32
    for message in ours.message_type:
        assert message == triton_messages[message.name], message.name
    (service,) = ours.service
    assert service.name == theirs.service[0].name == "GRPCInferenceService"
    triton_methods = {method.name: method for method in theirs.service[0].method}
    assert {method.name for method in service.method} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "RepositoryIndex",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
    for method in service.method:
        assert method == triton_methods[method.name], method.name
    assert inference_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number == 7
    assert inference_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number == 6


class EchoInference(inference_grpc.GRPCInferenceServiceServicer):
    """Live server, a one-model repository, and a model that returns each input as `<name>_echo`."""

    def ServerLive(
        self, request: inference_pb2.ServerLiveRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ServerLiveResponse:
        """Always live."""
        return inference_pb2.ServerLiveResponse(live=True)

    def ModelInfer(
        self, request: inference_pb2.ModelInferRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ModelInferResponse:
        """Echo every input tensor, raw bytes unchanged, as an output."""
        response = inference_pb2.ModelInferResponse(model_name=request.model_name, model_version="3", id=request.id)
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            response.outputs.add(name=f"{tensor.name}_echo", datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(raw)
        return response

    def RepositoryIndex(
        self, request: inference_pb2.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> inference_pb2.RepositoryIndexResponse:
        """One ready model and one refused version."""
        Index = inference_pb2.RepositoryIndexResponse.ModelIndex
        return inference_pb2.RepositoryIndexResponse(
            models=[
                Index(name="digits", version="3", state="READY"),
                Index(name="digits", version="4", state="UNAVAILABLE", reason="untrusted signer"),
            ]
        )


class MemoryRelease(release_pb2_grpc.ReleaseServicer):
    """Release service over a dict: enough to exercise the streaming message shapes end to end."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, int], bytes] = {}

    def Push(
        self, request_iterator: Iterable[release_pb2.PushRequest], context: grpc.ServicerContext
    ) -> release_pb2.PushResponse:
        """Store the streamed file under the metadata's (name, version)."""
        first = next(iter(request_iterator))
        assert first.WhichOneof("payload") == "metadata"
        data = b"".join(message.chunk for message in request_iterator)
        meta = first.metadata
        self.files[(meta.name, meta.version)] = data
        return release_pb2.PushResponse(
            name=meta.name,
            version=meta.version,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            state=release_pb2.VersionStatus.AVAILABLE,
        )

    def Fetch(
        self, request: release_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[release_pb2.FetchResponse]:
        """Stream a stored file back: metadata first, then chunks."""
        data = self.files[(request.name, request.version)]
        yield release_pb2.FetchResponse(
            metadata=release_pb2.ArtifactMetadata(
                name=request.name, version=request.version, size=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
        )
        for start in range(0, len(data), CHUNK):
            yield release_pb2.FetchResponse(chunk=data[start : start + CHUNK])


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A gRPC server on 127.0.0.1: echo inference, in-memory release, and reflection over the private pool."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference_grpc.add_GRPCInferenceServiceServicer_to_server(EchoInference(), server)
    release_pb2_grpc.add_ReleaseServicer_to_server(MemoryRelease(), server)
    pool.mirror(health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
    names = (
        inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        release_pb2.DESCRIPTOR.services_by_name["Release"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server, pool=pool.POOL)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def triton(address: str) -> Iterator[triton_grpc.InferenceServerClient]:
    """The stock Triton gRPC client pointed at the test server."""
    client = triton_grpc.InferenceServerClient(url=address)
    yield client
    client.close()


def test_stock_triton_client_live_and_infer(triton: triton_grpc.InferenceServerClient) -> None:
    """is_server_live() and an FP32 infer() through tritonclient return exactly what was sent."""
    assert triton.is_server_live() is True
    data = (np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5) * 1.25
    tensor = triton_grpc.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = triton.infer("digits", [tensor], request_id="req-7")
    echoed = result.as_numpy("INPUT0_echo")
    assert echoed is not None and echoed.dtype == np.float32 and echoed.shape == (2, 3)
    np.testing.assert_array_equal(echoed, data)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("digits", "3", "req-7")


def test_stock_triton_client_repository_index(triton: triton_grpc.InferenceServerClient) -> None:
    """get_model_repository_index() decodes our RepositoryIndexResponse, reason included."""
    index = triton.get_model_repository_index()
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        ("digits", "3", "READY", ""),
        ("digits", "4", "UNAVAILABLE", "untrusted signer"),
    ]


def test_rpcs_left_out_answer_unimplemented(triton: triton_grpc.InferenceServerClient) -> None:
    """A Triton RPC we do not declare (ModelConfig) fails cleanly with UNIMPLEMENTED."""
    with pytest.raises(InferenceServerException) as raised:
        triton.get_model_config("digits")
    assert raised.value.status() == str(grpc.StatusCode.UNIMPLEMENTED)


def test_release_push_then_fetch_round_trip(address: str) -> None:
    """Push as a client stream and Fetch as a server stream carry metadata first, then the bytes."""
    payload = bytes(range(256)) * 3 + b"tail"
    digest = hashlib.sha256(payload).hexdigest()
    metadata = release_pb2.ArtifactMetadata(name="digits", version=5, size=len(payload), sha256=digest)
    requests = [release_pb2.PushRequest(metadata=metadata)] + [
        release_pb2.PushRequest(chunk=payload[start : start + 100]) for start in range(0, len(payload), 100)
    ]
    with grpc.insecure_channel(address) as channel:
        stub = release_pb2_grpc.ReleaseStub(channel)
        pushed = stub.Push(iter(requests))
        assert (pushed.name, pushed.version, pushed.size, pushed.sha256) == ("digits", 5, len(payload), digest)
        assert pushed.state == release_pb2.VersionStatus.AVAILABLE
        first, *chunks = list(stub.Fetch(release_pb2.FetchRequest(name="digits", version=5)))
    assert first.WhichOneof("payload") == "metadata" and first.metadata == metadata
    assert all(message.WhichOneof("payload") == "chunk" for message in chunks)
    assert b"".join(message.chunk for message in chunks) == payload


def test_reflection_serves_descriptors_from_the_private_pool(address: str) -> None:
    """Server reflection over gateway.protos.pool lists and describes our services and health."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {"inference.GRPCInferenceService", "sealgate.v1.Release", "grpc.health.v1.Health"} <= set(
            database.get_services()
        )
        remote = DescriptorPool(database)
        infer = remote.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ModelInfer"]
        assert infer.input_type.fields_by_name["raw_input_contents"].number == 7
        release = remote.FindServiceByName("sealgate.v1.Release")
        assert sorted(release.methods_by_name) == ["Fetch", "List", "Push", "Rollback"]
