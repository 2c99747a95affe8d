"""What the experiment endpoints do beyond reading: turn a request into a validated spec, store
it and queue its runs, clone it, stop it. Routers stay thin and call these.

Queueing order, and why: the experiment and its runs are committed *before* any task is sent,
because a worker may take a task at once and must find its run. If the broker then fails, the
experiment is deleted again (and the tasks already sent are revoked; a worker that still gets
one finds no run and drops it), so a 503 leaves nothing half-launched behind.

Revoking is best effort and done after the answer is sent: cancellation itself is the store's
flag, which a queued run's worker checks before starting and a running one within a few steps;
a revoke only saves a worker the trip.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, NamedTuple

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from backend.api.schemas import PresetRequest
from backend.datafiles import spec_errors
from backend.estimate import estimate, resource_errors
from backend.settings import Settings
from backend.spec import ExperimentSpec, RunSpec, queue_for
from backend.store.models import Experiment, Run
from backend.store.queries import get_experiment
from backend.store.queueing import live_queues
from backend.store.writes import (
    ACTIVE,
    cancel_experiment,
    create_experiment,
    delete_experiment,
    request_cancel,
    set_task_id,
)

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The task broker could not take a message; answered as 503."""


def task_queue() -> Any:
    """`backend.queue`, imported on first use: Celery is not needed to import the app."""
    from backend import queue

    return queue


# --- spec ----------------------------------------------------------------------------------


class Resolved(NamedTuple):
    """A create request's experiment spec, the preset it came from, and where in the body the
    spec's own fields were written (`()`, `("spec",)`; `("overrides",)` for a preset's runs)."""

    spec: ExperimentSpec
    preset: str | None = None
    at: tuple[str, ...] = ()


def resolve_spec(body: PresetRequest | ExperimentSpec) -> Resolved:
    """The experiment spec a create request asks for, and the preset it came from.

    A preset's errors are reported against the request: an unknown name at `preset`, a bad
    field of a whole `spec` at `spec.<field>`, a bad override at `overrides.<key>` (the
    preset's own field names, e.g. `base.steps`, mean nothing to a client that sent
    `{"overrides": {"steps": -1}}`).
    """
    if isinstance(body, ExperimentSpec):
        return Resolved(body)
    from backend.presets import PRESETS, expand_preset

    if body.preset not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise _body_error(("preset",), f"Unknown preset {body.preset!r}; one of: {known}")
    if body.spec is not None:
        if body.overrides is not None or body.name is not None:
            raise _body_error(("spec",), "Give the whole `spec` or `name`/`overrides`, not both")
        return Resolved(body.spec, body.preset, ("spec",))
    overrides = dict(body.overrides or {})
    if body.name is not None:
        overrides["name"] = body.name
    try:
        spec = expand_preset(body.preset, overrides)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        raise RequestValidationError(
            [{**e, "loc": ("body", *_override_loc(e["loc"], body))} for e in errors]
        ) from None
    return Resolved(spec, body.preset, ("overrides",))


def _override_loc(loc: tuple, body: PresetRequest) -> tuple:
    """Where in the request an error of the expanded preset comes from."""
    if loc[:1] == ("base",):  # a run field, merged into the preset's base run
        return ("overrides", *loc[1:])
    if loc == ("name",) and body.name is not None:
        return ("name",)
    return ("overrides", *loc)


def _body_error(loc: tuple, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", *loc), "msg": message, "input": None}]
    )


def with_new_seeds(spec: ExperimentSpec) -> ExperimentSpec:
    """The same experiment with fresh seeds. Runs that shared a seed share the new one, so a
    comparison stays paired (each optimizer sees the same initialisation and batches)."""
    old = sorted({run.seed for run in spec.runs})
    new: set[int] = set()
    while len(new) < len(old):
        seed = secrets.randbelow(2**31)
        if seed not in old:
            new.add(seed)
    mapping = dict(zip(old, sorted(new), strict=True))
    runs = [run.model_copy(update={"seed": mapping[run.seed]}) for run in spec.runs]
    return spec.model_copy(update={"runs": runs})


# --- launching -----------------------------------------------------------------------------


