"""Who holds which data in a run: the server's held-out test split, the optional public split, client partitions.

Every party derives its share from the same seed, so a simulated node and a real SuperNode given the same
partition-id / num-partitions hold the same rows; the server never sees client rows.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fl.tasks import Split, get_task, partition
from gateway.errors import ConfigError


@lru_cache(maxsize=8)
def _split(task: str, seed: int) -> Split:
    """The task's train/test split for `seed` (cached: every client in a process needs it)."""
    return get_task(task).load(seed)


def heldout_data(task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split the server evaluates on; no client ever trains on it."""
    _, _, x_te, y_te = _split(task, seed)
    return x_te, y_te


def public_data(task: str, seed: int, public_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `public_size` rows of the shuffled training split: data the model owner may use centrally."""
    x_tr, y_tr, _, _ = _split(task, seed)
    if public_size >= len(y_tr):
        raise ConfigError(f"public-size {public_size} leaves no training data for clients (train has {len(y_tr)})")
    order = np.random.default_rng(seed + 7).permutation(len(y_tr))[:public_size]
    return x_tr[order], y_tr[order]


def client_partitions(
    task: str, seed: int, num_partitions: int, alpha: float | None, public_size: int = 0
) -> list[np.ndarray]:
    """Row indices (into the training split) of each client, the public rows excluded."""
    _, y_tr, _, _ = _split(task, seed)
    private = np.sort(np.random.default_rng(seed + 7).permutation(len(y_tr))[public_size:])
    parts = partition(y_tr[private], num_partitions, alpha, seed)
    return [private[p] for p in parts]


def client_data(
    task: str, seed: int, partition_id: int, num_partitions: int, alpha: float | None, public_size: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The rows client `partition_id` of `num_partitions` holds."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} outside 0..{num_partitions - 1}")
    x_tr, y_tr, _, _ = _split(task, seed)
    idx = client_partitions(task, seed, num_partitions, alpha, public_size)[partition_id]
    return x_tr[idx], y_tr[idx]
