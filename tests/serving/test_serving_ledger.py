"""The anti-rollback ledger: typed records, the unchanged on-disk format, strict parsing that refuses rather
than guesses a floor, transitions that never lower it, and writers in several threads and processes that
serialize on the flock so no update is lost and no reader ever sees a torn or lowered ledger."""

from __future__ import annotations

import json
import multiprocessing
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, RollbackRefused
from gateway.serving.ledger import STATE_NAME, Ledger, LedgerFile, ModelRecord, Rollback

OLD_FORMAT = {
    "format": "sealgate-repository-state/1",
    "models": {
        "mlp": {
            "highest_seen": 5,
            "pinned": 3,
            "rollbacks": [{"from": 5, "reason": "drift", "time": "2026-11-27T10:00:00Z", "to": 3}],
        }
    },
}


def write(root: Path, doc: Any) -> None:
    """Put a ledger document on disk as an older gateway (or a careless operator) would."""
    (root / STATE_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def test_an_empty_repository_has_an_empty_ledger(tmp_path: Path) -> None:
    ledger = LedgerFile(tmp_path).load()
    assert ledger == Ledger() and ledger.highest_seen("mlp") == 0 and ledger.pinned("mlp") is None
    assert not (tmp_path / STATE_NAME).exists(), "reading writes nothing"


def test_the_file_written_before_the_typed_ledger_reads_and_rewrites_byte_for_byte(tmp_path: Path) -> None:
    write(tmp_path, OLD_FORMAT)
    before = (tmp_path / STATE_NAME).read_bytes()
    ledger = LedgerFile(tmp_path).load()
    record = ledger.record("mlp")
    assert (record.highest_seen, record.pinned) == (5, 3)
    assert record.last_rollback == Rollback("2026-11-27T10:00:00Z", 5, 3, "drift")
    assert ledger.dumps() == before, "same format, same bytes: older gateways read what this one writes"


def test_transitions_never_lower_the_floor_and_are_persisted(tmp_path: Path) -> None:
    file = LedgerFile(tmp_path)
    file.update(lambda ledger: ledger.change("mlp", lambda r: r.bumped(4)))
    after = file.update(lambda ledger: ledger.change("mlp", lambda r: r.bumped(2)))
    assert after.highest_seen("mlp") == 4, "a bump to a lower version keeps the floor"
    after = file.update(lambda ledger: ledger.change("mlp", lambda r: r.rolled_back(2, 4, "drift", "t0")))
    assert after.pinned("mlp") == 2 and after.highest_seen("mlp") == 4
    with pytest.raises(RollbackRefused, match="not above the highest version seen"):
        file.update(lambda ledger: ledger.change("mlp", lambda r: r.pushed("mlp", 4)))
    assert LedgerFile(tmp_path).load().pinned("mlp") == 2, "a refused push changes nothing on disk"
    after = file.update(lambda ledger: ledger.change("mlp", lambda r: r.pushed("mlp", 5)))
    assert (after.highest_seen("mlp"), after.pinned("mlp")) == (5, None), "a push ends the pin"
    on_disk = json.loads((tmp_path / STATE_NAME).read_text())["models"]["mlp"]
    assert on_disk == {
        "highest_seen": 5,
        "pinned": None,
        "rollbacks": [{"time": "t0", "from": 4, "to": 2, "reason": "drift"}],
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_or_invalid_update_writes_nothing(tmp_path: Path) -> None:
    file = LedgerFile(tmp_path)
    file.update(lambda ledger: ledger.change("mlp", lambda r: r.bumped(5)))
    before = (tmp_path / STATE_NAME).read_bytes()

    def fail(ledger: Ledger) -> Ledger:
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        file.update(fail)
    with pytest.raises(ValueError):
        file.update(lambda ledger: ledger.change("mlp", lambda r: replace(r, highest_seen=-1)))
    with pytest.raises(ValueError):
        file.update(lambda ledger: ledger.change("mlp", lambda r: replace(r, pinned=True)))  # type: ignore[arg-type]
    assert (tmp_path / STATE_NAME).read_bytes() == before


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ('{"format": "sealgate-repository-state/1", "models": {"m": {"highest_', "torn JSON"),
        ({**OLD_FORMAT, "format": "sealgate-repository-state/2"}, "unknown format"),
        ({**OLD_FORMAT, "extra": 1}, "unknown top-level field"),
        ({"format": "sealgate-repository-state/1", "models": []}, "models not an object"),
        ({"format": "sealgate-repository-state/1", "models": {"../x": {}}}, "bad model name"),
        ({"format": "sealgate-repository-state/1", "models": {"m": {"highest_seen": 5}}}, "missing fields"),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": 5, "pinned": None, "rollbacks": [], "lowest": 1}},
            },
            "unknown record field",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": "5", "pinned": None, "rollbacks": []}},
            },
            "floor as a string",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": True, "pinned": None, "rollbacks": []}},
            },
            "floor as a bool",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": 5.0, "pinned": None, "rollbacks": []}},
            },
            "floor as a float",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": -1, "pinned": None, "rollbacks": []}},
            },
            "negative floor",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": 10**19, "pinned": None, "rollbacks": []}},
            },
            "floor beyond any version",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": 5, "pinned": 0, "rollbacks": []}},
            },
            "pin 0",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": 5, "pinned": None, "rollbacks": {}}},
            },
            "rollbacks not a list",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {"m": {"highest_seen": 5, "pinned": None, "rollbacks": [{"n": 1}]}},
            },
            "a rollback of unknown shape",
        ),
        (
            {
                "format": "sealgate-repository-state/1",
                "models": {
                    "m": {
                        "highest_seen": 5,
                        "pinned": None,
                        "rollbacks": [{"time": "t", "from": None, "to": "3", "reason": "r"}],
                    }
                },
            },
            "a rollback to a string",
        ),
    ],
)
def test_a_corrupt_or_unexpected_ledger_is_refused_not_guessed(tmp_path: Path, doc: Any, why: str) -> None:
    (tmp_path / STATE_NAME).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    before = (tmp_path / STATE_NAME).read_bytes()
    with pytest.raises(ConfigError, match="refusing to guess the anti-rollback floor"):
        LedgerFile(tmp_path).load()
    with pytest.raises(ConfigError):
        LedgerFile(tmp_path).update(lambda ledger: ledger.change("m", lambda r: r.bumped(9)))
    assert (tmp_path / STATE_NAME).read_bytes() == before, f"{why}: the file is left for the operator"


