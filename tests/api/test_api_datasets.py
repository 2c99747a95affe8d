"""`GET /api/datasets`: every installed dataset with whether a run can use it now — built in,
files present or missing in the API's data directory (with the message a create would give),
or unchecked where KFAC_CHECK_DATA is off — the same rules as the check at create."""

from __future__ import annotations

from fastapi.testclient import TestClient

from backend import registry
from backend.api.main import create_app
from backend.datasets import SVHN
from tests.api.conftest import ADMIN


def by_name(client: TestClient) -> dict[str, dict]:
    response = client.get("/api/datasets", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {dataset["name"]: dataset for dataset in response.json()}


def test_every_dataset_says_whether_the_lab_has_it(client: TestClient, settings):
    datasets = by_name(client)
    assert list(datasets) == list(registry.entries("dataset"))
    synthetic = datasets["synthetic"]
    assert (synthetic["availability"], synthetic["files"], synthetic["missing"]) == (
        "built_in",
        [],
        [],
    )
    assert synthetic["message"] is None and synthetic["package"] == "kfac-lab"
    mnist = datasets["mnist"]
    assert mnist["availability"] == "missing"
    assert mnist["missing"] == mnist["files"] and "t10k-labels-idx1-ubyte.gz" in mnist["files"]
    assert "kfac-lab data fetch mnist" in mnist["message"]
    assert str(settings.data_dir) in mnist["message"]


def test_files_in_the_data_directory_make_a_dataset_present(client: TestClient, settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / SVHN.files[0].name).write_bytes(b"x")
    svhn = by_name(client)["svhn"]
    assert svhn["availability"] == "missing"
    assert svhn["missing"] == [SVHN.files[1].name]  # the other one
    (settings.data_dir / SVHN.files[1].name).write_bytes(b"x")
    svhn = by_name(client)["svhn"]
    assert (svhn["availability"], svhn["missing"], svhn["message"]) == ("present", [], None)


def test_without_the_data_check_files_are_unchecked(settings, broker, tmp_path):
    unchecked = settings.model_copy(update={"check_data": False})
    with TestClient(create_app(unchecked, frontend_dir=tmp_path / "frontend")) as client:
        datasets = by_name(client)
    assert datasets["mnist"]["availability"] == "unchecked"
    assert datasets["mnist"]["message"] is None
    assert datasets["synthetic"]["availability"] == "built_in"


def test_the_datasets_are_the_admin_s(client: TestClient):
    assert client.get("/api/datasets").status_code == 401
