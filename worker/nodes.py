"""A run over several workers (`RunSpec.nodes`): the Celery side of worker/distributed.py.

The worker that takes a run is its node 0 (rank 0; worker/tasks.py).  When the run asks for
more nodes, `rendezvous_for` gives the training loop what it needs to invite them: it sends
one `kfac.join_run` task per other node to the run's queue, with the run's claim (`claim_id`,
new at each claim: a run handed back is claimed again under the same attempt number) and the
address and port of rank 0's store.  `join_run` on another worker checks in the database that
this claim is still the run's and running (a task that waited past its claim — cancelled,
failed, handed back, resumed by a new attempt — is dropped as stale at once, before it tries
to reach a store that may be gone), then trains the node's ranks until rank 0 ends; it records
nothing (rank 0 does) and claims nothing in the store.

The task is acknowledged late, so a worker holding one takes no other message, and never
redelivered: a node that dies fails its attempt (rank 0's collectives raise), and a new
attempt invites its own nodes.  A warm shutdown of the node's worker hands the run back
instead (worker/distributed.py: rank 0 stops the run and it goes back to the queue); a
message taken during the shutdown is handed back unopened, for another free worker.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from functools import partial

from celery.exceptions import Reject

from backend import queue
from backend.settings import Settings, get_settings
from backend.spec import RunSpec, queue_for
from backend.store.db import session_scope
from backend.store.models import Run, RunStatus
from worker.distributed import Rendezvous, train_node

logger = logging.getLogger(__name__)


def rendezvous_for(
    run: Run, spec: RunSpec, settings: Settings, hand_back: Callable[[str], None]
) -> Rendezvous | None:
    """How rank 0 of this claim invites the run's other nodes, calling `hand_back(why)` if
    one of their workers shuts down (see `Rendezvous`); None for a run on one node."""
    if spec.nodes == 1:
        return None
    address = settings.node_address or socket.gethostname()
    invite = partial(_invite, run, spec, address)
    return Rendezvous(invite, settings.node_join_timeout_s, hand_back)


def _invite(run: Run, spec: RunSpec, address: str, port: int) -> None:
    for node in range(1, spec.nodes):
        queue.send_node(run.id, run.attempts, run.claim_id, node, address, port, queue_for(spec))
    logger.info("run %s: invited %d more nodes to %s:%d", run.id, spec.nodes - 1, address, port)


@queue.celery_app().task(
    name=queue.NODE_TASK, acks_late=True, reject_on_worker_lost=False, ignore_result=True
)
def join_run(run_id: str, attempt: int, claim_id: str, node: int, address: str, port: int) -> str:
    """Be node `node` of the run's attempt `attempt`, claimed under `claim_id` (see the module
    doc); raises only to hand its message back during a shutdown."""
    from worker.tasks import worker_id, worker_stopping  # tasks.py imports this module

    if worker_stopping():
        raise Reject("the worker is shutting down", requeue=True)
    settings, member = get_settings(), worker_id()
    invitation = (run_id, attempt, claim_id, node, address, port)
    return join_node(*invitation, settings, member, worker_stopping)


def join_node(
    run_id: str,
    attempt: int,
    claim_id: str,
    node: int,
    address: str,
    port: int,
    settings: Settings,
    member: str,
    stopping: Callable[[], bool] = lambda: False,
) -> str:
    """What `join_run` does, without Celery: returns what happened, for the worker's log;
    `stopping()` tells whether the worker is shutting down."""
    try:
        with session_scope(settings.database_url) as session:
            run = session.get(Run, run_id)
            current = run is not None and (
                run.status == RunStatus.RUNNING.value and run.claim_id == claim_id
            )
            spec = RunSpec.model_validate(run.spec) if current else None
        if spec is None:
            logger.info(
                "run %s: node %d of attempt %d is not wanted now (a stale invitation: "
                "that claim of the run is over)",
                run_id, node, attempt,
            )  # fmt: skip
            return "stale"
        logger.info(
            "run %s: joins as node %d of %d (attempt %d, rank 0 at %s:%d)",
            run_id, node, spec.nodes, attempt, address, port,
        )  # fmt: skip
        result = train_node(spec, node, address, port, member, settings.data_dir, stopping)
    except Exception as error:  # noqa: BLE001 - a node's failure is rank 0's to report
        logger.exception("run %s: node %d could not join", run_id, node)
        return f"failed: {type(error).__name__}"
    if result is None:
        logger.info("run %s: node %d had joined already", run_id, node)
        return "joined already"
    logger.info(
        "run %s: node %d ended: %s at step %d %s",
        run_id, node, result.status, result.step, result.reason or "",
    )  # fmt: skip
    return result.status
