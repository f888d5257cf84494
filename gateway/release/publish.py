"""The last step of a release: gates passed → seal (report in provenance) → push. Refuses on any failed gate,
before anything is sealed or sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.artifact.keys import RecipientKey
from gateway.artifact.sealed import seal_to_file
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.release import reference as reference_data
from gateway.release.client import Progress, ReleaseClient
from gateway.release.report import GateReport
from gateway.versions import check_name


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
    reference: np.ndarray | None = None,
    rollout: pb.RolloutRequest | None = None,
    reference_source: str = "public evaluation data",
) -> pb.PushResponse:
    """Seal the candidate with its gate report in provenance and push it; GateFailed if any gate failed.

    `reference`: PUBLIC rows (reference.sample picks them), sealed as reference.npz beside the model;
    `reference_source` names them in provenance.
    `rollout`: push as a canary or shadow candidate (gateway/release/rollout.py) instead of replacing.
    """
    check_name(name)  # the gateway's rule: nothing is sealed that a push would refuse
    report.raise_for_failure()
    record = dict(provenance)
    record["gates"] = report.to_dict()
    if reference is not None:
        rows, source = len(reference), reference_source  # every given row, named in provenance
        model_files, record["reference"] = reference_data.pack(model_files, reference, rows=rows, source=source)
    seal_to_file(model_files, out, name=name, version=version, signer=signer, recipients=recipients, provenance=record)
    return client.push(out, name, version, progress=progress, rollout=rollout)
