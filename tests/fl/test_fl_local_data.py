"""A node's own data file (node config `data-file`, CSV or NPZ): read as the task needs it, refused when its
schema does not fit, and trained on by the real ClientApp in place of a built-in partition."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fl.client_app import make_client_app
from fl.data import client_data
from fl.local_data import load_local_data, write_csv, write_npz
from fl.settings import FlSettings
from fl.tasks import get_task
from gateway.errors import ConfigError


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    return client_data("digits", 0, 0, 4, None)


@pytest.mark.parametrize("kind", ["npz", "csv"])
def test_npz_and_csv_round_trip_exactly(tmp_path: Path, rows: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    x, y = rows
    path = (write_npz if kind == "npz" else write_csv)(tmp_path / f"mine.{kind}", x, y)
    got_x, got_y = load_local_data(path, "digits")
    assert got_x.dtype == np.float32 and got_y.dtype == np.int64
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


def test_csv_label_column_may_be_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "ctr.csv"
    header = ["label"] + [f"c{i}" for i in range(16)]
    path.write_text(",".join(header) + "\n" + "1," + ",".join(["0.5"] * 16) + "\n\n0," + ",".join(["-2"] * 16) + "\n")
    x, y = load_local_data(path, "ctr")
    assert x.shape == (2, 16) and y.tolist() == [1, 0] and x[1, 0] == -2.0


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((5, 63)), np.zeros(5), "needs 64 features"),
        (np.zeros((5, 64)), np.zeros(4), "5 rows but labels"),
        (np.zeros((0, 64)), np.zeros(0), "no rows"),
        (np.full((5, 64), np.nan), np.zeros(5), "NaN or infinite"),
        (np.zeros((5, 64)), np.array([0, 1, 2, 3, 10]), r"labels must be in 0\.\.9"),
        (np.zeros((5, 64)), np.array([0, 1, 2, 3, -1]), r"labels must be in 0\.\.9"),
        (np.zeros((5, 64)), np.array([0.5, 1, 2, 3, 4]), "labels must be integers"),
        (np.full((5, 64), 16.0), np.zeros(5), r"must lie in \[0, 1\]"),  # raw 0-16 pixels, not scaled
    ],
)
def test_schema_check_refuses_data_that_does_not_fit_the_task(
    tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(ConfigError, match=message):
        load_local_data(path, "digits")


def test_unreadable_or_unsafe_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_local_data(tmp_path / "missing.npz", "digits")
    (tmp_path / "rows.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"use \.csv or \.npz"):
        load_local_data(tmp_path / "rows.json", "digits")
    np.savez(tmp_path / "pickled.npz", x=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(ConfigError, match="cannot read arrays"):  # object arrays need pickle: never loaded
        load_local_data(tmp_path / "pickled.npz", "digits")
    np.savez(tmp_path / "other.npz", features=np.zeros((2, 64)), y=np.zeros(2))
    with pytest.raises(ConfigError, match="missing \\['x'\\]"):
        load_local_data(tmp_path / "other.npz", "digits")
    (tmp_path / "ragged.csv").write_text("a,label\n1,0\n1,2,3\n")
    with pytest.raises(ConfigError, match="line 3: 3 fields"):
        load_local_data(tmp_path / "ragged.csv", "ctr")
    (tmp_path / "words.csv").write_text("label," + ",".join(f"c{i}" for i in range(16)) + "\n1," + "x," * 15 + "x\n")
    with pytest.raises(ConfigError, match="line 2: a field is not a number"):
        load_local_data(tmp_path / "words.csv", "ctr")


@pytest.fixture
def serverapp_identity() -> Iterator[None]:
    """The process identity Flower's runtime sets; a server-side Message cannot be built without it."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.mark.usefixtures("serverapp_identity")
def test_the_client_app_trains_on_the_file_its_node_config_names(
    tmp_path: Path, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = rows
    path = write_npz(tmp_path / "node.npz", x[:100], y[:100])
    settings = FlSettings(num_server_rounds=2, epsilon=3.0)
    app = make_client_app(settings)
    ctx = Context(run_id=1, node_id=7, node_config={"data-file": str(path)}, state=RecordDict(), run_config={})
    arrays = ArrayRecord(get_task("digits").model_cls().state_dict())
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({})}), 7, MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = app(msg, ctx)
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == 100 and metrics["partition-id"] == -1
    assert 0 < metrics["epsilon"] <= 3.0
    path.write_bytes(b"not an npz")  # a node whose file goes bad fails its round in one line, not silently
    with pytest.raises(ConfigError, match="not an NPZ archive"):
        app(msg, ctx)
