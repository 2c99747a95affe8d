"""A run whose dataset's files are missing in the API's KFAC_DATA_DIR is refused at create
(422 naming where the request chose the dataset), unless it asks for a download or the check
is turned off (KFAC_CHECK_DATA=false, for an API that does not share the workers' disk)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.datasets import MNIST
from tests.api.conftest import ADMIN, SMALL_SPEC

MNIST_RUN = {"dataset": "mnist", "model": {"name": "mlp", "hidden": [8]}, "steps": 5}


def errors(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {".".join(map(str, e["loc"][1:])): e["msg"] for e in response.json()["detail"]}


def test_missing_files_are_refused_where_the_dataset_was_chosen(client, broker, settings):
    response = client.post(
        "/api/experiments",
        json={"name": "m", "runs": [{**MNIST_RUN, "optimizer": {"name": "sgd"}}]},
        headers=ADMIN,
    )
    message = errors(response)["runs.0.dataset"]
    assert message.startswith("mnist: files missing in DATA_DIR")
    assert str(settings.data_dir) in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "kfac-lab data fetch mnist" in message and "download=true" in message
    comparison = {**SMALL_SPEC, "base": {**SMALL_SPEC["base"], "dataset": "mnist"}}
    assert list(errors(client.post("/api/experiments", json=comparison, headers=ADMIN))) == [
        "base.dataset"
    ]
    assert broker.sent == []


def test_the_paper_preset_is_refused_instead_of_failing_on_the_workers(broker, settings, tmp_path):
    gpu = settings.model_copy(update={"worker_flops": 1e14})  # its runs fit a GPU worker's time
    with TestClient(create_app(gpu, frontend_dir=tmp_path / "frontend")) as client:
        response = client.post(
            "/api/experiments", json={"preset": "mnist_autoencoder"}, headers=ADMIN
        )
        assert list(errors(response)) == ["overrides.dataset"]
        assert "mnist: files missing" in errors(response)["overrides.dataset"]
        assert broker.sent == []
        download = {"dataset": {"name": "mnist", "download": True}}  # as its description says
        response = client.post(
            "/api/experiments",
            json={"preset": "mnist_autoencoder", "overrides": download},
            headers=ADMIN,
        )
        assert response.status_code == 201, response.text
        assert len(broker.sent) == 3


def test_present_files_a_download_or_no_check_launch(client, broker, settings, tmp_path):
    download = {**MNIST_RUN, "dataset": {"name": "mnist", "download": True}}
    body = {"name": "d", "runs": [{**download, "optimizer": {"name": "sgd"}}]}
    assert client.post("/api/experiments", json=body, headers=ADMIN).status_code == 201
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for file in MNIST.files:  # uncompressed copies count as present, as the loader reads them
        (settings.data_dir / file.in_place[0]).write_bytes(b"idx")
    body = {"name": "p", "runs": [{**MNIST_RUN, "optimizer": {"name": "sgd"}}]}
    assert client.post("/api/experiments", json=body, headers=ADMIN).status_code == 201
    assert len(broker.sent) == 2

    unchecked = settings.model_copy(update={"check_data": False, "data_dir": tmp_path / "none"})
    app = create_app(unchecked, frontend_dir=tmp_path / "frontend")
    with TestClient(app) as other:
        assert other.post("/api/experiments", json=body, headers=ADMIN).status_code == 201
