"""The record of a federated run: one row per round, the privacy summary for provenance, how it ended.

Written by the ServerApp as summary.json (so it survives a ServerApp in another process) and shown as a
rich table; the privacy part is what the release path copies into provenance.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from gateway.errors import ConfigError


@dataclass
class RoundRow:
    """One round: held-out accuracy/loss after it, cumulative ε (max over clients), who took part."""

    round: int
    accuracy: float
    loss: float
    epsilon: float | None
    clients: int
    dropped: int
    failed: int
    sampled: int
    central_epsilon: float | None = None


@dataclass
class RunSummary:
    """A whole run: the rows, the start evaluation, the privacy summary and the stop reason."""

    task: str
    rounds_requested: int
    rows: list[RoundRow] = field(default_factory=list)
    initial_accuracy: float = math.nan
    initial_loss: float = math.nan
    privacy: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    stop_reason: str = ""
    nodes_lost: list[int] = field(default_factory=list)
    dropped_updates: list[dict[str, Any]] = field(default_factory=list)
    capped_weights: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rounds_completed(self) -> int:
        """How many rounds produced a row."""
        return len(self.rows)

    def to_json(self) -> str:
        """JSON text (non-finite floats become null)."""
        return json.dumps(_finite(asdict(self)), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunSummary:
        """Parse what `to_json` wrote."""
        try:
            data = json.loads(text)
            rows = [RoundRow(**row) for row in data.pop("rows")]
            data["initial_accuracy"] = _nan(data.get("initial_accuracy"))
            data["initial_loss"] = _nan(data.get("initial_loss"))
            return cls(rows=rows, **data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"not a federated run summary: {exc}") from None

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        """Load summary.json."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def table(self) -> Table:
        """The per-round table shown at the end of a run."""
        table = Table(title=f"federated run: {self.task}, {self.rounds_completed}/{self.rounds_requested} rounds")
        for name in ("round", "accuracy", "loss", "ε (max client)", "clients", "dropped", "failed"):
            table.add_column(name, justify="right")
        has_central = any(r.central_epsilon is not None for r in self.rows)
        if has_central:
            table.add_column("ε client-level", justify="right")
        table.add_row("0", f"{self.initial_accuracy:.4f}", f"{self.initial_loss:.4f}", "0", "-", "-", "-")
        for r in self.rows:
            cells = [
                str(r.round),
                f"{r.accuracy:.4f}",
                f"{r.loss:.4f}",
                "no DP" if r.epsilon is None else f"{r.epsilon:.4f}",
                f"{r.clients}/{r.sampled}",
                str(r.dropped),
                str(r.failed),
            ]
            if has_central:
                cells.append("-" if r.central_epsilon is None else f"{r.central_epsilon:.4f}")
            table.add_row(*cells)
        caption = [f"stopped early: {self.stop_reason}" if self.stopped_early else "completed all rounds"]
        if self.nodes_lost:
            caption.append(f"nodes lost during the run: {len(self.nodes_lost)}")
        if self.capped_weights:
            caption.append(f"client weights capped: {len(self.capped_weights)}")
        table.caption = "; ".join(caption)
        return table


def _finite(value: Any) -> Any:
    """Replace NaN/inf by None recursively: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _nan(value: Any) -> float:
    """None back to NaN."""
    return math.nan if value is None else float(value)
