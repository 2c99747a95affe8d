"""Fixtures for the store's tests; the databases (`db_url`) come from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backend.store.db import session_scope
from backend.store.writes import create_experiment


@pytest.fixture
def make_experiment(db_url: str) -> Callable[..., tuple[str, list[str]]]:
    """Create an experiment with `n_runs` queued runs; returns (experiment id, run ids)."""

    def make(n_runs: int = 1, name: str = "test experiment") -> tuple[str, list[str]]:
        runs = [
            {"label": f"run {i}", "optimizer": {"name": "sgd", "lr": 0.1}, "seed": i, "spec": {}}
            for i in range(n_runs)
        ]
        with session_scope(db_url) as session:
            experiment = create_experiment(session, name=name, spec={"model": "mlp"}, runs=runs)
            return experiment.id, [run.id for run in experiment.runs]

    return make
