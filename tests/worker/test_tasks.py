"""The training task with real `kfac-lab worker` processes, on both brokers and both databases.

Runs are created in the store and sent with backend.queue exactly as the API does; the tests
then watch the store. Models are tiny (a 64-12-10 MLP on the 8x8 digits), so a run takes well
under a second and the time goes into starting workers.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import redis

from backend import queue
from backend.store.db import session_scope
from backend.store.models import MetricSeries
from backend.store.run_logs import read_log_lines
from backend.store.writes import request_cancel
from tests.conftest import missing_service, postgresql_database
from tests.worker.labs import WORKER_WAIT_S, Lab, lab, run_spec, wait_for
from worker import recovery

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_HOST = os.environ.get("KFAC_TEST_REDIS_HOST", "127.0.0.1")
RELU_AUTOENCODER = {"name": "autoencoder", "encoder": [8], "activation": "relu", "loss": "mse"}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The default installation: filesystem broker and SQLite under one home, one worker."""
    with lab(tmp_path_factory.mktemp("embedded")) as the_lab:
        the_lab.start_worker()
        yield the_lab


@contextmanager
def redis_database() -> Iterator[str]:
    """The URL of an empty Redis database (1..15), flushed at the end.  A database is taken
    by setting a key only if it is empty (one transaction), so that test sessions running at
    once take different ones."""
    try:
        redis.Redis(host=REDIS_HOST).ping()
    except redis.ConnectionError as error:
        missing_service("Redis", f"not reachable at {REDIS_HOST}: {error}")
    take_if_empty = "if redis.call('DBSIZE') == 0 then return redis.call('SET', KEYS[1], 1) end"
    for number in random.sample(range(1, 16), 15):
        client = redis.Redis(host=REDIS_HOST, db=number)
        if client.eval(take_if_empty, 1, "kfac-test-session"):
            break
    else:
        missing_service("Redis", f"no empty database among 1..15 at {REDIS_HOST}")
    try:
        yield f"redis://{REDIS_HOST}:6379/{number}"
    finally:
        client.flushdb()


@pytest.fixture
def team(tmp_path) -> Iterator[Lab]:
    """A team installation: Redis broker, a fresh PostgreSQL database, one worker."""
    with ExitStack() as stack:
        database = stack.enter_context(postgresql_database())
        broker = stack.enter_context(redis_database())
        the_lab = stack.enter_context(
            lab(tmp_path, KFAC_DATABASE_URL=database, KFAC_BROKER_URL=broker)
        )
        the_lab.start_worker()
        yield the_lab


def check_two_runs(the_lab: Lab) -> None:
    """Two runs succeed; each step's train loss is stored exactly once."""
    specs = [run_spec(seed=0), run_spec(seed=1, optimizer={"name": "adam"})]
    ids = the_lab.create(*specs)
    sent_at = time.time()
    the_lab.send(*ids)
    runs = the_lab.wait(*ids)
    latency = runs[0].started_at.timestamp() - sent_at
    print(f"\ntask start latency ({the_lab.settings.broker_url or 'filesystem'}): {latency:.3f} s")
    for run in runs:
        assert (run.status, run.step, run.error, run.attempts) == ("succeeded", 30, None, 1)
        points = the_lab.points(run.id)
        assert [step for step, _ in points] == list(range(1, 31))
        assert run.final_metrics["train_loss"] == points[-1][1]
        assert [step for step, _ in the_lab.points(run.id, "test_loss")] == [0, 10, 20, 30]
        with session_scope(the_lab.url) as session:
            series = session.query(MetricSeries).filter_by(run_id=run.id, name="train_loss").one()
            assert (series.n_points, series.step_min, series.step_max) == (30, 1, 30)
        assert run.device == "cpu" and run.data_source.startswith("sklearn")
    the_lab.wait_for_no_checkpoints(*ids)


def test_embedded_broker_and_sqlite(embedded: Lab) -> None:
    check_two_runs(embedded)


def test_redis_and_postgresql(team: Lab) -> None:
    check_two_runs(team)


