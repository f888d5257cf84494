"""The call recorder: audit lines and metrics written off the request path, complete and in order."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.audit import AuditLog
from gateway.server.metrics import LATENCY_BUCKETS, Metrics
from gateway.server.recorder import CallRecord, CallRecorder


def _record(
    i: int, thread: int = 0, seconds: float = 0.001, status: grpc.StatusCode = grpc.StatusCode.OK
) -> CallRecord:
    return CallRecord(
        time.time(), "grpc", "ModelInfer", f"t{thread}", "spiffe://x/c", "mlp", str(i), status, seconds, None
    )


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_record_from_many_threads_is_written_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    metrics = Metrics()
    metrics.loaded.labels("mlp", "SERVING").set(1)  # as the manager reports it: a known model gets its label
    with AuditLog(path) as audit:
        recorder = CallRecorder(audit, metrics, interval=0.001)  # the writer thread races the producers

        def produce(thread: int) -> None:
            for i in range(2000):
                recorder.record(_record(i, thread))

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        recorder.close()
    lines = _lines(path)
    assert len(lines) == 8000
    for thread in range(4):
        versions = [int(str(r["version"])) for r in lines if r["subject"] == f"t{thread}"]
        assert versions == list(range(2000)), "each producer's lines keep their order"
    assert all(r["method"] == "grpc:ModelInfer" and r["status"] == "OK" for r in lines)
    text = metrics.render().decode()
    assert 'sealgate_request_latency_seconds_count{method="ModelInfer",model="mlp",protocol="grpc"} 8000.0' in text


def test_writer_thread_writes_without_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as audit:
        recorder = CallRecorder(audit, Metrics(), interval=0.01)
        recorder.record(_record(1, status=grpc.StatusCode.PERMISSION_DENIED))
        deadline = time.time() + 10
        while not path.read_text() and time.time() < deadline:
            time.sleep(0.01)
        assert [r["status"] for r in _lines(path)] == ["PERMISSION_DENIED"]
        assert recorder.flush() == 0, "nothing is written twice"
        recorder.close()
    assert len(_lines(path)) == 1


def test_metrics_histogram_and_counters_follow_prometheus_semantics(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.loaded.labels("mlp", "SERVING").set(1)
    samples = [LATENCY_BUCKETS[0], 0.0003, 0.0003, 7.0]  # on a bound (le is inclusive), inside, beyond the last
    for i, s in enumerate(samples):
        metrics.observe("grpc", "ModelInfer", "mlp", "1", "OK" if i else "INVALID_ARGUMENT", s)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    hist = {(s.name, s.labels.get("le")): s.value for s in families["sealgate_request_latency_seconds"].samples}
    assert hist[("sealgate_request_latency_seconds_bucket", "0.0001")] == 1
    assert hist[("sealgate_request_latency_seconds_bucket", "0.0005")] == 3
    assert hist[("sealgate_request_latency_seconds_bucket", "5.0")] == 3
    assert hist[("sealgate_request_latency_seconds_bucket", "+Inf")] == 4
    assert hist[("sealgate_request_latency_seconds_count", None)] == 4
    assert abs(hist[("sealgate_request_latency_seconds_sum", None)] - sum(samples)) < 1e-9
    requests = {s.labels["status"]: s.value for s in families["sealgate_requests"].samples}
    assert requests == {"OK": 3, "INVALID_ARGUMENT": 1}


class _FullDisk(io.StringIO):
    """A stream that refuses writes until told otherwise, like a full file system."""

    full = True

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_a_failed_write_is_counted_and_the_recorder_goes_on() -> None:
    stream, metrics = _FullDisk(), Metrics()
    recorder = CallRecorder(AuditLog(stream=stream), metrics, interval=3600)
    for i in range(3):
        recorder.record(_record(i))
    assert recorder.flush() == 3
    assert "sealgate_audit_records_lost_total 3.0" in metrics.render().decode()
    stream.full = False
    recorder.record(_record(7))
    recorder.close()
    assert [json.loads(line)["version"] for line in stream.getvalue().splitlines()] == ["7"]