def launch(
    session: Session,
    settings: Settings,
    spec: ExperimentSpec,
    preset: str | None = None,
    at: tuple[str, ...] = (),
) -> Experiment:
    """Store the experiment with its runs queued, send one task per run; returns it reloaded.

    Raises `RequestValidationError` (422) naming every run that would not fit a worker or its
    time limit or lacks its dataset's files (`refuse_unlaunchable`), and `BrokerUnavailable`
    (after undoing the experiment) if a task cannot be sent.
    """
    refuse_unlaunchable(settings, spec, at)
    runs = [_run_columns(run, settings) for run in spec.runs]
    experiment = create_experiment(
        session, name=spec.name, spec=spec.model_dump(mode="json"), runs=runs, preset=preset
    )
    session.commit()
    experiment_id, run_ids = experiment.id, [run.id for run in experiment.runs]
    sent: list[str] = []
    try:
        for run_id, run_spec in zip(run_ids, spec.runs, strict=True):
            sent.append(task_queue().send_run(run_id, queue_for(run_spec)))
    except Exception as error:
        delete_experiment(session, experiment_id)
        session.commit()
        revoke_tasks(sent)
        log.warning("broker unavailable, experiment %s not launched: %s", experiment_id, error)
        raise BrokerUnavailable(str(error)) from error
    for run_id, task_id in zip(run_ids, sent, strict=True):
        set_task_id(session, run_id, task_id)
    session.commit()
    session.expire_all()
    return get_experiment(session, experiment_id)


def refuse_unlaunchable(settings: Settings, spec: ExperimentSpec, at: tuple[str, ...]) -> None:
    """One 422 listing every run that would not fit the worker's memory or time limit and
    every dataset whose files are missing in the API's data directory (unless the run asks for
    a download), each located where the request wrote it (`at`, see `Resolved`)."""
    problems = [
        (_located(loc, at), message)
        for loc, message in resource_errors(
            spec, settings.worker_memory_bytes, settings.run_time_limit_s, settings.worker_flops
        )
    ]
    if settings.check_data:  # off where the API does not share the workers' disk
        problems += [
            ((*_located(loc[:-1], at), "dataset"), message)
            for loc, message in spec_errors(spec, settings.data_dir)
        ]
    if problems:
        raise RequestValidationError(
            [
                {"type": "value_error", "loc": ("body", *loc), "msg": message, "input": None}
                for loc, message in problems
            ]
        )


def _located(loc: tuple, at: tuple[str, ...]) -> tuple:
    """A preset's runs are its comparison made too big by the request's `overrides`."""
    if at == ("overrides",):
        return at if loc[0] in ("base", "optimizers") else loc
    return (*at, *loc)


def _run_columns(run: RunSpec, settings: Settings) -> dict[str, Any]:
    return {
        "estimate": estimate(run, settings.worker_flops).as_json(),
        "label": run.display_label(),
        "optimizer": run.optimizer.model_dump(mode="json"),
        "seed": run.seed,
        "spec": run.model_dump(mode="json"),
        "total_steps": run.total_steps(),
    }


def consumed_queues(session: Session, settings: Settings) -> set[str]:
    """The queues that live workers consume now (for the runs' `status_detail`)."""
    return live_queues(session, settings.heartbeat_timeout_s)


def stored_spec(experiment: Experiment) -> ExperimentSpec:
    """An experiment's spec as stored (validated again: the runs are already expanded)."""
    return ExperimentSpec.model_validate(experiment.spec)


# --- stopping ------------------------------------------------------------------------------


def cancel_all(session: Session, experiment: Experiment) -> list[str]:
    """Cancel every unfinished run; commit; returns the task ids to revoke."""
    cancelled = set(cancel_experiment(session, experiment.id))
    session.commit()
    return [r.celery_task_id for r in experiment.runs if r.id in cancelled and r.celery_task_id]


def cancel_one(session: Session, run: Run) -> list[str]:
    """Cancel one run; commit; returns the task ids to revoke (none if it had finished)."""
    was_active = run.status in ACTIVE
    request_cancel(session, run.id)
    session.commit()
    return [run.celery_task_id] if was_active and run.celery_task_id else []


def remove(session: Session, experiment: Experiment) -> list[str]:
    """Stop an experiment's runs, then delete it with everything it owns; returns the task
    ids to revoke. A worker still training one of its runs loses its claim at its next
    heartbeat and stops."""
    task_ids = cancel_all(session, experiment)
    delete_experiment(session, experiment.id)
    session.commit()
    return task_ids


def revoke_tasks(task_ids: list[str]) -> None:
    """Revoke queued tasks, best effort (run as a background task after the answer)."""
    for task_id in task_ids:
        try:
            task_queue().revoke(task_id)
        except Exception as error:  # noqa: BLE001 - the store's flag already stops the run
            log.warning("could not revoke task %s: %s", task_id, error)
