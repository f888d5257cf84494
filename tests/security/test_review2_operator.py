"""The second outside review, careless-operator and release-path classes (issue 10, findings 14, 16, 18): files
dropped into the repository by hand, a model path that is a file, a ledger that is ambiguous, keys every user
can read, push/fetch/rollback requests that disagree with the artifact. A real gateway on loopback (dev PKI,
real ONNX models, the release client) for the release path; the ledger, key and name rules directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.errors import ConfigError, InvalidInput
from gateway.fsutil import check_private_mode
from gateway.release.client import ReleaseClient, RemoteError
from gateway.serving.ledger import STATE_NAME, LedgerFile
from gateway.versions import check_name
from tests import harness
from tests.models import make_onnx_mlp
from tests.security import _release as release

NAME = "rel"
IN_DIM = 4
BLOCKED = "blocked"  # a model whose place in the repository is a plain file


def _model(seed: int) -> dict[str, bytes]:
    return make_onnx_mlp(IN_DIM, (4,), 1, seed=seed)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """`rel` v1 stored properly, and beside it what an operator might drop in by hand."""
    env = harness.make_env(tmp_path_factory.mktemp("operator"))
    harness.seal_model(env, NAME, 1, _model(1))
    v2 = harness.seal_model(env, NAME, 2, _model(2), out=env.root / "rel-2.sealed").read_bytes()
    folder = env.models / NAME
    (folder / "01.sealed").write_bytes(v2)  # a leading zero: not the version pattern
    (folder / "2.sealed.tmp").write_bytes(v2)  # a temporary-looking name
    (folder / "3.sealed").mkdir()  # a folder with a version's name
    (folder / "1000000000000000000.sealed").write_bytes(v2)  # 19 digits: above the one version limit
    (folder / "7.sealed").symlink_to("/etc/passwd")  # a link to a file that is no artifact
    (env.models / "rel-4.sealed").write_bytes(v2)  # an artifact in the root, not in a model folder
    (env.models / BLOCKED).write_text("not a folder\n")
    return env.with_config(server={"rest": False, "metrics_address": "127.0.0.1:0"})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with release.serving(env, NAME) as gw:
        yield gw


def _client(env: harness.Env, gateway: Any, model: str = NAME) -> ReleaseClient:
    return release.client(env, gateway, model)


def _states(env: harness.Env, gateway: Any, model: str = NAME) -> dict[int, str]:
    return release.states(env, gateway, model)


def _repository(env: harness.Env) -> dict[str, tuple[int, int]]:
    """Every entry of the repository but the ledger, with inode and mtime: what a refusal must not change."""
    out = {}
    for p in env.models.rglob("*"):
        if not p.name.startswith(".sealgate-state"):
            st = p.lstat()
            out[p.relative_to(env.models).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return out


def _served_version(env: harness.Env, gateway: Any) -> str:
    return release.served_version(env, gateway, NAME, IN_DIM)


def test_hand_dropped_repository_files_are_ignored_or_refused_never_served(
    env: harness.Env, gateway: Any, tmp_path: Path
) -> None:
    """Only `rel/<1-18 digits>.sealed` files count; a link to /etc/passwd is REFUSED and its bytes never leave."""
    assert _states(env, gateway) == {1: "SERVING", 7: "REFUSED"}
    assert _served_version(env, gateway) == "1"
    out = tmp_path / "fetched"
    with _client(env, gateway) as c:
        with pytest.raises(RemoteError) as refused:
            c.fetch(NAME, out, 7)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE and "REFUSED" in str(refused.value)
        for version in (2, 3, 4):
            with pytest.raises(RemoteError) as missing:
                c.fetch(NAME, out, version)
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert not out.exists()
    assert (env.models / NAME / "7.sealed").is_symlink() and (env.models / NAME / "2.sealed.tmp").exists()
    assert (env.models / NAME / "3.sealed").is_dir(), "the operator's files are left where they were"


def test_a_push_whose_model_path_is_a_file_is_refused_in_plain_words(
    env: harness.Env, gateway: Any, tmp_path: Path
) -> None:
    """Before: INTERNAL "internal error" and a FileExistsError traceback in the log. Now FAILED_PRECONDITION,
    nothing stored, the version not consumed, the file untouched, and the gateway still serving."""
    sealed = harness.seal_model(env, BLOCKED, 1, _model(5), out=tmp_path / "blocked-1.sealed")
    before = _repository(env)
    with _client(env, gateway, BLOCKED) as c:
        with pytest.raises(RemoteError) as refused:
            c.push(sealed, BLOCKED, 1)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "not a folder" in str(refused.value) and str(env.models) not in str(refused.value)
        assert all(m.highest_version_seen == 0 for m in c.list(BLOCKED).models)
    assert _repository(env) == before
    assert (env.models / BLOCKED).read_text() == "not a folder\n"
    assert _served_version(env, gateway) == "1"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("header names another model", grpc.StatusCode.INVALID_ARGUMENT),
        ("header has another version", grpc.StatusCode.INVALID_ARGUMENT),
        ("19-digit version", grpc.StatusCode.INVALID_ARGUMENT),
        ("name with ..", grpc.StatusCode.INVALID_ARGUMENT),
        ("different bytes for a stored version", grpc.StatusCode.FAILED_PRECONDITION),
        ("fetch of a version never stored", grpc.StatusCode.NOT_FOUND),
        ("rollback to a version never stored", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_release_requests_that_disagree_are_refused_and_change_nothing(
    env: harness.Env, gateway: Any, tmp_path: Path, case: str, code: grpc.StatusCode
) -> None:
    """Refused correctly already; kept so that they stay refused: status code, nothing stored, floor unchanged."""
    other = harness.seal_model(env, "other", 9, _model(9), out=tmp_path / "other-9.sealed")
    v1_again = harness.seal_model(env, NAME, 1, _model(11), out=tmp_path / "rel-1-b.sealed")
    calls = {
        "header names another model": lambda c: c.push(other, NAME, 9),
        "header has another version": lambda c: c.push(v1_again, NAME, 8),
        "19-digit version": lambda c: c.push(v1_again, NAME, 10**18),
        "name with ..": lambda c: c.push(v1_again, "..", 1),
        "different bytes for a stored version": lambda c: c.push(v1_again, NAME, 1),
        "fetch of a version never stored": lambda c: c.fetch(NAME, tmp_path / "out.sealed", 99),
        "rollback to a version never stored": lambda c: c.rollback(NAME, 99, "operator typo"),
    }
    before = _repository(env)
    with _client(env, gateway) as c:
        with pytest.raises(RemoteError) as refused:
            calls[case](c)
        assert refused.value.code == code, str(refused.value)
        assert [m.highest_version_seen for m in c.list(NAME).models] == [1]
    assert _repository(env) == before and not (tmp_path / "out.sealed").exists()
    assert _served_version(env, gateway) == "1"


LEDGER_HEAD = '{"format": "sealgate-repository-state/1", "models": '
RECORD = '{"highest_seen": 9, "pinned": null, "rollbacks": []}'


@pytest.mark.parametrize(
    "text",
    [
        LEDGER_HEAD + '{"m": {"highest_seen": 9, "highest_seen": 1, "pinned": null, "rollbacks": []}}}',
        LEDGER_HEAD + '{"m": ' + RECORD + ', "m": {"highest_seen": 1, "pinned": null, "rollbacks": []}}}',
        LEDGER_HEAD + '{"m": ' + RECORD + '}, "models": {}}',
        '{"format": "x", ' + LEDGER_HEAD[1:] + '{"m": ' + RECORD + "}}",
        "[" * 100_000 + "]" * 100_000,
        '{"models": ' * 50_000,
    ],
    ids=["field twice", "model twice", "models twice", "format twice", "nested 100000 deep", "unclosed 50000 deep"],
)
def test_an_ambiguous_or_deep_ledger_is_refused_not_guessed(tmp_path: Path, text: str) -> None:
    """Before: the last duplicate won (the floor 9 read as 1) and deep nesting raised RecursionError."""
    (tmp_path / STATE_NAME).write_text(text)
    with pytest.raises(ConfigError, match="refusing to guess the anti-rollback floor") as caught:
        LedgerFile(tmp_path).load()
    assert len(str(caught.value)) < 700
    with pytest.raises(ConfigError):
        LedgerFile(tmp_path).update(lambda ledger: ledger.change("m", lambda r: r.bumped(10)))
    assert (tmp_path / STATE_NAME).read_text() == text, "the file is left for the operator"


def test_a_ledger_the_gateway_wrote_still_reads(tmp_path: Path) -> None:
    """The duplicate-key check refuses only what the gateway never writes."""
    file = LedgerFile(tmp_path)
    file.update(lambda ledger: ledger.change("m", lambda r: r.bumped(9)))
    assert LedgerFile(tmp_path).load().record("m").highest_seen == 9
    assert json.loads((tmp_path / STATE_NAME).read_text())["models"]["m"]["highest_seen"] == 9


KEY_MODES = [(0o600, True), (0o400, True), (0o440, True), (0o640, True), (0o644, False), (0o604, False), (0o666, False)]


@pytest.mark.parametrize(("mode", "allowed"), KEY_MODES, ids=[f"{mode:04o}" for mode, _ in KEY_MODES])
def test_a_private_key_is_refused_when_every_user_can_reach_it(tmp_path: Path, mode: int, allowed: bool) -> None:
    """Group access stays allowed (a Kubernetes secret mounted 0440); world access is refused."""
    key = tmp_path / "k.key"
    key.write_text("secret")
    os.chmod(key, mode)
    if allowed:
        check_private_mode(key)
    else:
        with pytest.raises(ConfigError, match=f"every user \\(mode {mode:04o}\\)") as caught:
            check_private_mode(key)
        assert "secret" not in str(caught.value)


def test_the_name_rule_clips_and_escapes_what_it_echoes() -> None:
    """seal and the servers share one rule; the refusal of a 100 KB or ANSI name stays one short line."""
    assert check_name("mlp-1.v2_x") == "mlp-1.v2_x"
    for bad in ("x" * 100_000, "\x1b[2Jred\nforged", "a/b", "..", "", "ml\u202ep", "x" * 65):
        with pytest.raises(InvalidInput) as caught:
            check_name(bad)
        message = str(caught.value)
        assert len(message) < 300 and message.isprintable(), message
