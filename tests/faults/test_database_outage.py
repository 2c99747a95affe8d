"""PostgreSQL is unreachable for 10 s while a run trains: the worker keeps its points and writes
them once the database is back, none lost and none twice; the API answers 503 meanwhile and
200 again afterwards by itself; a page following the experiment live misses nothing.

The worker and the API reach PostgreSQL through a `TcpProxy`, which plays the outage: every
open connection is reset and new ones are refused. The test itself reads the store directly.
A quick test of the worker's `StoreRecorder` alone checks that it backs off meanwhile.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from sqlalchemy.engine import make_url

from backend.store.db import session_scope
from backend.store.queries import last_event_id
from backend.store.results import write_metrics
from backend.store.writes import experiment_of
from tests.faults.support import TOKEN, ApiServer, PageStream, TcpProxy, store_ids
from tests.worker.labs import WORKER_WAIT_S, lab, run_spec, slow_steps_env, wait_for
from worker import recording
from worker.recording import StoreRecorder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 10.0
STEPS, EVAL_INTERVAL = 1500, 250
# The interrupted run sleeps in every step (tests/worker/slow_steps), so that it trains for
# 12 s however fast the machine, and the outage, which starts at its first stored points, is
# sure to meet it training: unslowed, it trained to its end before the outage at load ~15.
SLOW = "slow 0.008 from 1"
DATA_ENDPOINTS = ("/api/experiments", "/api/experiments/{experiment}", "/api/runs/{run}/metrics")


def test_a_database_outage_loses_no_point(tmp_path, own_postgresql_url: str) -> None:
    direct = make_url(own_postgresql_url)
    with (
        TcpProxy((direct.host, direct.port or 5432)) as proxy,
        lab(tmp_path, KFAC_DATABASE_URL=own_postgresql_url, KFAC_ADMIN_TOKEN=TOKEN) as the_lab,
    ):
        proxied = direct.set(host="127.0.0.1", port=proxy.port)
        through_proxy = {"KFAC_DATABASE_URL": proxied.render_as_string(hide_password=False)}
        api = ApiServer({**the_lab.env, **through_proxy}, tmp_path / "api.log")
        worker = the_lab.start_worker(wait=False, **through_proxy, **slow_steps_env())
        try:
            api.start()
            worker.wait_ready()
            spec = run_spec(steps=STEPS, eval_interval=EVAL_INTERVAL, checkpoint_interval=500)
            slow = spec.model_copy(update={"label": SLOW})
            reference, interrupted = the_lab.create(spec, slow)  # same seed: same values
            with session_scope(the_lab.url) as session:
                experiment = experiment_of(session, interrupted)
                loaded_at = last_event_id(session, experiment)
            paths = [p.format(experiment=experiment, run=interrupted) for p in DATA_ENDPOINTS]
            admin = {"Authorization": f"Bearer {TOKEN}"}
            with (
                httpx.Client(base_url=api.url, headers=admin, timeout=5) as client,
                PageStream(api.url, experiment, TOKEN, loaded_at) as page,
            ):
                the_lab.send(reference, interrupted)  # one worker: the reference trains first
                the_lab.wait_for(
                    lambda: the_lab.points(interrupted), WORKER_WAIT_S, "the run's first points"
                )
                proxy.cut()
                answers = []
                end = time.monotonic() + OUTAGE_S
                while time.monotonic() < end:  # a hang fails as a timeout of `client`
                    for path in ["/readyz", *paths]:
                        response = client.get(path)
                        retry_after = response.headers.get("Retry-After")
                        answers.append((path, response.status_code, retry_after, response.json()))
                    time.sleep(0.5)
                stalled_at = the_lab.points(interrupted)[-1][0]
                proxy.mend()

                assert {code for _, code, _, _ in answers} == {503}, answers
                assert all(retry for path, _, retry, _ in answers if path != "/readyz")
                readiness = [body for path, _, _, body in answers if path == "/readyz"]
                assert all(body["checks"]["database"] != "ok" for body in readiness)
                wait_for(
                    lambda: all_ok(client, ["/readyz", *paths]), WORKER_WAIT_S, "the API to recover"
                )

                runs = the_lab.wait(reference, interrupted)
                expected = store_ids(the_lab.url, experiment, loaded_at)
                wait_for(
                    lambda: page.ids()[-1:] == expected[-1:], WORKER_WAIT_S, "the page's last event"
                )

            assert [(run.status, run.attempts) for run in runs] == [("succeeded", 1)] * 2
            # The outage did hit the writer: it stores a run's records in order, so whichever
            # was first in line when the outage began (metrics, or the run's log lines) failed.
            assert re.search(rf"run {interrupted}: storing \w+ failed", worker.text())
            assert stalled_at < STEPS
            curve = the_lab.points(interrupted)
            assert [step for step, _ in curve] == list(range(1, STEPS + 1))
            assert curve == the_lab.points(reference)
            evals = the_lab.points(interrupted, "test_loss")
            assert [step for step, _ in evals] == list(range(0, STEPS + 1, EVAL_INTERVAL))
            assert evals == the_lab.points(reference, "test_loss")
            for name in ("train_loss", "test_loss"):
                assert runs[1].final_metrics[name] == runs[0].final_metrics[name]
            assert (page.failure, page.connections) == (None, 1)  # the stream lived through it
            assert page.ids() == expected
        finally:
            api.kill()


def test_the_recorder_backs_off_while_points_keep_coming(
    tmp_path, postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training goes on recording during an outage (a batch a second; here one every 20 ms),
    and each batch wakes the writer thread, which must still wait out its backoff instead of
    trying the database again at every batch."""
    attempts = [0]

    def counted(*args, **kwargs):
        attempts[0] += 1
        return write_metrics(*args, **kwargs)

    monkeypatch.setattr(recording, "write_metrics", counted)
    direct = make_url(postgresql_url)
    with (
        TcpProxy((direct.host, direct.port or 5432)) as proxy,
        lab(tmp_path, KFAC_DATABASE_URL=postgresql_url) as the_lab,
    ):
        proxied = direct.set(host="127.0.0.1", port=proxy.port)
        (run_id,) = the_lab.create(run_spec())
        recorder = StoreRecorder(run_id, proxied.render_as_string(hide_password=False))
        proxy.cut()
        for step in range(1, 61):  # 60 batches in about 1.2 s, instead of 60 in a minute
            recorder.metrics([("train_loss", step, time.time(), 1 / step)])
            time.sleep(0.02)
        proxy.mend()
        assert recorder.close(timeout=30)
        # Backoff from 0.2 s: tries at about 0, 0.2, 0.6 and 1.4 s, then one that succeeds.
        assert attempts[0] <= 8, attempts
        assert [step for step, _ in the_lab.points(run_id)] == list(range(1, 61))


def all_ok(client: httpx.Client, paths: list[str]) -> bool:
    return all(client.get(path).status_code == 200 for path in paths)