def test_a_long_field_name_is_clipped_in_the_refusal(tmp_path: Path) -> None:
    write(tmp_path, {**OLD_FORMAT, "x" * 5000 + "\n": 1})
    with pytest.raises(ConfigError) as caught:
        LedgerFile(tmp_path).load()
    assert len(str(caught.value)) < 600 and "\n" not in str(caught.value)


def _append(ledger: Ledger, n: int) -> Ledger:
    """Bump the floor to `n` and log `n` in the history, so a lost update shows as a missing entry."""
    return ledger.change("m", lambda r: replace(r.bumped(n), rollbacks=(*r.rollbacks, Rollback(str(n), None, n, ""))))


def test_threads_updating_at_once_lose_nothing_and_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    file = LedgerFile(tmp_path)
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                LedgerFile(tmp_path).load()
            except ConfigError as exc:
                bad.append(str(exc))

    def writer(k: int) -> None:
        for i in range(40):
            file.update(lambda ledger, n=k * 40 + i + 1: _append(ledger, n))

    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    watcher.join()
    assert bad == []
    record = LedgerFile(tmp_path).load().record("m")
    assert record.highest_seen == 320
    assert sorted(r.to_version for r in record.rollbacks) == list(range(1, 321))


def _race(root: str, values: list[int], go: Any) -> None:
    """One gateway process: wait for the start signal, then record each value as fast as it can."""
    file = LedgerFile(Path(root))
    go.wait()
    for n in values:
        file.update(lambda ledger, n=n: _append(ledger, n))


def test_two_processes_racing_bumps_never_lower_the_floor_nor_lose_an_update(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    rising = list(range(2, 402, 2))  # one process climbs
    falling = list(range(399, 0, -2))  # the other starts high and bumps ever lower versions
    procs = [ctx.Process(target=_race, args=(str(tmp_path), values, go)) for values in (rising, falling)]
    for proc in procs:
        proc.start()
    seen: list[int] = []
    bad: list[str] = []
    go.set()
    while any(proc.is_alive() for proc in procs):
        try:
            seen.append(LedgerFile(tmp_path).load().highest_seen("m"))
        except ConfigError as exc:
            bad.append(str(exc))
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert bad == [], "no reader ever saw a torn ledger"
    assert seen == sorted(seen), "the floor only ever rose"
    record = LedgerFile(tmp_path).load().record("m")
    assert record.highest_seen == 400
    assert sorted(r.to_version for r in record.rollbacks) == sorted(rising + falling), "no update was lost"
    mine = [r.to_version for r in record.rollbacks if r.to_version % 2 == 0]
    assert mine == rising, "each process's updates land in its order"


def test_a_record_is_immutable() -> None:
    record = ModelRecord(3, None, ())
    with pytest.raises(AttributeError):
        record.highest_seen = 1  # type: ignore[misc]
    ledger = Ledger().with_record("m", record)
    with pytest.raises(TypeError):
        ledger.models["m"] = ModelRecord()  # type: ignore[index]
