"""The baseline for `bench/serve_bench.py`: a bare grpc.aio Open Inference Protocol server with the same
mTLS as the gateway, calling ONNX Runtime inline on a plaintext model file, and nothing else (no JWT,
no metrics, no audit, no sealed artifact).

    python bench/bare_server.py --port 9500 --certs DIR --model model.onnx
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.protos.inference import grpc_service_pb2_grpc as pb_grpc


class Bare(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer for one FP32 model: decode raw input, run, encode raw output."""

    def __init__(self, model: bytes, intra_op_threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        t = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tuple(t.shape))
        y = self.session.run([self.output], {t.name: x})[0]
        resp = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        out = resp.outputs.add()
        out.name, out.datatype = self.output, "FP32"
        out.shape.extend(y.shape)
        resp.raw_output_contents.append(y.tobytes())
        return resp


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--certs", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--intra-op-threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = ap.parse_args()
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Bare(args.model.read_bytes(), args.intra_op_threads), server)
    creds = grpc.ssl_server_credentials(
        [((args.certs / "server.key").read_bytes(), (args.certs / "server.pem").read_bytes())],
        root_certificates=(args.certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{args.port}", creds)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