def test_cancel_a_running_run_and_revoke_a_queued_one(embedded: Lab) -> None:
    running, queued = embedded.create(run_spec(steps=100_000), run_spec())
    tasks = embedded.send(running, queued)
    embedded.wait(running, until={"running"})
    time.sleep(0.3)  # let it train a little

    with session_scope(embedded.url) as session:  # as the API does: mark, then revoke
        assert request_cancel(session, queued) == "cancelled"
    queue.revoke(tasks[1])
    asked = time.monotonic()
    with session_scope(embedded.url) as session:
        assert request_cancel(session, running) == "running"
    # The latency is printed, not asserted: the outcome must not depend on the machine's load.
    (run,) = embedded.wait(running)
    print(f"\ncancel latency: {time.monotonic() - asked:.2f} s")
    assert run.status == "cancelled"
    assert 0 < run.step < 100_000 and run.error == "cancelled on request"

    discarded = f"Discarding revoked task: {queue.TRAIN_TASK}[{tasks[1]}]"
    wait_for(
        lambda: discarded in embedded.workers[0].text(), WORKER_WAIT_S, "the revoked task's discard"
    )
    assert embedded.run(queued).attempts == 0  # never claimed


def test_a_diverging_run_ends_diverged_and_the_worker_goes_on(embedded: Lab) -> None:
    diverging = run_spec(
        optimizer={"name": "sgd", "lr": 50.0}, model=RELU_AUTOENCODER, steps=200, eval_interval=None
    )
    ids = embedded.create(diverging, run_spec())
    embedded.send(*ids)
    diverged, after = embedded.wait(*ids)
    assert diverged.status == "diverged"
    assert 0 < diverged.step < 200 and f"at step {diverged.step}" in diverged.error
    points = embedded.points(diverged.id)
    assert points and all(math.isfinite(v) for _, v in points)
    assert points[-1][0] < diverged.step  # the non-finite loss itself is not stored
    assert after.status == "succeeded"


def test_a_killed_worker_s_run_resumes_from_its_checkpoint(tmp_path) -> None:
    """SIGKILL mid-run; another worker finds the stale heartbeat and resumes the run. Then a
    warm shutdown of that worker hands its running run back to the queue."""
    spec = run_spec(model={"name": "mlp", "hidden": [32]}, steps=400, checkpoint_interval=100)
    with lab(tmp_path, KFAC_HEARTBEAT_TIMEOUT_S="2") as the_lab:
        killed, reference = the_lab.create(spec, spec)  # same spec, same seed
        first = the_lab.start_worker()
        the_lab.send(killed, reference)
        second = the_lab.start_worker(wait=False)  # takes `reference` once it is up
        the_lab.wait_for_checkpoint(killed, 200)
        first.kill()
        assert the_lab.run(killed).status == "running"
        assert 200 <= the_lab.points(killed)[-1][0] < 400  # stored up to the checkpoint at least

        resumed, uninterrupted = the_lab.wait(killed, reference)
        assert (resumed.status, resumed.attempts) == ("succeeded", 2)
        assert uninterrupted.status == "succeeded"
        with session_scope(the_lab.url) as session:  # the run's log says where it resumed
            log = [line["message"] for line in read_log_lines(session, killed)]
        resumes = [m for m in log if m.startswith("worker.training: resumed from the checkpoint")]
        assert resumes in (
            ["worker.training: resumed from the checkpoint of step 200"],
            ["worker.training: resumed from the checkpoint of step 300"],
        ), log
        curve = the_lab.points(killed)
        assert [step for step, _ in curve] == list(range(1, 401))
        assert curve == the_lab.points(reference)  # the same trajectory, bit for bit
        for name in ("train_loss", "test_loss"):
            assert resumed.final_metrics[name] == uninterrupted.final_metrics[name]

        (handed,) = the_lab.create(run_spec(steps=100_000, checkpoint_interval=100))
        the_lab.send(handed)
        the_lab.wait_for_checkpoint(handed, 100)
        assert second.stop() == 0
        run = the_lab.run(handed)
        assert (run.status, run.attempts, run.error) == ("queued", 0, None)
        assert recovery.queue_depths(["cpu"]) == {"cpu": 1}  # its message is back
