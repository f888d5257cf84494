"""The knobs of one federated run, and their mapping to Flower's run config (`[tool.flwr.app.config]`).

One frozen dataclass is read by the ServerApp and the ClientApp alike, whether it arrives bound in-process
(simulation) or as a Flower run config (`flwr run`, Deployment Engine); run-config values cannot be None,
so "off" is spelled 0 or "" there; training without DP is spelled no-dp = true, never by a missing ε.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fl.tasks import get_task
from gateway.errors import ConfigError


@dataclass(frozen=True)
class FlSettings:
    """Everything a run needs; every field has a run-config key (underscores become dashes)."""

    task: str = "digits"
    num_server_rounds: int = 5
    # privacy (sample level, local DP-SGD with Opacus): a finite ε > 0 (or a fixed noise multiplier) is required;
    # training without DP needs no_dp = true, which ignores ε and is recorded in the summary
    epsilon: float = 3.0
    delta: float = 1e-5
    noise_multiplier: float = 0.0
    budget_epsilon: float = 0.0
    max_grad_norm: float = 1.0
    secure_mode: bool = False
    # optional central DP (client level) with Flower's server-side fixed-clipping wrapper; 0 = off
    central_noise_multiplier: float = 0.0
    central_clipping_norm: float = 1.0
    # secure aggregation (SecAgg+, fl/secagg.py): the server sees only the masked sum of the clients' DP updates
    secure_aggregation: bool = False
    # local training
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.5
    momentum: float = 0.0
    head_only: bool = False
    # data
    alpha: float = 0.0
    seed: int = 0
    public_size: int = 0
    # sampling and robustness
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    update_norm_bound: float = 100.0
    update_norm_factor: float = 10.0
    round_timeout: float = 600.0
    # input and output
    start_weights: str = ""
    out_dir: str = ""
    no_dp: bool = False

    def __post_init__(self) -> None:
        """Reject values that would make the run meaningless or its accounting wrong."""
        checks = {
            "num-server-rounds must be >= 1": self.num_server_rounds >= 1,
            "delta must be in (0, 1)": 0.0 < self.delta < 1.0,
            "max-grad-norm must be > 0": self.max_grad_norm > 0,
            "batch-size must be >= 1": self.batch_size >= 1,
            "local-epochs must be >= 1": self.local_epochs >= 1,
            "lr must be > 0": self.lr > 0,
            "fraction-train must be in (0, 1]": 0.0 < self.fraction_train <= 1.0,
            "min-train-nodes must be >= 1": self.min_train_nodes >= 1,
            "min-available-nodes must be >= min-train-nodes": self.min_available_nodes >= self.min_train_nodes,
            "update-norm-bound must be > 0": self.update_norm_bound > 0,
            "central-clipping-norm must be > 0": self.central_clipping_norm > 0,
            "public-size must be >= 0": self.public_size >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise ConfigError(message)
        for name in ("epsilon", "noise_multiplier", "budget_epsilon", "central_noise_multiplier", "alpha", "delta"):
            value = getattr(self, name)
            if not math.isfinite(value):
                kind = "finite positive" if name == "epsilon" else "finite"
                raise ConfigError(f"{name.replace('_', '-')} must be a {kind} number, got {value}")
            if value < 0 and name != "epsilon":
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {value:g}")
        if self.no_dp:
            if self.noise_multiplier > 0 or self.budget_epsilon > 0:
                raise ConfigError("no-dp contradicts noise-multiplier / budget-epsilon: choose one")
        elif not self.epsilon > 0:
            raise ConfigError(
                f"epsilon must be a finite positive number, got {self.epsilon:g} (training without DP needs --no-dp)"
            )
        get_task(self.task)
        if self.secure_aggregation:
            from fl import secagg  # imported here: fl.secagg imports this module

            secagg.check_settings(self)

    def check_delta(self, smallest_client: int) -> None:
        """δ must be below 1/n for the smallest client's n, or the (ε, δ) guarantee allows leaking a whole row."""
        if self.dp and smallest_client > 0 and not self.delta < 1.0 / smallest_client:
            raise ConfigError(
                f"delta {self.delta:g} must be below 1/n = {1.0 / smallest_client:.3g} "
                f"(the smallest client holds n = {smallest_client} rows)"
            )

    @property
    def dp(self) -> bool:
        """Whether clients train with DP-SGD (always, unless no_dp was asked for explicitly)."""
        return not self.no_dp

    @property
    def budget(self) -> float | None:
        """The run's ε budget: budget-epsilon if set, else the target ε; None without DP."""
        if not self.dp:
            return None
        if self.budget_epsilon > 0:
            return self.budget_epsilon
        return self.epsilon

    @property
    def dirichlet_alpha(self) -> float | None:
        """Dirichlet α for label skew, None for IID."""
        return self.alpha if self.alpha > 0 else None

    def to_run_config(self) -> dict[str, Any]:
        """Flower run-config form: dashed keys, scalar values."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FlSettings:
        """Build from a Flower run config; unknown keys are ignored, wrong types raise ConfigError."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                continue
            raw = run_config[key]
            default = f.default
            try:
                if isinstance(default, bool):
                    values[f.name] = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = str(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"run config {key}={raw!r} is not a {type(default).__name__}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> FlSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
