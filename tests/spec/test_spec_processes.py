"""RunSpec.processes: the data-parallel ranks of one run (worker/distributed.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.spec import MAX_PROCESSES, RunSpec


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
