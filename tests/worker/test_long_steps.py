"""Stopping a run does not wait for its step: cancel, time limit and deletion with real workers.

The worker runs with tests/worker/slow_steps first on its PYTHONPATH, whose sitecustomize
makes the steps of a run labelled `slow SECONDS from K` sleep, from the K-th on — as one K-FAC
step that inverts huge factors blocks the loop for minutes. A stuck step here sleeps an hour:
any wait below ends only if the worker stops the run without waiting for the step.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.store.db import session_scope
from backend.store.writes import cancel_experiment, delete_experiment, request_cancel
from tests.worker.labs import WORKER_WAIT_S, Lab, lab, run_spec, slow_steps_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STUCK = "slow 3600 from 3"  # two steps, then a step of an hour
TIME_LIMIT_S = 6


def slow_worker(the_lab: Lab, **env: str) -> None:
    the_lab.start_worker(**slow_steps_env(), **env)


@pytest.fixture(scope="module")
def slow_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One worker whose slow runs sleep (with the default time limit of a day)."""
    with lab(tmp_path_factory.mktemp("slow")) as the_lab:
        slow_worker(the_lab)
        yield the_lab


@pytest.fixture
def limited_lab(tmp_path: Path) -> Iterator[Lab]:
    """The same with a time limit of a few seconds per run."""
    with lab(tmp_path) as the_lab:
        slow_worker(the_lab, KFAC_RUN_TIME_LIMIT_S=str(TIME_LIMIT_S))
        yield the_lab


def test_a_cancel_does_not_wait_for_a_long_step(slow_lab: Lab) -> None:
    (run_id,) = slow_lab.create(run_spec(label=STUCK, steps=20, checkpoint_interval=1))
    slow_lab.send(run_id)
    slow_lab.wait_for(lambda: slow_lab.checkpoints(run_id), WORKER_WAIT_S, "a checkpoint")
    slow_lab.wait_for(
        lambda: len(slow_lab.points(run_id)) == 2, WORKER_WAIT_S, "the first two steps"
    )
    with session_scope(slow_lab.url) as session:
        request_cancel(session, run_id)

    (run,) = slow_lab.wait(run_id)  # the step in progress would take an hour
    assert (run.status, run.step, run.error) == ("cancelled", 2, "cancelled on request")
    assert [step for step, _ in slow_lab.points(run_id)] == [1, 2]  # recorded data intact
    slow_lab.wait_for_no_checkpoints(run_id)

    # The pool replaced the process; the message put back in the queue trains nothing.
    (after,) = slow_lab.create(run_spec())
    slow_lab.send(after)
    assert slow_lab.wait(after)[0].status == "succeeded"
    run = slow_lab.run(run_id)
    assert (run.status, run.attempts) == ("cancelled", 1)


def test_a_run_over_its_time_limit_fails_with_the_reason(limited_lab: Lab) -> None:
    paced = limited_lab.create(run_spec(label="slow 0.2 from 1", steps=10_000))[0]
    stuck = limited_lab.create(run_spec(label="slow 3600 from 1", steps=10))[0]
    limited_lab.send(paced, stuck)
    runs = limited_lab.wait(paced, stuck)
    for run in runs:
        assert run.status == "failed", (run.status, run.error)
        match = re.fullmatch(rf"time limit of {TIME_LIMIT_S} s exceeded at step (\d+)", run.error)
        assert match and int(match[1]) == run.step, run.error
    assert runs[0].step < 10_000
    steps = [step for step, _ in limited_lab.points(paced)]  # none if it failed at step 0
    assert steps[-1:] == ([runs[0].step] if runs[0].step else [])
    assert runs[1].step == 0  # its first step never ended
    limited_lab.wait_for_no_checkpoints(paced, stuck)


def test_deleting_an_experiment_while_its_run_trains_leaves_nothing_on_disk(
    slow_lab: Lab,
) -> None:
    spec = run_spec(label="slow 0.02 from 1", steps=5_000, checkpoint_interval=5)
    (run_id,) = slow_lab.create(spec)
    slow_lab.send(run_id)
    slow_lab.wait_for(lambda: slow_lab.checkpoints(run_id), WORKER_WAIT_S, "a checkpoint")
    experiment_id = slow_lab.run(run_id).experiment_id
    with session_scope(slow_lab.url) as session:  # as DELETE /api/experiments/{id} does
        cancel_experiment(session, experiment_id)
    with session_scope(slow_lab.url) as session:
        delete_experiment(session, experiment_id)
    slow_lab.wait_for_no_checkpoints(run_id)
