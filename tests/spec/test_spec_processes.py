"""RunSpec.processes: the data-parallel ranks of one run (worker/distributed.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.spec import MAX_NODES, MAX_PROCESSES, MAX_WORLD_SIZE, RunSpec


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"processes": 0}, "greater than or equal to 1"),
        ({"processes": MAX_PROCESSES + 1}, f"less than or equal to {MAX_PROCESSES}"),
        ({"batch_size": 4, "processes": 5}, "5 processes need a mini-batch of at least 5"),
        (
            {"batch_size": {"kind": "exponential", "initial": 2}, "processes": 3},
            "3 processes need a mini-batch of at least 3",
        ),
    ],
)
def test_processes_errors_name_the_field(data, message):
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(data)
    (error,) = info.value.errors()
    assert error["loc"] == ("processes",) and message in error["msg"]


def test_one_process_by_default_and_as_many_as_the_batch_allows():
    assert RunSpec().processes == 1
    assert RunSpec(batch_size=16, processes=16).processes == 16


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": 0}, "greater than or equal to 1"),
        ({"nodes": MAX_NODES + 1}, f"less than or equal to {MAX_NODES}"),
        (
            {"batch_size": 1000, "processes": MAX_PROCESSES, "nodes": MAX_WORLD_SIZE // 8},
            f"{MAX_WORLD_SIZE // 8} nodes × {MAX_PROCESSES} processes = "
            f"{MAX_WORLD_SIZE * 2} ranks exceed {MAX_WORLD_SIZE}",
        ),
        (
            {"batch_size": 5, "processes": 3, "nodes": 2},
            "2 nodes × 3 processes = 6 ranks need a mini-batch of at least 6",
        ),
        (
            {"batch_size": {"kind": "exponential", "initial": 3}, "nodes": 4},
            "4 nodes × 1 processes = 4 ranks need a mini-batch of at least 4",
        ),
    ],
)
def test_nodes_errors_name_the_field(data, message):
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(data)
    (error,) = info.value.errors()
    assert error["loc"] == ("nodes",) and message in error["msg"]


def test_the_world_is_nodes_times_processes():
    assert RunSpec().world_size == 1
    spec = RunSpec(batch_size=MAX_WORLD_SIZE, processes=MAX_PROCESSES, nodes=4)
    assert spec.world_size == MAX_WORLD_SIZE == 4 * MAX_PROCESSES
    assert RunSpec(batch_size=6, processes=3, nodes=2).world_size == 6
