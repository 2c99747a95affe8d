"""Experiments through the API: create (spec or preset), list, get, cancel, clone, delete; the
422s that name the field, the 404s, and a broker outage at launch."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from backend.store.db import session_scope
from backend.store.queries import get_experiment, get_run
from backend.store.writes import claim_run
from tests.api.conftest import ADMIN, SMALL_SPEC, FakeBroker, finish_run

UNKNOWN = "0" * 32


def test_create_from_a_spec_queues_one_task_per_run(
    client: TestClient, broker: FakeBroker, db_url: str
) -> None:
    response = client.post("/api/experiments", json=SMALL_SPEC, headers=ADMIN)
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "small comparison" and body["status"] == "queued"
    assert body["url"] == f"http://testserver/experiments/{body['id']}"
    runs = body["runs"]
    assert [(r["optimizer"]["name"], r["seed"]) for r in runs] == [
        ("kfac", 0),
        ("kfac", 1),
        ("sgd_momentum", 0),
        ("sgd_momentum", 1),
    ]
    assert all(r["status"] == "queued" and r["step"] == 0 and r["error"] is None for r in runs)
    assert runs[0]["total_steps"] == 20 and runs[0]["progress"] == 0.0
    assert broker.sent == [(r["id"], "cpu") for r in runs]
    with session_scope(db_url) as session:
        stored = get_run(session, runs[0]["id"])
        assert stored.celery_task_id == f"task-{runs[0]['id']}"
        assert stored.spec["steps"] == 20 and stored.spec["model"]["name"] == "mlp"


def test_create_from_a_preset_with_overrides(client: TestClient, broker: FakeBroker) -> None:
    body = {"preset": "smoke", "name": "quick smoke", "overrides": {"steps": 40}}
    response = client.post("/api/experiments", json=body, headers=ADMIN)
    assert response.status_code == 201
    created = response.json()
    assert created["name"] == "quick smoke" and created["preset"] == "smoke"
    assert {r["optimizer"]["name"] for r in created["runs"]} == {"kfac", "sgd_momentum"}
    assert all(r["total_steps"] == 40 for r in created["runs"])
    assert len(broker.sent) == len(created["runs"])


def test_a_whole_spec_edited_from_a_preset_keeps_the_preset_as_its_origin(
    client: TestClient, broker: FakeBroker
) -> None:
    post = lambda body: client.post("/api/experiments", json=body, headers=ADMIN)  # noqa: E731
    spec = {**SMALL_SPEC, "name": "edited smoke"}
    response = post({"preset": "smoke", "spec": spec})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["name"] == "edited smoke" and created["preset"] == "smoke"
    assert len(created["runs"]) == len(broker.sent) == 4
    # Its errors are at the spec's own fields, under `spec`; a model without its name says so.
    bad = {**SMALL_SPEC, "base": {**SMALL_SPEC["base"], "model": {"width_scale": 0.25}}}
    errors = field_errors(post({"preset": "smoke", "spec": bad}))
    assert errors.keys() == {"body.spec.base.model"}
    assert "a model needs its name: one of" in errors["body.spec.base.model"]
    both = {"preset": "smoke", "spec": spec, "overrides": {"steps": 3}}
    assert "body.spec" in field_errors(post(both))
    assert len(broker.sent) == 4


def field_errors(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {".".join(map(str, e["loc"])): e["msg"] for e in response.json()["detail"]}


def test_bad_specs_and_presets_get_422_naming_the_field(
    client: TestClient, broker: FakeBroker
) -> None:
    post = lambda body: client.post("/api/experiments", json=body, headers=ADMIN)  # noqa: E731
    bad_steps = {"runs": [{"steps": 0}]}
    assert "body.runs.0.steps" in field_errors(post(bad_steps))
    bad_lr = {**SMALL_SPEC, "optimizers": [{"name": "kfac", "damping": -1}]}
    assert "body.optimizers.0.kfac.damping" in field_errors(post(bad_lr))
    assert "body.preset" in field_errors(post({"preset": "no-such-preset"}))
    errors = field_errors(post({"preset": "smoke", "overrides": {"steps": -3}}))
    assert "body.overrides.steps" in errors
    errors = field_errors(post({"preset": "smoke", "overrides": {"model": {"width_scale": 99}}}))
    assert "body.overrides.model.autoencoder.width_scale" in errors
    assert "body.preset" in field_errors(post({"preset": 3}))
    assert "body.runs.0.label" in field_errors(post({"runs": [{"label": "a\x00b"}]}))
    assert client.post("/api/experiments", content=b"{not json", headers=ADMIN).status_code == 422
    assert broker.sent == []


def test_list_pages_and_filters(client: TestClient, create: Callable[..., dict]) -> None:
    tag = create()["id"][:8]  # a name no other test uses
    ids = [create({**SMALL_SPEC, "name": f"list {tag} {i}"})["id"] for i in range(3)]
    page = client.get("/api/experiments", params={"name": f"LIST {tag}", "limit": 2}, headers=ADMIN)
    assert page.status_code == 200
    body = page.json()
    assert body["total"] == 3 and body["limit"] == 2 and body["offset"] == 0
    assert [e["id"] for e in body["items"]] == ids[::-1][:2]  # newest first
    rest = client.get(
        "/api/experiments", params={"name": f"list {tag}", "offset": 2}, headers=ADMIN
    ).json()
    assert [e["id"] for e in rest["items"]] == ids[:1]
    queued = client.get(
        "/api/experiments",
        params={"name": f"list {tag}", "status": ["queued", "failed"]},
        headers=ADMIN,
    ).json()
    assert queued["total"] == 3
    none = client.get(
        "/api/experiments", params={"name": f"list {tag}", "status": "succeeded"}, headers=ADMIN
    ).json()
    assert none["total"] == 0
    assert client.get("/api/experiments?limit=100000", headers=ADMIN).status_code == 422
    assert client.get("/api/experiments?status=bogus", headers=ADMIN).status_code == 422


def test_get_shows_progress_device_and_outcome(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    created = create()
    first, second = created["runs"][0]["id"], created["runs"][1]["id"]
    finish_run(db_url, first, "succeeded", step=20, final_metrics={"train_loss": 0.25})
    finish_run(db_url, second, "diverged", step=7, error="loss is NaN at step 7")
    body = client.get(f"/api/experiments/{created['id']}", headers=ADMIN).json()
    runs = {r["id"]: r for r in body["runs"]}
    assert body["status"] == "running" and body["last_event_id"] > 0
    assert runs[first]["status"] == "succeeded" and runs[first]["progress"] == 1.0
    assert runs[first]["final_metrics"] == {"train_loss": 0.25}
    assert runs[second]["status"] == "diverged" and runs[second]["error"].startswith("loss is NaN")
    run = client.get(f"/api/runs/{first}", headers=ADMIN).json()
    assert run["spec"]["steps"] == 20 and run["metrics"] == []


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in (
        f"/api/experiments/{UNKNOWN}",
        "/api/experiments/not-an-id",
        f"/api/experiments/{UNKNOWN}/metrics",
        f"/api/experiments/{UNKNOWN}/aggregate",
        f"/api/runs/{UNKNOWN}",
        f"/api/runs/{UNKNOWN}/metrics",
        f"/api/runs/{UNKNOWN}/snapshots",
        f"/api/runs/{UNKNOWN}/export",
        "/api/snapshots/123456789",
    ):
        response = client.get(path, headers=ADMIN)
        assert response.status_code == 404, path
        assert response.json()["detail"].startswith("No such")
    for path in (f"/api/experiments/{UNKNOWN}/cancel", f"/api/runs/{UNKNOWN}/cancel"):
        assert client.post(path, headers=ADMIN).status_code == 404
    assert client.delete(f"/api/experiments/{UNKNOWN}", headers=ADMIN).status_code == 404


def test_cancel_a_run_and_an_experiment(
    client: TestClient, create: Callable[..., dict], broker: FakeBroker, db_url: str
) -> None:
    created = create()
    run_ids = [r["id"] for r in created["runs"]]
    with session_scope(db_url) as session:
        claim_run(session, run_ids[1], "worker")
    cancelled = client.post(f"/api/runs/{run_ids[0]}/cancel", headers=ADMIN).json()
    assert cancelled["status"] == "cancelled"
    assert broker.revoked == [f"task-{run_ids[0]}"]

    body = client.post(f"/api/experiments/{created['id']}/cancel", headers=ADMIN).json()
    statuses = [r["status"] for r in body["runs"]]
    assert statuses == ["cancelled", "running", "cancelled", "cancelled"]
    assert body["runs"][1]["cancel_requested"]  # its worker stops it within a few steps
    assert sorted(broker.revoked[1:]) == sorted(f"task-{i}" for i in run_ids[1:])
    again = client.post(f"/api/runs/{run_ids[0]}/cancel", headers=ADMIN).json()
    assert again["status"] == "cancelled" and len(broker.revoked) == 4  # nothing left to revoke


def test_clone_keeps_the_spec_and_pairs_new_seeds(
    client: TestClient, create: Callable[..., dict], broker: FakeBroker
) -> None:
    original = create()
    response = client.post(
        f"/api/experiments/{original['id']}/clone", json={"name": "again"}, headers=ADMIN
    )
    assert response.status_code == 201
    clone = response.json()
    assert clone["id"] != original["id"] and clone["name"] == "again"
    old_seeds = [r["seed"] for r in original["runs"]]
    new_seeds = [r["seed"] for r in clone["runs"]]
    assert not set(old_seeds) & set(new_seeds)
    # Runs that shared a seed (K-FAC and SGD on seed 0) share the new one.
    assert [old_seeds.index(s) for s in old_seeds] == [new_seeds.index(s) for s in new_seeds]
    strip = lambda runs: [  # noqa: E731
        {k: v for k, v in r.items() if k not in ("seed", "label")} for r in runs
    ]
    assert strip(clone["spec"]["runs"]) == strip(original["spec"]["runs"])
    no_body = client.post(f"/api/experiments/{original['id']}/clone", headers=ADMIN)
    assert no_body.status_code == 201 and no_body.json()["name"] == original["name"]
    assert len(broker.sent) == 12


def test_delete_stops_the_runs_then_removes_everything(
    client: TestClient, create: Callable[..., dict], broker: FakeBroker, db_url: str
) -> None:
    created = create()
    run_ids = [r["id"] for r in created["runs"]]
    finish_run(db_url, run_ids[0])
    assert client.delete(f"/api/experiments/{created['id']}", headers=ADMIN).status_code == 204
    assert sorted(broker.revoked) == sorted(f"task-{i}" for i in run_ids[1:])
    assert client.get(f"/api/experiments/{created['id']}", headers=ADMIN).status_code == 404
    assert client.get(f"/api/runs/{run_ids[0]}", headers=ADMIN).status_code == 404
    with session_scope(db_url) as session:
        assert get_experiment(session, created["id"]) is None


def test_a_broker_outage_at_launch_is_503_and_leaves_nothing(
    client: TestClient, broker: FakeBroker
) -> None:
    broker.down = True
    name = "launched while the broker is down"
    response = client.post("/api/experiments", json={**SMALL_SPEC, "name": name}, headers=ADMIN)
    assert response.status_code == 503
    assert response.headers["retry-after"] and "broker" in response.json()["detail"]
    listed = client.get("/api/experiments", params={"name": name}, headers=ADMIN).json()
    assert listed["total"] == 0


def test_validate_previews_the_networks_and_estimates_without_launching(
    client: TestClient, broker: FakeBroker
) -> None:
    post = lambda body: client.post("/api/experiments/validate", json=body, headers=ADMIN)  # noqa: E731
    response = post(SMALL_SPEC)
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert len(runs) == 4 and broker.sent == []
    first = runs[0]
    layers = [(layer["inputs"], layer["outputs"]) for layer in first["layers"]]
    assert layers[0][1] == 8 and layers[1][0] == 8  # the hidden width of SMALL_SPEC's mlp
    assert first["parameters"] == sum((i + 1) * o for i, o in layers)
    assert first["total_steps"] == 20 and first["estimate"]["memory_bytes"] > 0
    assert first["estimate"]["step_seconds"] > 0
    # Widths after the width scale: the autoencoder of the issue, 250-125-62-8.
    scaled = {"base": {"model": {"name": "autoencoder", "width_scale": 0.25}, "steps": 5}}
    encoder = [layer["outputs"] for layer in post(scaled).json()["runs"][0]["layers"]][:4]
    assert encoder == [250, 125, 62, 8]
    # The same 422s as a launch, the whole-spec-from-a-preset form included.
    assert "body.base.steps" in field_errors(post({"base": {"steps": 0}}))
    bad = {"preset": "smoke", "spec": {"base": {"model": {"width_scale": 0.25}}}}
    assert "body.spec.base.model" in field_errors(post(bad))
    assert client.post("/api/experiments/validate", json=SMALL_SPEC).status_code == 401
    assert broker.sent == []


def test_queued_runs_know_their_place_in_the_queue(
    client: TestClient, broker: FakeBroker, db_url: str
) -> None:
    def positions(experiment: dict) -> list[int | None]:
        detail = client.get(f"/api/experiments/{experiment['id']}", headers=ADMIN).json()
        return [run["queue_position"] for run in detail["runs"]]

    first = client.post("/api/experiments", json=SMALL_SPEC, headers=ADMIN).json()
    second = client.post("/api/experiments", json=SMALL_SPEC, headers=ADMIN).json()
    ahead = positions(first)[0] - 1  # runs queued by earlier tests on the same queue
    assert positions(first) == [ahead + 1, ahead + 2, ahead + 3, ahead + 4]
    assert positions(second) == [ahead + 5, ahead + 6, ahead + 7, ahead + 8]
    with session_scope(db_url) as session:  # the first experiment's runs start
        for run in first["runs"]:
            claim_run(session, run["id"], "worker-1")
    assert positions(second) == [ahead + 1, ahead + 2, ahead + 3, ahead + 4]
    started = client.get(f"/api/experiments/{first['id']}", headers=ADMIN).json()
    assert all(run["queue_position"] is None for run in started["runs"])


def test_rename_changes_the_name_and_the_spec_s(
    client: TestClient, create: Callable[..., dict]
) -> None:
    experiment = create()
    path = f"/api/experiments/{experiment['id']}"
    renamed = client.patch(path, json={"name": "lr study, take 2"}, headers=ADMIN)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == renamed.json()["spec"]["name"] == "lr study, take 2"
    assert client.get(path, headers=ADMIN).json()["name"] == "lr study, take 2"
    assert "body.name" in field_errors(client.patch(path, json={"name": ""}, headers=ADMIN))
    assert (
        client.patch(f"/api/experiments/{UNKNOWN}", json={"name": "x"}, headers=ADMIN).status_code
        == 404
    )
    assert client.patch(path, json={"name": "x"}).status_code == 401
