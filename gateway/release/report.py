"""The release report: one line per verification gate, as JSON for machines (it goes into provenance) and as a
table for people; a failed report says which gates failed and by how much."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rich.table import Table

from gateway.errors import GateFailed

Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class GateResult:
    """One gate: what was measured, the limit, and the margin in words ("accuracy dropped 7.2 points, limit 1.0")."""

    name: str
    status: Status
    measured: float | None
    limit: float | None
    margin: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """A skipped gate does not block the release."""
        return self.status != "failed"


@dataclass(frozen=True)
class GateReport:
    """Every gate's result plus facts about the candidate (size, accuracy, latency) for provenance."""

    gates: list[GateResult]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when no gate failed."""
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[GateResult]:
        """The gates that failed, in order."""
        return [g for g in self.gates if not g.passed]

    def gate(self, name: str) -> GateResult:
        """The result of the gate called `name` (KeyError if there is none)."""
        for result in self.gates:
            if result.name == name:
                return result
        raise KeyError(name)

    def failure_summary(self) -> str:
        """One line naming each failed gate and by how much; empty when all passed."""
        return "; ".join(f"{g.name}: {g.margin}" for g in self.failed)

    def raise_for_failure(self) -> None:
        """GateFailed naming every failed gate, when any failed."""
        if not self.passed:
            raise GateFailed(f"{len(self.failed)} gate(s) failed: {self.failure_summary()}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, suitable for `provenance["gates"]`."""
        return {
            "passed": self.passed,
            "failed": [g.name for g in self.failed],
            "gates": [{**asdict(g), "passed": g.passed} for g in self.gates],
            "facts": self.facts,
        }

    def to_json(self) -> str:
        """Indented JSON of `to_dict()`; non-finite floats become strings so that any JSON parser reads it."""
        return json.dumps(_finite(self.to_dict()), indent=2, sort_keys=True)

    def table(self) -> Table:
        """A rich table: gate, verdict, measured, limit, margin."""
        table = Table(title="release gates", title_justify="left")
        for column in ("gate", "result", "measured", "limit", "margin"):
            table.add_column(column, justify="right" if column in ("measured", "limit") else "left")
        style = {"passed": "[green]passed[/green]", "failed": "[bold red]FAILED[/bold red]", "skipped": "skipped"}
        for g in self.gates:
            table.add_row(g.name, style[g.status], _fmt(g.measured), _fmt(g.limit), g.margin)
        return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e4 and float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.4g}"


def _finite(value: Any) -> Any:
    """Replace inf/NaN floats (which JSON cannot hold) by their string names, recursively."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
