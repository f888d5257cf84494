"""The repository on disk: layout and names, crash-safe stores and stale temp files after a crash (the
anti-rollback ledger beside it is tested in test_serving_ledger.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import InvalidInput, RollbackRefused
from gateway.serving.ledger import STATE_NAME
from gateway.serving.repository import Repository, check_name

REPO_ROOT = Path(__file__).resolve().parents[2]


def listing(root: Path) -> list[str]:
    """Every path under root (files and folders, hidden ones included), relative and sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_names_and_versions_are_validated(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    assert check_name("mlp-v2.onnx_1") == "mlp-v2.onnx_1"
    for bad in ("", ".hidden", "-x", "a/b", "..", "a" * 65, "ä", "a b"):
        with pytest.raises(InvalidInput):
            repo.path(bad, 1)
    for bad_version in (0, -1, True, 1.0):
        with pytest.raises(InvalidInput):
            repo.path("mlp", bad_version)  # type: ignore[arg-type]
    assert repo.path("mlp", 12) == tmp_path / "mlp" / "12.sealed"


def test_scan_finds_only_complete_versions(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.store("a", 1, b"one")
    repo.store("a", 10, [b"t", b"en"])
    repo.store("b", 2, b"two")
    for junk in ("a/01.sealed", "a/x.sealed", "a/3.sealed.bak", "a/README", ".hidden/1.sealed", "-bad/1.sealed"):
        (tmp_path / junk).parent.mkdir(exist_ok=True)
        (tmp_path / junk).write_bytes(b"junk")
    (tmp_path / "a" / "7.sealed").mkdir()
    found = repo.scan()
    assert found == {"a": {1: tmp_path / "a/1.sealed", 10: tmp_path / "a/10.sealed"}, "b": {2: tmp_path / "b/2.sealed"}}
    assert (tmp_path / "a/10.sealed").read_bytes() == b"ten"


def test_store_refuses_an_existing_version_and_leaves_no_trace(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.store("m", 1, b"original")
    before = listing(tmp_path)
    with pytest.raises(RollbackRefused):
        repo.store("m", 1, b"replacement")
    received = repo.new_temp()
    received.write_bytes(b"replacement")
    with pytest.raises(RollbackRefused):
        repo.store("m", 1, received)
    repo.discard(received)
    assert listing(tmp_path) == before
    assert (tmp_path / "m/1.sealed").read_bytes() == b"original"


def test_store_moves_a_received_temp_file_into_place(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    received = repo.new_temp()
    assert received.parent == tmp_path and received.name.startswith(".") and received.name.endswith(".tmp")
    assert repo.scan() == {}
    received.write_bytes(b"sealed bytes")
    path = repo.store("m", 3, received)
    assert path == tmp_path / "m/3.sealed" and path.read_bytes() == b"sealed bytes"
    assert not received.exists()
    assert path.stat().st_mode & 0o777 == 0o644
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(b"copied")
    assert repo.store("m", 4, outside).read_bytes() == b"copied"
    assert outside.exists(), "a file outside the repository is copied, not moved"
    assert listing(tmp_path) == ["m", "m/3.sealed", "m/4.sealed"]


def test_a_write_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.store("m", 1, b"v1")
    before = listing(tmp_path)

    def broken() -> Iterator[bytes]:
        yield b"x" * 1000
        raise OSError("connection lost")

    with pytest.raises(OSError, match="connection lost"):
        repo.store("m", 2, broken())
    assert listing(tmp_path) == before
    assert repo.scan() == {"m": {1: tmp_path / "m/1.sealed"}}


def test_stale_temp_files_are_ignored_and_cleaned_at_startup(tmp_path: Path) -> None:
    Repository(tmp_path).store("m", 1, b"v1")
    leftovers = [
        tmp_path / "m" / ".2.sealed.abc123.tmp",
        tmp_path / ".incoming.xyz.tmp",
        tmp_path / f".{STATE_NAME}.q1w2.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 60, time.time() - 60))
    repo = Repository(tmp_path)  # "restart"
    in_flight = repo.new_temp()  # a transfer begun after the restart must survive the clean-up
    in_flight.write_bytes(b"arriving")
    assert repo.scan() == {"m": {1: tmp_path / "m/1.sealed"}}
    assert not any(p.exists() for p in leftovers)
    assert in_flight.exists()
    assert repo.scan() == {"m": {1: tmp_path / "m/1.sealed"}}
    assert in_flight.exists(), "only the first scan cleans"


def test_a_process_killed_while_storing_leaves_only_complete_files(tmp_path: Path) -> None:
    Repository(tmp_path).store("m", 1, b"v1")
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from gateway.serving.repository import Repository
        def chunks():
            yield b"partial" * 1000
            print("writing", flush=True)
            time.sleep(60)
            yield b"never"
        Repository(Path({str(tmp_path)!r})).store("m", 2, chunks())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        assert any(p.name.endswith(".tmp") for p in (tmp_path / "m").iterdir()), "the write is in progress"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.02)  # the restarted repository is younger than the leftover
    repo = Repository(tmp_path)
    assert repo.scan() == {"m": {1: tmp_path / "m/1.sealed"}}
    assert listing(tmp_path) == ["m", "m/1.sealed"]
    repo.store("m", 2, b"v2 again")  # the interrupted store can be repeated
    assert repo.scan()["m"][2].read_bytes() == b"v2 again"
