"""Reading results through the API: downsampled metrics of one run and of all runs, zooms,
wall-time axes, aggregates over seeds, raw exports, curvature snapshots."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from backend.store.db import session_scope
from backend.store.results import write_metrics, write_snapshot
from tests.api.conftest import ADMIN


def record(db_url: str, run_id: str, n: int, offset: float = 0.0, every: int = 1) -> None:
    """`n` steps of train_loss (and test_loss every 10 steps), 0.5 s per step."""
    points = [("train_loss", s, 0.5 * s, 1.0 / (1 + s) + offset) for s in range(0, n, every)]
    points += [("test_loss", s, 0.5 * s, 2.0 / (1 + s)) for s in range(0, n, 10)]
    with session_scope(db_url) as session:
        write_metrics(session, run_id, points)


def test_run_metrics_are_downsampled_and_zoomable(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    run_id = create()["runs"][0]["id"]
    record(db_url, run_id, 5000)
    full = client.get(f"/api/runs/{run_id}/metrics", headers=ADMIN).json()
    assert full["run_id"] == run_id and set(full["series"]) == {"train_loss", "test_loss"}
    assert len(full["series"]["test_loss"]["x"]) == 500  # under max_points: every point

    small = client.get(
        f"/api/runs/{run_id}/metrics",
        params={"names": "train_loss", "max_points": 200},
        headers=ADMIN,
    ).json()
    train = small["series"]["train_loss"]
    assert list(small["series"]) == ["train_loss"]
    assert 50 <= len(train["x"]) <= 200 and len(train["x"]) == len(train["y"])
    assert train["x"] == sorted(train["x"]) and train["x"][0] == 0 and train["x"][-1] == 4999
    assert max(train["y"]) == 1.0  # the peak survives downsampling

    zoom = client.get(
        f"/api/runs/{run_id}/metrics",
        params={"names": ["train_loss", "test_loss"], "x_min": 100, "x_max": 199},
        headers=ADMIN,
    ).json()
    assert zoom["series"]["train_loss"]["x"] == list(range(100, 200))
    assert zoom["series"]["test_loss"]["x"] == list(range(100, 200, 10))

    by_time = client.get(
        f"/api/runs/{run_id}/metrics",
        params={"names": "test_loss", "x": "time", "x_max": 100},
        headers=ADMIN,
    ).json()
    assert by_time["series"]["test_loss"]["x"] == [0.5 * s for s in range(0, 201, 10)]

    for bad in ({"max_points": 1}, {"max_points": 10**6}, {"x": "epoch"}, {"x_min": "inf"}):
        response = client.get(f"/api/runs/{run_id}/metrics", params=bad, headers=ADMIN)
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"][0] == "query"


def test_experiment_metrics_bring_every_run_in_one_request(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    experiment = create()
    run_ids = [r["id"] for r in experiment["runs"]]
    for run_id in run_ids[:3]:
        record(db_url, run_id, 300)
    body = client.get(
        f"/api/experiments/{experiment['id']}/metrics",
        params={"names": "train_loss,test_loss", "max_points": 100},
        headers=ADMIN,
    ).json()
    assert body["experiment_id"] == experiment["id"] and body["last_event_id"] > 0
    assert [r["run_id"] for r in body["runs"]] == run_ids  # in the experiment's order
    assert body["runs"][3]["series"] == {}  # no points yet
    for run in body["runs"][:3]:
        assert set(run["series"]) == {"train_loss", "test_loss"}
        assert len(run["series"]["train_loss"]["x"]) <= 100
    some = client.get(
        f"/api/experiments/{experiment['id']}/metrics",
        params={"run_ids": run_ids[1]},
        headers=ADMIN,
    ).json()
    assert [r["run_id"] for r in some["runs"]] == [run_ids[1]]
    assert len(some["runs"][0]["series"]["train_loss"]["x"]) == 300


def test_aggregates_over_seeds_align_on_step(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    experiment = create()  # kfac seeds 0, 1; sgd_momentum seeds 0, 1
    kfac_0, kfac_1, sgd_0, sgd_1 = (r["id"] for r in experiment["runs"])
    record(db_url, kfac_0, 100, offset=0.0)
    record(db_url, kfac_1, 100, offset=1.0, every=2)  # other steps: interpolated
    record(db_url, sgd_0, 50, offset=3.0)  # sgd seed 1 has no points yet
    body = client.get(
        f"/api/experiments/{experiment['id']}/aggregate",
        params={"name": "train_loss"},
        headers=ADMIN,
    ).json()
    kfac, sgd = body["groups"]
    assert kfac["label"] == "kfac" and kfac["optimizer"]["name"] == "kfac"
    assert kfac["run_ids"] == [kfac_0, kfac_1] and sgd["run_ids"] == [sgd_0]
    assert kfac["step"] == list(range(100))
    # Step 1 of the second seed lies between its steps 0 and 2.
    second = (1.0 + 1.0) + (1.0 / 3 + 1.0)
    expected = np.array([1.0 / 2, second / 2])
    assert np.allclose([kfac["mean"][1], kfac["max"][1]], [expected.mean(), expected.max()])
    assert kfac["n"][:99] == [2] * 99 and kfac["n"][99] == 1  # seed 1 stops at step 98
    assert np.allclose(kfac["std"][0], 0.5)  # values 1 and 2 at step 0
    assert sgd["n"] == [1] * 50 and sgd["std"] == [0.0] * 50
    empty = client.get(
        f"/api/experiments/{experiment['id']}/aggregate",
        params={"name": "no_such_metric"},
        headers=ADMIN,
    ).json()
    assert [g["run_ids"] for g in empty["groups"]] == [[], []]


def test_export_streams_every_point(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    run_id = create()["runs"][0]["id"]
    record(db_url, run_id, 12_000)
    response = client.get(f"/api/runs/{run_id}/export", headers=ADMIN)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert f'filename="run-{run_id}.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["name", "step", "wall_time", "value"] and len(rows) == 1 + 12_000 + 1200
    assert rows[1] == ["test_loss", "0", "0.0", "2.0"]
    assert rows[-1][:2] == ["train_loss", "11999"]

    as_json = client.get(
        f"/api/runs/{run_id}/export",
        params={"format": "json", "names": "test_loss"},
        headers=ADMIN,
    ).json()
    assert as_json["run_id"] == run_id and as_json["columns"][0] == "name"
    assert len(as_json["points"]) == 1200 and as_json["points"][1] == ["test_loss", 10, 5.0, 2 / 11]


def test_snapshots_list_and_read(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    run_id = create()["runs"][0]["id"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 12))
    exact = a @ a.T
    matrices = {
        "exact": exact,
        "kronecker": exact * 0.9,
        "kronecker_inverse": np.linalg.inv(exact + np.eye(12)),
        "block_diagonal_inverse": np.eye(12),
        "block_tridiagonal_inverse": np.eye(12) * 2,
    }
    with session_scope(db_url) as session:
        snapshot_id = write_snapshot(
            session,
            run_id,
            100,
            matrices,
            [[0, 5], [5, 12]],
            spectra={"A0": [3.0, 1.0]},
            relative_errors={"block_diagonal_inverse": 0.25},
            block_averages={"exact": [[1.0, 0.1], [0.1, 2.0]]},
        )
    listed = client.get(f"/api/runs/{run_id}/snapshots", headers=ADMIN).json()
    assert [(s["id"], s["run_id"], s["step"]) for s in listed] == [(snapshot_id, run_id, 100)]
    assert set(listed[0]["kinds"]) == set(matrices) and listed[0]["shapes"]["exact"] == [12, 12]

    body = client.get(f"/api/snapshots/{snapshot_id}", headers=ADMIN).json()
    assert body["id"] == snapshot_id and body["step"] == 100 and body["blocks"] == [[0, 5], [5, 12]]
    assert set(body["matrices"]) == set(matrices)
    assert np.allclose(body["matrices"]["exact"], exact, rtol=1e-6)
    assert body["spectra"] == {"A0": [3.0, 1.0]}
    assert body["relative_errors"] == {"block_diagonal_inverse": 0.25}
    assert body["block_averages"]["exact"][1][1] == 2.0
    one = client.get(
        f"/api/snapshots/{snapshot_id}", params={"names": "exact"}, headers=ADMIN
    ).json()
    assert list(one["matrices"]) == ["exact"]
    packed = client.get(
        f"/api/snapshots/{snapshot_id}", params={"encoding": "base64"}, headers=ADMIN
    ).json()
    encoded = packed["matrices"]["exact"]
    assert encoded["dtype"] == "float32" and encoded["shape"] == [12, 12]
    decoded = np.frombuffer(base64.b64decode(encoded["data"]), "<f4").reshape(12, 12)
    assert np.array_equal(decoded, exact.astype(np.float32))
    assert packed["block_averages"] == body["block_averages"]
    assert client.get("/api/snapshots/0", headers=ADMIN).status_code == 422


def test_answers_are_revalidated_until_the_next_event(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    experiment = create()
    run_id = experiment["runs"][0]["id"]
    record(db_url, run_id, 50)
    path = f"/api/experiments/{experiment['id']}/metrics"
    first = client.get(path, headers=ADMIN)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    same = client.get(path, headers={**ADMIN, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    assert client.get(path, headers=ADMIN).json() == first.json()  # from the cache

    with session_scope(db_url) as session:  # a new batch: a new version
        write_metrics(session, run_id, [("train_loss", 50, 25.0, 0.5)])
    fresh = client.get(path, headers={**ADMIN, "If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    assert fresh.json()["runs"][0]["series"]["train_loss"]["x"][-1] == 50
    assert fresh.json()["last_event_id"] > first.json()["last_event_id"]
    other = client.get(path, params={"max_points": 100}, headers={**ADMIN, "If-None-Match": etag})
    assert other.status_code == 200  # another request, another tag


def test_answers_are_kept_compressed_and_sent_as_the_client_accepts(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    run_id = create()["runs"][0]["id"]
    record(db_url, run_id, 3000)
    path = f"/api/runs/{run_id}/metrics"
    packed = client.get(path, headers={**ADMIN, "Accept-Encoding": "gzip, deflate"})
    assert packed.headers["content-encoding"] == "gzip"
    assert int(packed.headers["content-length"]) < len(packed.content) / 2  # JSON shrinks
    plain = client.get(path, headers={**ADMIN, "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert int(plain.headers["content-length"]) == len(plain.content)
    assert plain.json() == packed.json() and plain.headers["etag"] == packed.headers["etag"]
    assert "Accept-Encoding" in plain.headers["vary"]
