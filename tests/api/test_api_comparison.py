"""The comparison through the API: a swept experiment's groups, statistics over seeds, time to
a target (given or the baselines' default), winners, colours; several experiments side by
side, and who may read what. Every figure below is worked out by hand from the points."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from backend.store.db import session_scope
from backend.store.results import write_metrics
from tests.api.conftest import ADMIN, finish_run

SWEEP_SPEC = {
    "name": "sweep",
    "base": {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [8]}, "steps": 40},
    "optimizers": [{"name": "kfac"}, {"name": "sgd_momentum", "sweep": {"lr": [0.01, 0.05]}}],
    "seeds": [0, 1],
}
T975_1 = 12.706204736174704  # Student's t, 97.5% quantile, 1 degree of freedom

# train_loss of each run as (step, seconds, value); examples_seen is 10 per step.
CURVES = {
    "kfac · seed 0": [(0, 0.0, 8.0), (10, 1.0, 6.0), (20, 2.0, 4.0), (30, 3.0, 3.0)],
    "kfac · seed 1": [
        (0, 0.0, 9.0),
        (10, 1.0, 7.0),
        (20, 2.0, 5.5),
        (30, 3.0, 4.5),
        (40, 4.0, 4.0),
    ],
    "sgd_momentum lr=0.01 · seed 0": [(0, 0.0, 9.0), (10, 1.0, 8.0), (20, 2.0, 7.0)],
    "sgd_momentum lr=0.01 · seed 1": [(0, 0.0, 9.0)],  # diverges
    "sgd_momentum lr=0.05 · seed 0": [(0, 0.0, 9.0), (10, 1.0, 6.0), (20, 2.0, 6.5)],
    "sgd_momentum lr=0.05 · seed 1": [(0, 0.0, 9.0), (10, 1.0, 5.0), (20, 2.0, 5.5)],
}
STEP_TIMES = {"kfac": [0.1, 0.3, 0.2], "sgd_momentum": [0.05, 0.05, 0.08]}


@pytest.fixture
def swept(client: TestClient, create: Callable[..., dict], db_url: str) -> dict:
    experiment = create(SWEEP_SPEC)
    for run in experiment["runs"]:
        curve = CURVES[run["label"]]
        points = [("train_loss", s, t, v) for s, t, v in curve]
        points += [("examples_seen", s, t, 10.0 * s) for s, t, _ in curve]
        times = STEP_TIMES[run["optimizer"]["name"]]
        points += [("step_time", i + 1, 0.0, dt) for i, dt in enumerate(times)]
        with session_scope(db_url) as session:
            write_metrics(session, run["id"], points)
        status = "diverged" if run["label"] == "sgd_momentum lr=0.01 · seed 1" else "succeeded"
        finish_run(db_url, run["id"], status)
    return experiment


def comparison(client: TestClient, experiment: dict, **params) -> dict:
    response = client.get(
        f"/api/experiments/{experiment['id']}/comparison", params=params, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_sweep_runs_are_labelled_in_grid_order(swept: dict) -> None:
    assert [run["label"] for run in swept["runs"]] == list(CURVES)


def test_groups_statistics_and_given_target(client: TestClient, swept: dict) -> None:
    body = comparison(client, swept, metric="train_loss", target=5.0)
    assert (body["metric"], body["target"], body["criterion"]) == ("train_loss", 5.0, "final")
    kfac, slow, fast = body["groups"]
    assert [g["label"] for g in body["groups"]] == [
        "kfac",
        "sgd_momentum lr=0.01",
        "sgd_momentum lr=0.05",
    ]
    assert kfac["config"] == {} and fast["config"] == {"lr": 0.05}
    assert kfac["runs"] == [r["id"] for r in swept["runs"][:2]]
    assert kfac["seeds"] == {"count": 2, "finished": 2}
    # final 3 and 4: mean 3.5, sd √0.5, ci95 = t(0.975, 1)·sd/√2
    assert kfac["final"]["mean"] == 3.5 and kfac["final"]["n"] == 2
    assert math.isclose(kfac["final"]["sd"], math.sqrt(0.5))
    assert math.isclose(kfac["final"]["ci95"], T975_1 * 0.5, rel_tol=1e-9)
    # Crossings of 5: seed 0 between (10, 6) and (20, 4) at 15; seed 1 between (20, 5.5) and
    # (30, 4.5) at 25; seconds and examples interpolated alike.
    assert kfac["steps_to_target"]["mean"] == 20 and kfac["steps_to_target"]["never"] == 0
    assert math.isclose(kfac["seconds_to_target"]["mean"], 2.0)
    assert math.isclose(kfac["examples_to_target"]["mean"], 200.0)
    assert math.isclose(kfac["steps_to_target"]["sd"], math.sqrt(50))
    # The diverged seed is left out of final and best, and never reaches the target.
    assert slow["final"] == {"mean": 7.0, "sd": None, "ci95": None, "n": 1, "excluded": 1}
    assert slow["steps_to_target"]["n"] == 0 and slow["steps_to_target"]["never"] == 2
    # lr=0.05: best values 6 and 5; only seed 1 reaches 5, at its recorded step 10.
    assert fast["best"]["mean"] == 5.5 and fast["final"]["mean"] == 6.0
    assert fast["steps_to_target"]["mean"] == 10 and fast["steps_to_target"]["never"] == 1
    # Median step: of (0.1, 0.3, 0.2) s for both K-FAC seeds.
    assert math.isclose(kfac["step_time_ms"], 200.0) and math.isclose(fast["step_time_ms"], 50.0)
    assert [g["best_of_optimizer"] for g in body["groups"]] == [True, False, True]


def test_default_target_is_the_best_baseline(client: TestClient, swept: dict) -> None:
    body = comparison(client, swept, criterion="best")
    assert body["target"] == 6.0  # the lr=0.05 group's final mean beats lr=0.01's 7
    kfac = body["groups"][0]
    # 6 is reached at step 10 by seed 0 and at 10 + (6 − 7)/(5.5 − 7)·10 by seed 1.
    assert math.isclose(kfac["steps_to_target"]["mean"], (10 + 10 + 20 / 3) / 2)
    assert [g["best_of_optimizer"] for g in body["groups"]] == [True, False, True]


def test_colours_are_shades_of_the_optimizer(client: TestClient, swept: dict) -> None:
    kfac, slow, fast = comparison(client, swept)["groups"]
    assert kfac["colour"] == "#0072B2"
    assert len({slow["colour"], fast["colour"], "#E69F00"}) == 3


def test_bad_queries_are_422(client: TestClient, swept: dict) -> None:
    url = f"/api/experiments/{swept['id']}/comparison"
    for params, field in [({"target": "nan"}, "target"), ({"criterion": "mean"}, "criterion")]:
        response = client.get(url, params=params, headers=ADMIN)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["query", field]


def test_several_experiments_side_by_side(
    client: TestClient, swept: dict, create: Callable[..., dict]
) -> None:
    other = create({**SWEEP_SPEC, "name": "again"})
    response = client.get(
        "/api/comparison", params={"ids": f"{swept['id']},{other['id']}"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    groups = response.json()["groups"]
    assert [g["label"] for g in groups] == [
        "sweep: kfac",
        "sweep: sgd_momentum lr=0.01",
        "sweep: sgd_momentum lr=0.05",
        "again: kfac",
        "again: sgd_momentum lr=0.01",
        "again: sgd_momentum lr=0.05",
    ]
    assert {g["experiment_id"] for g in groups[3:]} == {other["id"]}
    assert groups[3]["final"]["n"] == 0  # nothing recorded yet: no statistics


def test_a_share_link_cannot_compare_experiments(
    client: TestClient, swept: dict, create: Callable[..., dict]
) -> None:
    token = client.post(f"/api/experiments/{swept['id']}/share", headers=ADMIN).json()["token"]
    shared = {"Authorization": f"Bearer {token}"}
    assert (
        client.get(f"/api/experiments/{swept['id']}/comparison", headers=shared).status_code == 200
    )
    response = client.get("/api/comparison", params={"ids": swept["id"]}, headers=shared)
    assert response.status_code == 403
    other = create()
    response = client.get(f"/api/experiments/{other['id']}/comparison", headers=shared)
    assert response.status_code == 403


def test_unknown_experiment_is_404(client: TestClient, swept: dict) -> None:
    response = client.get("/api/comparison", params={"ids": f"{swept['id']},0"}, headers=ADMIN)
    assert response.status_code == 404


def test_a_bad_sweep_is_422_naming_the_value(client: TestClient) -> None:
    body = {
        **SWEEP_SPEC,
        "optimizers": [{"name": "kfac"}, {"name": "sgd_momentum", "sweep": {"lr": [0.1, 1, -1]}}],
    }
    response = client.post("/api/experiments", json=body, headers=ADMIN)
    assert response.status_code == 422
    locs = [e["loc"] for e in response.json()["detail"]]
    assert ["body", "optimizers", 1, "sweep", "lr", 2] in locs


def test_the_report_uses_the_comparison(client: TestClient, swept: dict) -> None:
    groups = comparison(client, swept)["groups"]
    page = client.get(f"/api/experiments/{swept['id']}/report", headers=ADMIN).text
    assert "sgd_momentum lr=0.05 ★" in page and "sgd_momentum lr=0.01 ★" not in page
    for group in groups:  # the curves and the table in the groups' colours
        assert page.count(group["colour"]) >= 2


def test_the_table_exports_as_csv(client: TestClient, swept: dict) -> None:
    response = client.get(
        f"/api/experiments/{swept['id']}/comparison",
        params={"format": "csv", "target": 5.0},
        headers=ADMIN,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    groups = comparison(client, swept, target=5.0)["groups"]
    assert [row["group"] for row in rows] == [g["label"] for g in groups]
    assert [row["colour"] for row in rows] == [g["colour"] for g in groups]
    assert rows[0]["final_mean"] == "3.5" and rows[0]["steps_to_target_mean"] == "20.0"
    assert rows[1]["final_sd"] == "" and rows[1]["never_reached"] == "2"
    assert [row["best_of_optimizer"] for row in rows] == ["True", "False", "True"]


def test_the_aggregate_takes_groups_from_the_comparison(client: TestClient, swept: dict) -> None:
    groups = comparison(client, swept)["groups"]
    body = client.get(
        f"/api/experiments/{swept['id']}/aggregate", params={"name": "train_loss"}, headers=ADMIN
    ).json()
    for summary, group in zip(body["groups"], groups, strict=True):
        assert (summary["key"], summary["label"], summary["colour"]) == (
            group["key"],
            group["label"],
            group["colour"],
        )
        assert summary["config"] == group["config"] and summary["seeds"] == 2
    # K-FAC's seed 0 stops at step 30, seed 1 at 40: the mean at step 40 is one seed's.
    kfac = body["groups"][0]
    assert kfac["step"][-1] == 40 and kfac["n"][-1] == 1 and kfac["n"][0] == 2


def test_a_comparison_of_no_experiments_is_empty(client: TestClient) -> None:
    """Without `ids` the admin gets a comparison of no groups (as a JSON answer and as a CSV
    of the header row); the share check comes before the query is read (scoping tests)."""
    answer = client.get("/api/comparison", headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["groups"] == [], answer.text
    table = client.get("/api/comparison", params={"format": "csv"}, headers=ADMIN)
    assert table.status_code == 200 and table.text.count("\n") == 1, table.text


def test_the_comparison_carries_the_experiment_s_event_cursor(
    client: TestClient, swept: dict
) -> None:
    """The experiment page streams live events from the earliest cursor of its answers: the
    comparison's is the experiment's newest event id when it was read (several experiments
    have no one stream, and no cursor)."""
    cursor = client.get(f"/api/experiments/{swept['id']}", headers=ADMIN).json()["last_event_id"]
    assert cursor > 0
    assert comparison(client, swept)["last_event_id"] == cursor
    several = client.get("/api/comparison", params={"ids": swept["id"]}, headers=ADMIN)
    assert several.json()["last_event_id"] is None
