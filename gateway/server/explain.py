"""The sealgate.v1.Explain gRPC service: translates requests for the explainer (gateway/explain).

Declared with the guard like every other method: the scope `explain:<model>` on the request's
`model_name`, then a concurrency slot; the guard audits and counts the call. The handler resolves the
version on the data plane and hands the rest to the Explainer, which rations and computes off the loop.
"""

from __future__ import annotations

from gateway.explain.engine import Explainer, Query, Result
from gateway.protos.sealgate.v1 import explain_pb2 as pb
from gateway.protos.sealgate.v1 import explain_pb2_grpc as pb_grpc
from gateway.server.dataplane import DataPlane, parse_version
from gateway.server.guard import Call, Guard, PeerCache, guarded
from gateway.server.limits import Slots


def response(name: str, version: int, result: Result) -> pb.ExplainResponse:
    """The ExplainResponse message of an explainer's result."""
    return pb.ExplainResponse(
        model_name=name,
        model_version=str(version),
        method=result.method,
        output=result.output,
        feature_shape=list(result.feature_shape),
        explanations=[
            pb.Explanation(base_value=a.base_value, values=a.values.tolist(), output=a.output, target=a.target)
            for a in result.explanations
        ],
        evaluations=result.evaluations,
    )


class ExplainService(pb_grpc.ExplainServicer):
    """Explanations of served models over gRPC; every method's guard is declared on it."""

    def __init__(
        self, dataplane: DataPlane, explainer: Explainer, guard: Guard, peers: PeerCache, slots: Slots
    ) -> None:
        """Explain `dataplane`'s models with `explainer`, guarded by `guard`, within `slots`."""
        self.dataplane = dataplane
        self.explainer = explainer
        self.guard = guard
        self.peers = peers
        self.slots = slots

    @guarded("explain", model="model_name", version="model_version")
    async def Explain(self, request: pb.ExplainRequest, call: Call) -> pb.ExplainResponse:
        """Explain the request's instances on the named model version (see protos/sealgate/v1/explain.proto)."""
        assert call.principal is not None  # set by the guard before the handler runs
        served = self.dataplane.model(request.model_name, parse_version(request.model_version))
        call.version = str(served.version)
        query = Query(
            [list(i.values) for i in request.instances],
            request.method,
            request.nsamples,
            request.output,
            request.target if request.HasField("target") else None,
        )
        result = await self.explainer.explain(served, query, call.principal.subject)
        return response(served.name, served.version, result)
