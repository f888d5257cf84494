"""The record of a federated run: one row per round, the privacy summary for provenance, how it ended.

Written by the ServerApp as summary.json (so it survives a ServerApp in another process) and shown as a
rich table; the privacy part is what the release path copies into provenance.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from fl import accounting
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from fl.settings import FlSettings

NO_DP_WARNING = "trained WITHOUT differential privacy (--no-dp): no ε guarantee; release gates refuse it by default"
CENTRAL_ONLY_WARNING = "no sample-level DP-SGD (--no-dp): only the server's client-level noise protects the data"


@dataclass
class RoundRow:
    """One round: held-out accuracy/loss after it, cumulative ε (max over clients; the tighter of the RDP and PRV
    bounds, each also given when the server reports them), who took part."""

    round: int
    accuracy: float
    loss: float
    epsilon: float | None
    clients: int
    dropped: int
    failed: int
    sampled: int
    central_epsilon: float | None = None
    epsilon_rdp: float | None = None
    epsilon_prv: float | None = None


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
        both = any(r.epsilon_rdp is not None or r.epsilon_prv is not None for r in self.rows)
        names = ["round", "accuracy", "loss", "ε (max client)"]
        names += ["ε RDP", "ε PRV"] if both else []
        for name in (*names, "clients", "dropped", "failed"):
            table.add_column(name, justify="right")
        has_central = any(r.central_epsilon is not None for r in self.rows)
        if has_central:
            table.add_column("ε client-level", justify="right")
        start = ["0", f"{self.initial_accuracy:.4f}", f"{self.initial_loss:.4f}", "0", *(["0", "0"] if both else [])]
        table.add_row(*start, "-", "-", "-", *(["-"] if has_central else []))
        for r in self.rows:
            cells = [str(r.round), f"{r.accuracy:.4f}", f"{r.loss:.4f}", _eps(r.epsilon, "no DP")]
            if both:
                cells += [_eps(r.epsilon_rdp, "-"), _eps(r.epsilon_prv, "-")]
            cells += [f"{r.clients}/{r.sampled}", str(r.dropped), str(r.failed)]
            if has_central:
                cells.append(_eps(r.central_epsilon, "-"))
            table.add_row(*cells)
        caption = [f"stopped early: {self.stop_reason}" if self.stopped_early else "completed all rounds"]
        caption += [f"WARNING: {w}" for w in self.privacy.get("warnings", [])]
        if self.nodes_lost:
            caption.append(f"nodes lost during the run: {len(self.nodes_lost)}")
        if self.capped_weights:
            caption.append(f"client weights capped: {len(self.capped_weights)}")
        table.caption = "; ".join(caption)
        return table


def complete_privacy_record(summary: RunSummary, cfg: FlSettings) -> bool:
    """Add what provenance needs beside the server's record: `dp` (false only for --no-dp runs without central
    noise: the field the release privacy gate refuses), `no_dp`, `warnings`, and ε under both accountants (per
    client and the max), recomputed from each client's fixed (σ, q) and step count. True when anything changed."""
    privacy = summary.privacy
    before = json.dumps(_finite(privacy), sort_keys=True)
    privacy["dp"] = bool(cfg.dp or cfg.central_noise_multiplier > 0)
    privacy["no_dp"] = bool(cfg.no_dp)
    ours = (NO_DP_WARNING, CENTRAL_ONLY_WARNING)
    warnings = [w for w in privacy.get("warnings", []) if w not in ours]
    if cfg.no_dp:
        warnings.insert(0, CENTRAL_ONLY_WARNING if privacy["dp"] else NO_DP_WARNING)
    privacy["warnings"] = warnings
    if cfg.dp:
        rdp, prv = [], []
        for client in privacy.get("per_client", {}).values():
            if client.get("steps", 0) > 0 and client.get("noise_multiplier", 0) > 0:
                history = [(client["noise_multiplier"], client["sample_rate"], client["steps"])]
                eps = accounting.epsilons_from_history(history, cfg.delta)
                client["epsilon_rdp"], client["epsilon_prv"] = eps.rdp, eps.prv
                rdp.append(eps.rdp)
                prv.append(eps.prv)
        privacy["epsilon_rdp"] = max(rdp) if rdp else None
        privacy["epsilon_prv"] = max(prv) if prv else None
        privacy["accountant"] = "min(rdp, prv)"
    return json.dumps(_finite(privacy), sort_keys=True) != before


def round_epsilons(clients: dict[Any, dict[str, Any]], dp: bool) -> dict[str, float | None]:
    """A round's ε fields for RoundRow from the clients' latest metrics: the max over clients of the tight ε
    ("epsilon", min of RDP and PRV) and of each accountant's ("epsilon-rdp", "epsilon-prv"); None without DP."""
    if not dp:
        return {"epsilon": None, "epsilon_rdp": None, "epsilon_prv": None}
    trained = [m for m in clients.values() if "steps" in m]

    def worst(key: str, default: float | None) -> float | None:
        values = [float(m[key]) for m in trained if key in m and math.isfinite(float(m[key]))]
        return max(values) if values else default

    return {
        "epsilon": worst("epsilon", 0.0),
        "epsilon_rdp": worst("epsilon-rdp", None),
        "epsilon_prv": worst("epsilon-prv", None),
    }


def _eps(value: float | None, missing: str) -> str:
    """An ε cell."""
    return missing if value is None else f"{value:.4f}"


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
