"""docker-compose.yml validated by a real compose implementation (no engine needed).

Debian's `docker-compose` (installed by `make test` when missing) parses, interpolates and
validates the file against the Compose schema with `docker-compose config`.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import missing_service

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")


@pytest.fixture(scope="module", autouse=True)
def _compose_installed() -> None:
    if COMPOSE is None:
        missing_service("docker-compose", "not on PATH (apt-get install docker-compose)")


def compose_config(**env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KFAC_")}
    environment.update(env)
    return subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose_config(KFAC_ADMIN_TOKEN="test-token")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_all_services_are_declared(config):
    assert set(config["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker-gpu",
        "worker-cpu",
        "worker-cpu-b",
        "flower",
    }


def test_redis_persists_queued_runs(config):
    assert "--appendonly" in config["services"]["redis"]["command"]
    assert any("/data" in str(v) for v in config["services"]["redis"]["volumes"])


def test_gpu_worker_reserves_an_nvidia_device_and_listens_on_the_gpu_queue(config):
    worker = config["services"]["worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["command"][worker["command"].index("--queues") + 1] == "gpu"


def test_services_wait_for_health_and_migrations(config):
    services = config["services"]
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    for name in ("api", "worker-gpu", "worker-cpu", "postgres", "redis"):
        assert services[name]["restart"] == "unless-stopped"


def test_processes_share_one_database_and_one_broker(config):
    urls = {
        (s["environment"]["KFAC_DATABASE_URL"], s["environment"]["KFAC_BROKER_URL"])
        for name, s in config["services"].items()
        if name.startswith(("api", "worker"))
    }
    assert len(urls) == 1


def test_admin_token_is_required():
    result = compose_config()
    assert result.returncode != 0
    assert "KFAC_ADMIN_TOKEN" in result.stderr


def test_the_two_nodes_profile_adds_a_second_cpu_worker_the_first_can_reach(config):
    """A run with "nodes": 2 across worker-cpu and worker-cpu-b: each publishes, as rank 0, an
    address the other resolves on the compose network (its own host name), and both take
    the cpu queue."""
    services = config["services"]
    second = services["worker-cpu-b"]
    assert second["profiles"] == ["two-nodes"]
    assert "profiles" not in services["worker-cpu"]  # a plain `up` starts one CPU worker
    names = set()
    for name in ("worker-cpu", "worker-cpu-b"):
        worker = services[name]
        assert worker["command"][worker["command"].index("--queues") + 1] == "cpu"
        assert worker["environment"]["KFAC_NODE_ADDRESS"] == worker["hostname"]
        names.add(worker["hostname"])
    assert len(names) == 2
    assert second["volumes"] == services["worker-cpu"]["volumes"]  # rank 0's checkpoints
