"""The API restarts while pages follow an experiment live: each page reconnects by itself and
resumes after its last event, so it ends up with every event of the store's log exactly once.

The API is a `kfac-lab serve` process on a fixed port, killed (a crash) or stopped (a deploy)
and started again; the events are metric batches written to the store, as a worker writes
them, all through the restart. The page is `PageStream`, which follows EventSource's rules.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from backend.store.db import session_scope
from backend.store.queries import last_event_id
from backend.store.results import write_metrics
from backend.store.writes import experiment_of
from tests.faults.support import TOKEN, ApiServer, PageStream, store_ids
from tests.worker.labs import WORKER_WAIT_S, lab, run_spec, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH_INTERVAL_S = 0.05


def write_batch(url: str, run_id: str, metric: str, step: int) -> None:
    """One metric batch, as a worker writes it: one `metrics` event."""
    with session_scope(url) as session:
        write_metrics(session, run_id, [(metric, step, time.time(), 1 / (1 + step))])


@contextmanager
def writing_batches(url: str, run_id: str) -> Iterator[None]:
    """Write one metric batch (one event) every BATCH_INTERVAL_S until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        step = 0
        try:
            while not stop.wait(BATCH_INTERVAL_S):
                step += 1
                write_batch(url, run_id, "train_loss", step)
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)

    thread = threading.Thread(target=write, name="batch-writer", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors


@pytest.mark.parametrize("restart", ["killed", "stopped"])
def test_pages_resume_after_an_api_restart(tmp_path, postgresql_url: str, restart: str) -> None:
    variables = {"KFAC_DATABASE_URL": postgresql_url, "KFAC_ADMIN_TOKEN": TOKEN}
    with lab(tmp_path, **variables) as the_lab:
        api = ApiServer(the_lab.env, tmp_path / "api.log")
        api.start()
        try:
            (run_id,) = the_lab.create(run_spec())
            for step in range(3):  # the page loads these with its data, not from the stream
                write_batch(the_lab.url, run_id, "test_loss", step)
            with session_scope(the_lab.url) as session:
                experiment_id = experiment_of(session, run_id)
                loaded_at = last_event_id(session, experiment_id)  # where the page's data ends

            with PageStream(api.url, experiment_id, TOKEN, loaded_at) as page:
                with writing_batches(the_lab.url, run_id):
                    wait_for(
                        lambda: len(page.events) >= 10, WORKER_WAIT_S, "events before the restart"
                    )
                    if restart == "killed":
                        api.kill()
                    else:
                        api.stop()
                    time.sleep(0.5)  # batches keep coming while the API is away
                    api.start()
                    wait_for(lambda: page.connections >= 2, WORKER_WAIT_S, "a reconnect")
                    seen = len(page.events)
                    wait_for(
                        lambda: len(page.events) >= seen + 10, WORKER_WAIT_S, "events after it"
                    )
                expected = store_ids(the_lab.url, experiment_id, loaded_at)
                wait_for(lambda: page.ids()[-1:] == expected[-1:], WORKER_WAIT_S, "the last event")
            assert loaded_at > 0 and page.failure is None
            assert page.connections == 2, page.dropped
            assert page.ids() == expected  # no gap, nothing twice, in order
        finally:
            api.kill()
