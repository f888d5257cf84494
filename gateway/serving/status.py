"""What the model manager reports: version states, a served model handle, per-version status.

`ServedModel` is the immutable handle a request takes: once taken, it keeps its version's model
alive until the request drops it, whatever the manager swaps in meanwhile.
"""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.backends import LoadedModel


class ModelState(enum.Enum):
    """Lifecycle of one version (the names match sealgate.v1.VersionStatus.State)."""

    LOADING = "LOADING"
    SERVING = "SERVING"
    AVAILABLE = "AVAILABLE"
    REFUSED = "REFUSED"
    RETIRED = "RETIRED"


@dataclass(frozen=True)
class ServedModel:
    """A loaded, verified, smoke-tested version: what an inference request runs on."""

    name: str
    version: int
    model: LoadedModel
    provenance: dict[str, Any]
    loaded_at: float
    kept: Mapping[str, bytes] = field(default_factory=dict)  # signed side files (kept_files), e.g. reference.npz


KEPT_FILES = ("reference.npz",)  # side files a served model keeps from its artifact: gateway/explain's background
MAX_KEPT_BYTES = 16 << 20  # a larger one is not kept (whatever needs it then refuses that version)


def kept_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The KEPT_FILES among an opened model's (signed) files, each at most MAX_KEPT_BYTES."""
    return {n: files[n] for n in KEPT_FILES if n in files and len(files[n]) <= MAX_KEPT_BYTES}


@dataclass(frozen=True)
class ModelStatus:
    """One version as `List`, RepositoryIndex and REST status show it.

    `pinned` is True for the version an explicit rollback selected; `default` for the version that
    unversioned requests reach; `highest_seen` is the model's anti-rollback floor.
    """

    name: str
    version: int
    state: ModelState
    reason: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    pinned: bool = False
    highest_seen: int = 0
    default: bool = False
    size: int = 0
    sha256: str = ""
    signer: str = ""


@dataclass(frozen=True)
class PushResult(ModelStatus):
    """What a push left: the version's status, and whether the gateway already held these exact bytes."""

    already_stored: bool = False

    @classmethod
    def of(cls, status: ModelStatus, already_stored: bool = False) -> PushResult:
        """The push result carrying `status` unchanged."""
        return cls(**{f.name: getattr(status, f.name) for f in fields(ModelStatus)}, already_stored=already_stored)


_SCALARS = (str, int, float, bool, type(None))
_MAX_GATES_JSON = 4096


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def summarize_provenance(prov: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of provenance.json that listings show, in provenance's own shape, bounded in size.

    framework, created, parent_version; metrics (numbers only); privacy (its scalar fields, with a
    top-level epsilon/delta folded in); gates (a list of names, or a small mapping as recorded).
    """
    out: dict[str, Any] = {}
    for key in ("framework", "created"):
        if isinstance(prov.get(key), str):
            out[key] = prov[key]
    parent = prov.get("parent_version")
    if isinstance(parent, int) and not isinstance(parent, bool):
        out["parent_version"] = parent
    metrics = prov.get("metrics")
    if isinstance(metrics, Mapping):
        out["metrics"] = {str(k): n for k, v in metrics.items() if (n := _number(v)) is not None}
    given = prov.get("privacy")
    privacy = {str(k): v for k, v in given.items() if isinstance(v, _SCALARS)} if isinstance(given, Mapping) else {}
    for key in ("epsilon", "delta"):
        value = _number(prov.get(key))
        if value is not None:
            privacy.setdefault(key, value)
    if privacy:
        out["privacy"] = privacy
    gates = prov.get("gates", prov.get("gates_passed"))
    if isinstance(gates, list):
        out["gates"] = [str(g) for g in gates]
    elif isinstance(gates, Mapping):
        small = len(json.dumps(gates, default=str)) <= _MAX_GATES_JSON
        out["gates"] = copy.deepcopy(dict(gates)) if small else sorted(str(k) for k, v in gates.items() if v)
    return out
