"""The experiments list in the database (backend.store.listing) and organising experiments
(backend.store.organise), on SQLite and PostgreSQL; and the migration 0007_pages on data.

The databases are shared by the session's tests, so each test marks its experiments with a
random word and lists only those (by searching for the word or filtering by a tag of it).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from alembic import command
from sqlalchemy import text

from backend.store.db import dispose_engines, get_engine, session_scope
from backend.store.listing import SORT_KEYS, list_experiments
from backend.store.migrate import alembic_config, upgrade
from backend.store.models import ExperimentTag
from backend.store.organise import set_archived, set_notes, set_tags
from backend.store.queries import get_experiment
from backend.store.writes import (
    claim_run,
    create_experiment,
    delete_experiment,
    heartbeat,
    set_status,
)
from tests.conftest import postgresql_database


@dataclass
class Made:
    id: str
    name: str
    status: str
    preset: str | None
    tags: list[str]
    runs: int
    progress: float | None
    best_loss: float | None


@pytest.fixture
def word() -> str:
    return f"w{secrets.token_hex(4)}"


@pytest.fixture
def make(db_url: str, word: str) -> Callable[..., Made]:
    """An experiment named `WORD name` with runs of the given (optimizer, total steps, step,
    status, final train_loss), a preset and tags."""

    def make_one(name, runs, preset=None, tags=()) -> Made:
        with session_scope(db_url) as session:
            rows = [
                {"label": f"r{i}", "optimizer": {"name": o}, "seed": i, "spec": {}}
                | {"total_steps": t}
                for i, (o, t, *_) in enumerate(runs)
            ]
            experiment = create_experiment(
                session, name=f"{word} {name}", spec={}, runs=rows, preset=preset
            )
            set_tags(session, experiment, tags)
            for run, (_, _, step, status, loss) in zip(experiment.runs, runs, strict=True):
                if status == "running":
                    claim_run(session, run.id, "test")
                    heartbeat(session, run.id, step)
                elif status != "queued":
                    metrics = None if loss is None else {"train_loss": loss}
                    set_status(session, run.id, status, step=step, final_metrics=metrics)
            experiment_id = experiment.id
        with session_scope(db_url) as session:
            stored = get_experiment(session, experiment_id)
            totals = sum(t or 0 for _, t, *_ in runs)
            done = sum(min(s, t or 0) for _, t, s, *_ in runs)
            losses = [loss for *_, loss in runs if loss is not None]
            return Made(
                experiment_id,
                stored.name,
                stored.status,
                preset,
                sorted(tags),
                len(runs),
                done / totals if totals else None,
                min(losses) if losses else None,
            )

    return make_one


@pytest.fixture
def four(make: Callable[..., Made], word: str) -> list[Made]:
    """Four experiments that differ in every sortable column."""
    return [
        make("delta", [("kfac", 100, 0, "queued", None)], preset="smoke", tags=[f"{word}-b"]),
        make(
            "alpha",
            [("sgd", 100, 100, "succeeded", 0.5), ("kfac", 100, 100, "succeeded", 0.2)],
            tags=["zeta", f"{word}-a"],
        ),
        make(
            "charlie",
            [("adam", 10, 5, "running", None)] * 3,
            preset="autoencoder_race",
        ),
        make(
            "bravo",
            [("adam", 50, 50, "failed", 0.9)] * 2 + [("sgd", 50, 10, "cancelled", 0.7)] * 2,
            preset="mnist",
            tags=[f"{word}-c"],
        ),
    ]


def listed(db_url: str, **filters) -> tuple[list[str], int]:
    with session_scope(db_url) as session:
        page, total = list_experiments(session, limit=200, **filters)
        return [e.name for e in page], total


EXPECTED_KEY = {
    "created": lambda m, order: (None, order.index(m.name)),  # creation order
    "name": lambda m, _: (False, m.name),
    "status": lambda m, _: (False, m.status),
    "preset": lambda m, _: (m.preset is None, m.preset),
    "tags": lambda m, _: (not m.tags, m.tags[0] if m.tags else None),
    "runs": lambda m, _: (False, m.runs),
    "progress": lambda m, _: (m.progress is None, m.progress),
    "best_loss": lambda m, _: (m.best_loss is None, m.best_loss),
}


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("sort", SORT_KEYS)
def test_every_column_sorts_both_ways_with_missing_values_last(
    db_url: str, four: list[Made], word: str, sort: str, order: str
) -> None:
    created = [m.name for m in four]
    with_value = [m for m in four if EXPECTED_KEY[sort](m, created)[0] is not True]
    without = [m for m in four if EXPECTED_KEY[sort](m, created)[0] is True]
    ordered = sorted(with_value, key=lambda m: EXPECTED_KEY[sort](m, created)[1])
    if order == "desc":
        ordered.reverse()
    # Ties (none here but for missing values) go newest first.
    expected = [m.name for m in ordered] + [m.name for m in reversed(without)]
    names, total = listed(db_url, search=word, sort=sort, order=order)
    assert total == 4
    assert names == expected, (sort, order)


def test_the_four_really_differ(four: list[Made]) -> None:
    """The sort test proves something only if every column puts the four in another order."""
    for key in ("name", "status", "runs"):
        assert len({EXPECTED_KEY[key](m, [])[1] for m in four}) == 4, key
    assert [m.progress for m in four] == [0.0, 1.0, 0.5, 0.6]
    assert [m.best_loss for m in four] == [None, 0.2, None, 0.7]


def test_search_by_name_tag_and_optimizer(db_url: str, make, word: str) -> None:
    optimizer = f"opt{word}"
    make("Needle in a haystack", [("sgd", 10, 0, "queued", None)], tags=["haystack"])
    make("plain", [(optimizer, 10, 0, "queued", None)], tags=[f"{word}-t", "shared"])
    make("other", [("adam", 10, 0, "queued", None)], tags=[f"{word}-t"])

    assert listed(db_url, search=f"{word} NEEDLE")[0] == [f"{word} Needle in a haystack"]
    assert listed(db_url, search=f"{word}-t", sort="name", order="asc")[0] == [
        f"{word} other",
        f"{word} plain",
    ]
    assert listed(db_url, search=optimizer)[0] == [f"{word} plain"]
    assert listed(db_url, search=optimizer.upper())[0] == [f"{word} plain"]
    assert listed(db_url, tags=[f"{word}-t", "shared"])[0] == [f"{word} plain"]
    assert listed(db_url, search=word, optimizers=[optimizer, "adam"], sort="name")[0] == [
        f"{word} plain",
        f"{word} other",
    ]
    assert listed(db_url, name=f"{word} %")[0] == []  # LIKE's wildcards are plain text
    assert listed(db_url, search=word, status=["running"]) == ([], 0)


def test_archived_experiments_leave_the_list_unless_asked_for(db_url: str, make, word) -> None:
    kept = make("kept", [("sgd", 10, 0, "queued", None)])
    archived = make("archived", [("sgd", 10, 0, "queued", None)])
    with session_scope(db_url) as session:
        experiment = get_experiment(session, archived.id)
        set_archived(session, experiment, True)
        first = experiment.archived_at
        set_archived(session, experiment, True)
        assert experiment.archived_at == first  # archived once, when first asked
    assert listed(db_url, search=word) == ([kept.name], 1)
    assert listed(db_url, search=word, archived="only") == ([archived.name], 1)
    assert listed(db_url, search=word, archived="include")[1] == 2
    with session_scope(db_url) as session:
        set_archived(session, get_experiment(session, archived.id), False)
    assert listed(db_url, search=word)[1] == 2


def test_pages_of_the_list_cover_it_once_with_the_total(db_url: str, make, word) -> None:
    for index in range(5):
        make(f"e{index}", [("sgd", 10, index, "succeeded", float(index))])
    seen = []
    for offset in (0, 2, 4):
        with session_scope(db_url) as session:
            page, total = list_experiments(
                session, search=word, limit=2, offset=offset, sort="progress", order="asc"
            )
            assert total == 5
            seen += [e.name for e in page]
    assert seen == [f"{word} e{i}" for i in range(5)]


def test_tags_are_a_set_replaced_whole_notes_kept_and_both_go_with_the_experiment(
    db_url: str, make
) -> None:
    made = make("tagged", [("sgd", 10, 0, "queued", None)], tags=["b", "a"])
    assert made.tags == ["a", "b"]
    with session_scope(db_url) as session:
        experiment = get_experiment(session, made.id)
        set_tags(session, experiment, ["c", "a", "c"])
        set_notes(session, experiment, "# Findings\n\n*damping* matters")
    with session_scope(db_url) as session:
        experiment = get_experiment(session, made.id)
        assert experiment.tags == ["a", "c"]
        assert experiment.notes == "# Findings\n\n*damping* matters"
        assert delete_experiment(session, made.id)
    with session_scope(db_url) as session:
        rows = session.query(ExperimentTag).filter_by(experiment_id=made.id).count()
        assert rows == 0


def test_list_rejects_unknown_sorts_and_filters(db_url: str) -> None:
    with session_scope(db_url) as session:
        for bad in ({"sort": "colour"}, {"order": "up"}, {"archived": "maybe"}):
            with pytest.raises(ValueError, match=next(iter(bad))):
                list_experiments(session, **bad)


# --- the migration on data -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def fresh_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A database of its own at head (the migration test goes down and up again)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        upgrade(url)
        yield url
        dispose_engines()
        return
    with postgresql_database(prefix="kfac_migration") as url:
        yield url


def test_0007_copies_each_run_s_optimizer_name_and_final_loss_and_goes_down_again(
    fresh_url: str,
) -> None:
    config = alembic_config(fresh_url)
    command.downgrade(config, "0006_share_links")
    with get_engine(fresh_url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO experiments (id, name, spec, status, created_at, updated_at) "
                "VALUES ('e1', 'old', '{}', 'queued', :now, :now)"
            ),
            {"now": "2026-01-01T00:00:00+00:00"},
        )
        connection.execute(
            text(
                "INSERT INTO runs (id, experiment_id, position, label, optimizer, seed, spec, "
                "status, step, cancel_requested, tracked, attempts, created_at, final_metrics) "
                "VALUES ('r1', 'e1', 0, 'k', :optimizer, 0, '{}', 'succeeded', 0, false, false, "
                "0, :now, :metrics)"
            ),
            {
                "optimizer": '{"name": "kfac", "damping": 150}',
                "now": "2026-01-01T00:00:00+00:00",
                "metrics": '{"train_loss": 0.25, "test_loss": 0.5}',
            },
        )
    dispose_engines()
    command.upgrade(config, "head")
    with session_scope(fresh_url) as session:
        page, total = list_experiments(session, optimizers=["kfac"])
        assert total == 1 and page[0].notes == "" and page[0].tags == []
        assert page[0].runs[0].optimizer_name == "kfac"
        assert page[0].runs[0].final_train_loss == 0.25
    dispose_engines()
    command.downgrade(config, "0006_share_links")  # and back: nothing of 0007 is left
    with get_engine(fresh_url).connect() as connection:
        columns = connection.execute(text("SELECT * FROM runs")).keys()
        assert "optimizer_name" not in columns and "final_train_loss" not in columns
    dispose_engines()
