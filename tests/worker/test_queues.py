"""A run on a queue that no worker consumes: the worker registry and `queue_timeout_s`.

A real `kfac-lab worker` consumes the `cpu` queue only (no GPU here); runs asking for `cuda`
go to `gpu`, which nobody consumes. The worker's recovery pass (every 2 s with a 4 s heartbeat
timeout) records the worker's queues in the store and applies the runs' `on_queue_timeout`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.store.db import session_scope
from backend.store.queueing import live_queues
from tests.worker.labs import WORKER_WAIT_S, Lab, lab, run_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cpu_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab(tmp_path_factory.mktemp("queues"), KFAC_HEARTBEAT_TIMEOUT_S="4") as the_lab:
        yield the_lab


def test_a_cuda_run_without_a_gpu_worker_fails_or_moves_to_the_cpu(cpu_lab: Lab) -> None:
    worker = cpu_lab.start_worker()  # consumes `cpu` only: this machine has no GPU

    def consumed() -> set[str]:
        with session_scope(cpu_lab.url) as session:
            return live_queues(session, cpu_lab.settings.heartbeat_timeout_s)

    cpu_lab.wait_for(
        lambda: consumed() == {"cpu"}, WORKER_WAIT_S, "the worker to register its queue"
    )
    failing, moving, patient = cpu_lab.create(
        run_spec(device="cuda", queue_timeout_s=1),
        run_spec(device="cuda", queue_timeout_s=1, on_queue_timeout="cpu"),
        run_spec(device="cuda"),
    )
    cpu_lab.send(failing, moving, patient)
    failed, moved = cpu_lab.wait(failing, moving)
    assert (failed.status, failed.error) == ("failed", "no worker consumed queue gpu within 1 s")
    assert failed.attempts == 0
    assert (moved.status, moved.device, moved.spec["device"]) == ("succeeded", "cpu", "cpu")
    assert cpu_lab.run(patient).status == "queued"  # no timeout: it waits for a GPU worker

    assert worker.stop() == 0
    cpu_lab.wait_for(lambda: consumed() == set(), WORKER_WAIT_S, "the stopped worker to unregister")
