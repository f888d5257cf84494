"""Flower ServerApp: FedAvg over DP-trained client updates, validated, evaluated on held-out data each round.

`app` reads its settings from the run config (`flwr run`, Deployment Engine); `make_server_app` binds them
in-process for the simulation. Either way the results land in the settings' out-dir. With secure aggregation
on (setting or run config `secure-aggregation`) the rounds run as SecAgg+ (fl/secagg.py) instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl import secagg
from fl.outputs import write_outputs
from fl.server_loop import ProgressFn, run_rounds
from fl.settings import FlSettings

log = logging.getLogger("flwr.sealgate")


def make_server_app(settings: FlSettings | None = None, progress: ProgressFn | None = None) -> ServerApp:
    """A ServerApp bound to `settings` (None: read the run config), reporting each round to `progress`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        """Run the rounds, then write model.onnx, weights.safetensors and summary.json to out-dir."""
        cfg = settings if settings is not None else FlSettings.from_run_config(dict(context.run_config))
        if secagg.enabled(cfg, context.run_config):
            outcome = secagg.run_secure_rounds(grid, context, cfg, progress)
        else:
            outcome = run_rounds(grid, cfg, progress)
        if cfg.out_dir:
            paths = write_outputs(Path(cfg.out_dir), cfg.task, outcome.state_dict, outcome.summary)
            log.info("wrote %s", ", ".join(str(p.resolve()) for p in paths))
        summary = outcome.summary
        ending = f"stopped early: {summary.stop_reason}" if summary.stopped_early else "completed all rounds"
        log.info(
            "run %s after %d/%d rounds; privacy %s; nodes lost: %d",
            ending,
            summary.rounds_completed,
            summary.rounds_requested,
            summary.privacy.get("epsilon"),
            len(summary.nodes_lost),
        )

    return app


app = make_server_app()
