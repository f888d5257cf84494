"""What the manager knows about one version of one model: a mutable record, changed only under its lock."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.serving.status import ModelState, ServedModel, summarize_provenance
from gateway.serving.verification import Stamp, Verified


@dataclass
class Entry:
    """One version: its state and reason, its file and the facts verifying it gave, and the loaded model."""

    name: str
    version: int
    state: ModelState
    reason: str = ""
    path: Path | None = None
    stamp: Stamp | None = None
    size: int = 0
    sha256: str = ""
    signer: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    verified: bool = False
    recipient: bool = False
    late: bool = False
    file_ok: bool = True
    served: ServedModel | None = None

    @property
    def valid(self) -> bool:
        """Authentic and not refused: counts toward the anti-rollback floor, may be fetched."""
        return self.verified and self.state is not ModelState.REFUSED

    @property
    def loadable(self) -> bool:
        """Valid and openable by the gateway (a rollback may serve it)."""
        return self.valid and self.recipient and self.path is not None

    def fill(self, checked: Verified, late: bool) -> None:
        """Record what verifying the version's file established (`late`: it arrived below the floor)."""
        self.stamp, self.size, self.sha256 = checked.stamp, checked.size, checked.sha256
        self.signer = checked.header.signer_key_id
        self.verified, self.recipient, self.late = True, checked.opened is not None, late
        if checked.opened is not None:
            self.provenance = summarize_provenance(checked.opened.provenance)
        else:
            self.provenance = {"framework": checked.header.framework, "created": checked.header.created}
