"""The Celery app as the API and the worker share it: broker, queues and task options.

The API only sends tasks by name (it never imports the task code, hence never torch); the
worker imports this app and registers the training task on it (worker/tasks.py).  The options
follow Celery's advice for long jobs: the message is acknowledged only after the run ends
(late ack), a worker reserves one task at a time (prefetch 1), and a message whose worker died
is rejected back to the queue.  No embedded broker redelivers such a message, and Redis only
after its visibility timeout, so lost runs are recovered by the store's heartbeat instead (a
stale running run is re-queued; see worker/tasks.py) — the same way on every broker.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from celery import Celery
from kombu import Queue

from backend import filesystem_broker
from backend.settings import Settings, get_settings

TRAIN_TASK = "kfac.train_run"
NODE_TASK = "kfac.join_run"  # one more node of a run over several workers (worker/nodes.py)
QUEUES = ("gpu", "cpu")
# Longer than any allowed run, so Redis never redelivers a run that is still training.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def filesystem_broker_options(home: Path) -> dict:
    """The filesystem transport (backend/filesystem_broker.py): one folder of message files,
    shared by all processes; claimed messages pass through `processed`, beside the queue."""
    folder = home / "broker"
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("kfac_lab")
    if settings.broker_url:
        broker_url = settings.broker_url
        transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    else:
        broker_url = f"{filesystem_broker.SCHEME}://"
        transport_options = filesystem_broker_options(settings.home)
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="cpu",
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache(maxsize=1)
def celery_app() -> Celery:
    return make_celery(get_settings())


def send_run(run_id: str, queue: str) -> str:
    """Queue the training of one run; returns the Celery task id (stored to revoke it)."""
    result = celery_app().send_task(TRAIN_TASK, args=[run_id], queue=queue)
    return result.id


def send_node(
    run_id: str, attempt: int, claim_id: str, node: int, address: str, port: int, queue: str
) -> str:
    """Ask a free worker to be node `node` of attempt `attempt` of a run, claimed under
    `claim_id`, whose rank 0 hosts its rendezvous store at address:port; returns the task id."""
    args = [run_id, attempt, claim_id, node, address, port]
    return celery_app().send_task(NODE_TASK, args=args, queue=queue).id


def revoke(task_id: str) -> None:
    """Drop a queued task; a running one stops through the store's cancel flag instead."""
    celery_app().control.revoke(task_id)


def broker_reachable(timeout: float = 2.0, settings: Settings | None = None) -> bool:
    """For /readyz: can we open a connection to the broker of `settings` (default: the
    process's)? An app built with settings of its own probes its own broker."""
    app = celery_app() if settings is None else make_celery(settings)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False
