"""Snapshots: pooled to at most 512 x 512, stored as compressed float32, written once per step."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np

from backend.store.db import session_scope
from backend.store.queries import events_after, list_snapshots, read_snapshot
from backend.store.results import write_snapshot
from backend.store.snapshots import block_pool, to_base64_matrix, to_json_matrix

MakeExperiment = Callable[..., tuple[str, list[str]]]


def test_block_pool_averages_blocks_including_ragged_edges() -> None:
    matrix = np.arange(25, dtype=np.float64).reshape(5, 5)
    pooled = block_pool(matrix, max_side=2)  # factor 3: groups [0, 1, 2] and [3, 4]
    assert pooled.shape == (2, 2) and pooled.dtype == np.float32
    assert pooled[0, 0] == matrix[:3, :3].mean() and pooled[1, 1] == matrix[3:, 3:].mean()
    assert pooled[0, 1] == matrix[:3, 3:].mean()
    small = np.eye(3)
    assert np.array_equal(block_pool(small), small)


def test_json_matrices_round_to_float32_precision_and_hide_nan() -> None:
    matrix = np.array([[0.1, np.nan], [-1.2345678e-7, np.inf]], dtype=np.float32)
    assert to_json_matrix(matrix) == [[0.1, None], [-1.234568e-07, None]]


def test_base64_matrices_keep_every_float32_bit_and_non_finite_values() -> None:
    matrix = np.array([[0.1, np.nan, 3.0], [-1.2345678e-7, np.inf, 0.0]], dtype=np.float32)
    encoded = to_base64_matrix(matrix)
    assert encoded["dtype"] == "float32" and encoded["shape"] == [2, 3]
    decoded = np.frombuffer(base64.b64decode(encoded["data"]), "<f4").reshape(encoded["shape"])
    np.testing.assert_array_equal(decoded, matrix)  # NaN == NaN here


def test_snapshot_round_trip(db_url: str, make_experiment: MakeExperiment) -> None:
    experiment_id, (run_id,) = make_experiment()
    rng = np.random.default_rng(0)
    exact = rng.standard_normal((700, 700))
    exact = exact @ exact.T
    small = rng.standard_normal((40, 40))
    blocks = [[0, 300], [300, 700]]
    with session_scope(db_url) as session:
        snapshot_id = write_snapshot(
            session,
            run_id,
            step=10,
            matrices={"exact": exact, "kronecker": exact * 2, "factor": small},
            blocks=blocks,
            spectra={"A0": np.linspace(1, 0, 5)},
            relative_errors={"kronecker": np.float64(0.25)},
        )
        again = write_snapshot(session, run_id, 10, {"exact": exact}, blocks)
        listing = list_snapshots(session, run_id)
        snapshot = read_snapshot(session, snapshot_id)
        only_exact = read_snapshot(session, snapshot_id, names=["exact"])
        events = [e for e in events_after(session, experiment_id) if e.kind == "snapshot"]

    assert again == snapshot_id and len(events) == 1
    assert events[0].payload == {
        "run_id": run_id,
        "snapshot_id": snapshot_id,
        "step": 10,
        "kinds": ["exact", "factor", "kronecker"],
    }
    assert [(s["id"], s["step"]) for s in listing] == [(snapshot_id, 10)]
    assert listing[0]["shapes"] == {
        "exact": [350, 350],
        "kronecker": [350, 350],
        "factor": [40, 40],
    }

    stored = np.array(snapshot["matrices"]["exact"])
    assert stored.shape == (350, 350)
    np.testing.assert_allclose(stored, block_pool(exact), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(snapshot["matrices"]["factor"], small, rtol=1e-6, atol=1e-6)
    assert snapshot["blocks"] == [[0, 150], [150, 350]] and snapshot["parameter_blocks"] == blocks
    assert snapshot["spectra"] == {"A0": [1.0, 0.75, 0.5, 0.25, 0.0]}
    assert snapshot["relative_errors"] == {"kronecker": 0.25}
    assert set(only_exact["matrices"]) == {"exact"}
