"""Logs and metrics for operators: `[log] format = "json"` makes `sealgate serve` write one JSON object per
line (the audit log's field names and time format), and the metrics listener serves process metrics and
per-model queue / compute histograms under bounded labels.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.config import LogConfig, load_config
from gateway.errors import ConfigError
from gateway.server import logs, phase_metrics
from gateway.server.app import GatewayThread
from gateway.server.dataplane import Phases
from gateway.server.ports import free_loopback_port
from tests import harness
from tests.models import make_onnx_mlp

IN_DIM = 8
ROOT = Path(__file__).resolve().parents[2]
AUDIT_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_sealgate_serve_writes_json_log_lines(tmp_path: Path) -> None:
    """With `[log] format = "json"`, every line `sealgate serve` writes to standard error is a JSON object:
    the banner, the model's load, the drain on SIGTERM; `time` is written as the audit log writes it."""
    env = harness.make_env(tmp_path, free_loopback_port(), free_loopback_port())
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN_DIM, (8,), 1, seed=1))
    toml = env.root / "sealgate.toml"
    toml.write_text(toml.read_text() + '\n[log]\nformat = "json"\nlevel = "info"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(toml)],
        cwd=env.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines: list[str] = []
    banner = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "sealgate serving" in line:
                banner.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert banner.wait(90), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    docs = [json.loads(line) for line in lines if line.strip()]  # raises on any line that is not JSON
    assert all(isinstance(d, dict) and AUDIT_TIME.fullmatch(d["time"]) for d in docs), docs
    messages = {d["message"]: d for d in docs}
    first = next(d for d in docs if d["message"].startswith("sealgate serving"))
    assert first["level"] == "info" and first["logger"] == "sealgate.server"
    assert any(m.startswith("model 'm': serving [1]") for m in messages), sorted(messages)
    assert messages["signal received: draining"]["level"] == "info"


def test_json_lines_redact_tokens_and_carry_exceptions_on_one_line() -> None:
    """A token in a message is redacted, an exception becomes `error` + `traceback` in the same line, and
    fields a record carries (`extra=`) keep their audit-log names."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("sealgate.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)  # whatever another test left on the `sealgate` parent
    token = harness.b64({"alg": "ES256"}) + ".eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    try:
        logger.warning("refused Bearer %s for %s", token, "m", extra={"model": "m", "version": "3"})
        try:
            raise ValueError(f"bad token {token}\nsecond line")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert token not in out.getvalue() and logs.REDACTED in first["message"]
    assert first["model"] == "m" and first["version"] == "3" and first["level"] == "warning"
    assert second["error"].startswith("ValueError: bad token") and "Traceback" in second["traceback"]
    assert AUDIT_TIME.fullmatch(first["time"])
    record = logging.LogRecord("sealgate.server", logging.INFO, __file__, 1, "up", None, None)
    assert json.loads(logs.formatter(LogConfig(format="json"), worker=2).format(record))["worker"] == 2
    assert " worker-2 sealgate.server: up" in logs.formatter(LogConfig(), worker=2).format(record)


def test_log_and_tracing_config_is_checked(tmp_path: Path) -> None:
    """Unknown formats, levels, exporters and ratios are refused, naming the key."""
    bad = tmp_path / "bad.toml"
    for text, message in (
        ('[log]\nformat = "xml"\n', r"\[log\] format"),
        ('[log]\nlevel = "loud"\n', r"\[log\] level"),
        ('[tracing]\nexporter = "zipkin"\n', r"\[tracing\] exporter"),
        ("[tracing]\nsample_ratio = 1.5\n", r"\[tracing\] sample_ratio"),
        ('[tracing]\notlp_endpoint = "127.0.0.1:4317"\n', r"\[tracing\] otlp_endpoint"),
    ):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(bad)
    bad.write_text('[tracing]\nenabled = true\nexporter = "console"\nsample_ratio = 0\n[log]\nformat = "json"\n')
    loaded = load_config(bad)
    assert loaded.tracing.enabled and loaded.tracing.sample_ratio == 0.0 and loaded.log.format == "json"


def _scrape(port: int) -> str:
    answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert answer.status_code == 200
    return answer.text


def _value(text: str, sample: str) -> float:
    """The value of the exposition line that starts with `sample` (name and labels)."""
    line = next(line for line in text.splitlines() if line.startswith(sample))
    return float(line.rsplit(" ", 1)[1])


def test_metrics_serve_process_figures_and_per_model_histograms(tmp_path: Path) -> None:
    """/metrics has CPU seconds, RSS and open fds, and queue / compute histograms per model version; a
    model name that does not serve makes no series."""
    env = harness.make_env(tmp_path)
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(IN_DIM, (16,), 2, seed=0))
    with GatewayThread(env.config) as gw:
        deadline = time.time() + 60
        while not gw.manager.ready() or not gw.manager.versions("mlp"):
            assert time.time() < deadline
            time.sleep(0.05)
        client = harness.triton(env, gw.grpc_port)
        headers = {"authorization": "Bearer " + harness.token(env)}
        for _ in range(3):
            inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
            inp.set_data_from_numpy(np.zeros((1, IN_DIM), dtype=np.float32))
            client.infer("mlp", [inp], headers=headers)
        with pytest.raises(InferenceServerException):
            client.infer("no-such-model-xyz", [inp], headers=headers)
        text = _scrape(gw.metrics_port)
    assert _value(text, "process_cpu_seconds_total") > 0
    assert _value(text, "process_resident_memory_bytes") > 10 << 20
    assert _value(text, "process_open_fds") > 0
    assert _value(text, 'sealgate_model_queue_seconds_count{model="mlp",version="1"}') == 3
    for phase in ("input", "infer", "output"):
        count = f'sealgate_model_compute_seconds_count{{model="mlp",phase="{phase}",version="1"}}'
        assert _value(text, count) == 3, phase
    assert _value(text, 'sealgate_model_compute_seconds_bucket{le="+Inf",model="mlp",phase="infer",version="1"}') == 3
    assert "no-such-model-xyz" not in text


def test_phase_histograms_bound_their_series() -> None:
    """Past MAX_SERIES model versions, new ones fold into `_other`: the label set cannot grow without end."""
    hist = phase_metrics.PhaseHistograms()
    for version in range(phase_metrics.MAX_SERIES + 50):
        hist.observe("m", version + 1, Phases(queue_ns=10, input_ns=2_000, infer_ns=30_000, output_ns=1))
    families = {f.name: f for f in hist.collect()}
    series = {tuple(sorted(s.labels.items())) for f in families.values() for s in f.samples}
    versions = {dict(labels).get("version") for labels in series}
    assert len(versions) == phase_metrics.MAX_SERIES + 1  # MAX_SERIES versions and the one '' of _other
    other = [
        s
        for s in families["sealgate_model_compute_seconds"].samples
        if s.labels.get("model") == "_other" and s.name.endswith("_count") and s.labels["phase"] == "infer"
    ]
    assert other and other[0].value == 50
    infer = next(
        s
        for s in families["sealgate_model_compute_seconds"].samples
        if s.labels == {"model": "m", "version": "1", "phase": "infer", "le": "5e-05"}
    )
    assert infer.value == 1  # 30 µs lands at or under the 50 µs bound


def test_json_lines_name_the_current_trace() -> None:
    """While a traced call's span is current, a JSON line carries its trace and span ids (to find its trace)."""
    from gateway.config import TracingConfig
    from gateway.server.tracing import Tracing

    tracer = Tracing(TracingConfig(enabled=True, exporter="none"))
    record = logging.LogRecord("sealgate.server", logging.INFO, __file__, 1, "inside", None, None)
    try:
        with tracer.tracer.start_as_current_span("call") as span:
            inside = json.loads(logs.JsonFormatter().format(record))
        outside = json.loads(logs.JsonFormatter().format(record))
    finally:
        tracer.shutdown()
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert inside["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert "trace_id" not in outside
