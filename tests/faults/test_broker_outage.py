"""The broker goes away while runs are queued and running: no queued run is lost, the running
ones finish, and no run is trained twice.

The broker is a private `redis-server` with its append-only file on, as in the compose file;
the workers reach it through a `TcpProxy`. Three faults:

* restart: SIGTERM (Redis writes its AOF), then a new process on the same port, as an upgrade
  restarts it;
* network cut: every connection reset and new ones refused for a second, Redis itself up;
* blip: every connection reset, new ones accepted at once. Celery then puts the messages its
  workers were running back in the queue, so running runs are delivered a second time; the
  task's claim in the store makes that second delivery do nothing.

The recovery pass cannot mask a lost message here: it re-sends a queued run only after the
heartbeat timeout (60 s by default), longer than the test."""

from __future__ import annotations

import re
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from tests.conftest import missing_service
from tests.faults.support import REDIS_SERVER, RedisServer, TcpProxy, waiting_runs
from tests.worker.labs import WORKER_WAIT_S, lab, run_spec, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS, EVAL_INTERVAL = 600, 200  # about a second per run: two train, the others wait
RUNS = 4
AWAY_S = 1.0
RECONNECT = timedelta(seconds=5)  # a worker notices the broker is back within this


@pytest.fixture(scope="module", autouse=True)
def _redis_server_installed() -> None:
    if not Path(REDIS_SERVER).exists():
        missing_service("redis-server", f"no {REDIS_SERVER} (apt-get install redis-server)")


@pytest.mark.parametrize("fault", ["restart", "network cut", "blip"])
def test_the_broker_going_away_loses_no_run(tmp_path, own_postgresql_url: str, fault: str) -> None:
    broker = RedisServer(tmp_path / "redis")
    with ExitStack() as stack:
        broker.start()
        stack.callback(broker.stop)
        proxy = stack.enter_context(TcpProxy(("127.0.0.1", broker.port)))
        variables = {"KFAC_DATABASE_URL": own_postgresql_url, "KFAC_BROKER_URL": broker.url}
        the_lab = stack.enter_context(lab(tmp_path / "lab", **variables))
        through_proxy = {"KFAC_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        workers = [the_lab.start_worker(wait=False, **through_proxy) for _ in range(2)]
        for worker in workers:
            worker.wait_ready()
        spec = run_spec(steps=STEPS, eval_interval=EVAL_INTERVAL)
        ids = the_lab.create(*[spec.model_copy(update={"seed": seed}) for seed in range(RUNS)])
        the_lab.send(*ids)
        the_lab.wait(ids[0], until={"running"})

        before = [the_lab.run(run_id).status for run_id in ids]
        down = datetime.now(UTC)
        if fault == "restart":
            broker.stop()
            time.sleep(AWAY_S)  # the workers lose the broker; training goes on
            broker.start()
        elif fault == "network cut":
            proxy.cut()
            time.sleep(AWAY_S)
            proxy.mend()
        else:
            proxy.reset()
        up = datetime.now(UTC) + RECONNECT
        assert "running" in before and "queued" in before, before

        runs = the_lab.wait(*ids)
        for run in runs:
            outcome = (run.status, run.step, run.error, run.attempts)
            assert outcome == ("succeeded", STEPS, None, 1)
            assert [step for step, _ in the_lab.points(run.id)] == list(range(1, STEPS + 1))
            evals = [step for step, _ in the_lab.points(run.id, "test_loss")]
            assert evals == list(range(0, STEPS + 1, EVAL_INTERVAL))
        # Every message was acknowledged, except where a run ended while the broker was down:
        # that ack is lost (kombu does not retry it), so Redis will deliver the message again
        # after its visibility timeout, and the claim in the store will make it do nothing.
        client = redis.Redis(port=broker.port)

        def acks_pending() -> list[str]:
            return [
                run_id
                for run_id in waiting_runs(client)
                if not down <= the_lab.run(run_id).finished_at <= up
            ]

        wait_for(lambda: not acks_pending(), WORKER_WAIT_S, "acks")
        logs = "".join(worker.text() for worker in workers)
        for run_id in ids:  # each trained once, by one worker (a second start would log)
            assert len(re.findall(f"run {run_id} starts", logs)) == 1, logs[-5000:]
        if fault == "blip":
            assert ": nothing to do (" in logs  # a running run's message came again
