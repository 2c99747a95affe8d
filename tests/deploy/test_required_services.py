"""A missing service skips a developer's test run but fails CI's (tests/conftest.py).

The suite is run in a subprocess on one PostgreSQL test with the database pointed at a closed
port, once as CI runs it and once as a developer would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, services_required

ROOT = Path(__file__).resolve().parents[2]
SELECTION = ["tests/store/test_store_schema.py::test_upgrade_is_idempotent", "-k", "postgresql"]
CLOSED_PORT_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"


def run_selection(**variables: str) -> subprocess.CompletedProcess:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CI", REQUIRE_SERVICES, "PYTEST_ADDOPTS")
    }
    environment.update(KFAC_TEST_POSTGRES_URL=CLOSED_PORT_URL, **variables)
    return subprocess.run(
        [sys.executable, "-m", "pytest", *SELECTION, "-p", "no:cacheprovider", "-rs"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=600,
    )


def test_ci_fails_naming_the_missing_service():
    result = run_selection(**{REQUIRE_SERVICES: "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 error" in output, output
    assert "PostgreSQL is missing: not reachable at " + CLOSED_PORT_URL in output, output


def test_a_developer_run_skips_naming_the_missing_service():
    result = run_selection()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 skipped" in output, output
    assert "PostgreSQL is missing" in output, output


@pytest.mark.parametrize(
    "variables, required",
    [
        ({}, False),
        ({REQUIRE_SERVICES: "0"}, False),
        ({REQUIRE_SERVICES: ""}, False),
        ({REQUIRE_SERVICES: "1"}, True),
        ({"CI": "true"}, True),
        ({"CI": "true", REQUIRE_SERVICES: "0"}, False),
    ],
)
def test_services_are_required_under_the_flag_or_ci(monkeypatch, variables, required):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(REQUIRE_SERVICES, raising=False)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    assert services_required() is required
