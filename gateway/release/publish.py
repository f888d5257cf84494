"""The last step of a release: gates passed → seal (report in provenance) → push. Refuses on any failed gate,
before anything is sealed or sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.artifact.keys import RecipientKey
from gateway.artifact.sealed import seal_to_file
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.release.client import Progress, ReleaseClient
from gateway.release.report import GateReport


def release(
    model_files: Mapping[str, bytes] | Path,
    *,
    name: str,
    version: int,
    report: GateReport,
    provenance: Mapping[str, Any],
    signer: ec.EllipticCurvePrivateKey,
    recipients: Sequence[RecipientKey],
    client: ReleaseClient,
    out: Path,
    progress: Progress | None = None,
) -> pb.PushResponse:
    """Seal the candidate with its gate report in provenance and push it; GateFailed if any gate failed."""
    report.raise_for_failure()
    record = dict(provenance)
    record["gates"] = report.to_dict()
    seal_to_file(model_files, out, name=name, version=version, signer=signer, recipients=recipients, provenance=record)
    return client.push(out, name, version, progress=progress)
