"""The experiments list: search, filters, sort and pages, all done by the database.

Every sort of the list page is an ORDER BY here, and every search a WHERE that an index
serves (the migration 0007_pages adds those the list needs):

* `name` — contains, any case (`ix_experiments_name`; a leading `%` scans the index);
* `tags` — has every one of them (`experiment_tags`, indexed by tag);
* `optimizers` — some run uses one of them (`runs.optimizer_name` with the experiment id);
* `search` — the search box: the name contains it, or it is one of the experiment's tags or
  optimizers;
* `status` — any of these statuses; `archived` — hide archived experiments (the default),
  show only them, or include them.

Sorts (`SortKey`): the experiments' own columns (created, name, status, preset), their first
tag, and three figures of their runs computed in one grouped read of an index over `runs`
(how many runs, the progress Σ min(step, total) / Σ total, the best final `train_loss`).
Missing values (no preset, no tag, no finished run) come last in both directions; ties are
broken by creation time, newest first, then id, so pages never overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql.elements import ColumnElement

from backend.store.models import Experiment, ExperimentTag, Run

SortKey = Literal["created", "name", "status", "preset", "tags", "runs", "progress", "best_loss"]
SORT_KEYS: tuple[str, ...] = get_args(SortKey)
SortOrder = Literal["asc", "desc"]
ArchivedFilter = Literal["exclude", "include", "only"]
RUN_FIGURES = ("runs", "progress", "best_loss")


def list_experiments(
    session: Session,
    *,
    limit: int = 50,
    offset: int = 0,
    status: str | Sequence[str] | None = None,
    name: str | None = None,
    search: str | None = None,
    tags: Sequence[str] = (),
    optimizers: Sequence[str] = (),
    archived: ArchivedFilter = "exclude",
    sort: SortKey = "created",
    order: SortOrder = "desc",
) -> tuple[list[Experiment], int]:
    """A page of experiments (with their runs and tags) and how many match in all."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    conditions = _conditions(status, name, search, tags, optimizers, archived)
    total = session.scalar(select(func.count()).select_from(Experiment).where(*conditions))
    query = select(Experiment).where(*conditions)
    if sort in RUN_FIGURES:
        figures = _run_figures()
        query = query.outerjoin(figures, figures.c.experiment_id == Experiment.id)
        key = figures.c[sort]
    else:
        key = _column_key(sort)
    ordered = key.desc() if order == "desc" else key.asc()
    if sort in ("preset", "tags") or sort in RUN_FIGURES:
        ordered = ordered.nulls_last()
    page = session.scalars(
        query.options(selectinload(Experiment.runs))
        .order_by(ordered, Experiment.created_at.desc(), Experiment.id)
        .limit(limit)
        .offset(offset)
    )
    return list(page), total or 0


def _conditions(
    status: str | Sequence[str] | None,
    name: str | None,
    search: str | None,
    tags: Sequence[str],
    optimizers: Sequence[str],
    archived: ArchivedFilter,
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(Experiment.status.in_([status] if isinstance(status, str) else status))
    if name:
        conditions.append(_name_contains(name))
    if search and search.strip():
        word = search.strip()
        conditions.append(
            _name_contains(word) | _has_tag(word.lower()) | _uses_optimizer([word, word.lower()])
        )
    conditions.extend(_has_tag(tag) for tag in dict.fromkeys(tags))
    if optimizers:
        conditions.append(_uses_optimizer(optimizers))
    if archived == "exclude":
        conditions.append(Experiment.archived_at.is_(None))
    elif archived == "only":
        conditions.append(Experiment.archived_at.is_not(None))
    elif archived != "include":
        raise ValueError(f"archived must be 'exclude', 'include' or 'only', not {archived!r}")
    return conditions


def _name_contains(text: str) -> ColumnElement[bool]:
    return Experiment.name.ilike(f"%{escape_like(text)}%", escape="\\")


def _has_tag(tag: str) -> ColumnElement[bool]:
    return Experiment.id.in_(select(ExperimentTag.experiment_id).where(ExperimentTag.tag == tag))


def _uses_optimizer(names: Sequence[str]) -> ColumnElement[bool]:
    return Experiment.id.in_(
        select(Run.experiment_id).where(Run.optimizer_name.in_(list(dict.fromkeys(names))))
    )


def _column_key(sort: str) -> ColumnElement:
    if sort == "tags":  # the first tag in alphabetical order
        return (
            select(func.min(ExperimentTag.tag))
            .where(ExperimentTag.experiment_id == Experiment.id)
            .scalar_subquery()
        )
    columns = {
        "created": Experiment.created_at,
        "name": Experiment.name,
        "status": Experiment.status,
        "preset": Experiment.preset,
    }
    return columns[sort]


def _run_figures():
    """Per experiment: its number of runs, its progress and its best final training loss, read
    from the index `ix_runs_experiment_id_figures` alone."""
    total = func.coalesce(Run.total_steps, 0)
    done = case((Run.step < total, Run.step), else_=total)
    progress = cast(func.sum(done), Float) / func.nullif(func.sum(total), 0)
    best = func.min(Run.final_train_loss)
    return (
        select(
            Run.experiment_id,
            func.count().label("runs"),
            progress.label("progress"),
            best.label("best_loss"),
        )
        .group_by(Run.experiment_id)
        .subquery("run_figures")
    )


def escape_like(text: str) -> str:
    """`text` with LIKE's wildcards escaped (escape character `\\`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
