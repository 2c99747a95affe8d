"""Property-based tests of the whole API from its own OpenAPI document (schemathesis) with
every check it has (the CLI's `--checks all`, less response times): for generated requests,
valid and invalid (examples, coverage and fuzzing phases, derandomized), no answer is a 5xx;
every answer's status, content type, headers and body match what `/openapi.json` documents;
schema-valid requests are accepted and invalid ones refused (`positive_data_acceptance`,
`negative_data_rejection`; the one allowance is in `positive_data_acceptance` below); 405
lists the allowed methods; a missing or wrong token is refused (`ignored_auth`). A stateful
run (`Workflow`) follows the links schemathesis infers between operations, for
`use_after_free` and `ensure_resource_availability`.

Generated ids would almost never exist, so valid path ids are swapped for those of a seeded
experiment (with runs, metrics and a snapshot) and the generated query strings and bodies
are tried against real data; ids generated invalid on purpose are sent as they are. Deleting
is left with its generated ids (it would remove the seed). The event stream never ends by
design and is tested on its own (test_api_events).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.checks import load_all_checks
from schemathesis.core.parameters import ParameterLocation

from backend import queue
from backend.api.main import create_app
from backend.settings import Settings
from backend.store.db import dispose_engines, session_scope
from backend.store.migrate import upgrade
from backend.store.results import write_metrics, write_snapshot
from tests.api.conftest import ADMIN, ADMIN_TOKEN, SMALL_SPEC, FakeBroker

MAX_EXAMPLES = 30
STATEFUL_EXAMPLES = 20


def positive_data_acceptance(ctx, response, case):
    """schemathesis' check of the same name, except for a 422 whose every error is a rule
    the JSON schema cannot state: a `value_error` between fields (a model's parameter count
    from its layer widths, optimizers × seeds ≤ 48 runs, snapshots ≤ 200 over the steps), or
    a value under `overrides`, which is deep-merged into a preset and only then validated as
    a spec (its keys are published; a merged value's rules are those of the spec). Any other
    refusal of a schema-valid request, e.g. a value of the published type, still fails."""
    if response.status_code == 422:
        errors = response.json()["detail"]
        if errors and all(_beyond_the_schema(error) for error in errors):
            return None
    return _positive_data_acceptance(ctx, response, case)


def _beyond_the_schema(error: dict) -> bool:
    return error["type"] == "value_error" or error["loc"][:2] == ["body", "overrides"]


load_all_checks()
_positive_data_acceptance = REGISTERED_CHECKS.get_one("positive_data_acceptance")
# Every check schemathesis has (`--checks all`) but the one that asserts response times.
CHECKS = [
    positive_data_acceptance if check is _positive_data_acceptance else check
    for check in REGISTERED_CHECKS.get_all()
    if check.__name__ != "max_response_time"
]

# The schema is loaded when the module is imported (schemathesis' fixture-based loader does
# not work with this pytest), so the app is built here, on a database of its own that the
# `seeded` fixture migrates and fills; building the app does not touch the database.
HOME = Path(tempfile.mkdtemp(prefix="kfac-schemathesis-"))
DB_URL = f"sqlite:///{HOME / 'kfac.db'}"
APP = create_app(
    Settings(home=HOME, database_url=DB_URL, admin_token=ADMIN_TOKEN), frontend_dir=HOME
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path_regex=r"/events$")
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True
)


@pytest.fixture(scope="module")
def seeded() -> Iterator[dict]:
    """The ids of an experiment with runs, metrics and a snapshot; the broker is faked."""
    upgrade(DB_URL)
    fake = FakeBroker()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("send_run", "revoke", "broker_reachable"):
            patch.setattr(queue, name, getattr(fake, name))
        with TestClient(APP) as client:
            experiment = client.post("/api/experiments", json=SMALL_SPEC, headers=ADMIN).json()
        run_id = experiment["runs"][0]["id"]
        with session_scope(DB_URL) as session:
            points = [("train_loss", s, s * 0.1, 1 / (1 + s)) for s in range(300)]
            write_metrics(session, run_id, points)
            blocks = [[0, 3], [3, 6]]
            snapshot_id = write_snapshot(session, run_id, 10, {"exact": np.eye(6)}, blocks)
        yield {"experiment_id": experiment["id"], "run_id": run_id, "snapshot_id": snapshot_id}
    dispose_engines()
    shutil.rmtree(HOME, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_answers_as_documented(case, seeded: dict) -> None:
    # Known slow path outside the API: validating `epochs` costs up to ~1 s per run in
    # backend.spec.steps_for_epochs (a step-by-step loop up to MAX_STEPS), reported.
    assume(not _mentions(case.body, "epochs"))
    # A query parameter whose value is None or [] is not sent at all, so a negative case whose
    # invalid part is such a parameter (say an undeclared one) reaches the API as a valid
    # request, which is then rightly accepted; schemathesis would call that a failure.
    negative_query = case.meta is not None and case.meta.is_negative_at(ParameterLocation.QUERY)
    assume(not negative_query or all(v not in (None, []) for v in (case.query or {}).values()))
    negative_path = case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH)
    if case.path_parameters and case.method != "DELETE" and not negative_path:
        for name in ("experiment_id", "run_id", "snapshot_id"):
            if name in case.path_parameters:
                case.path_parameters[name] = seeded[name]
    case.call_and_validate(headers=ADMIN, checks=CHECKS)


def _mentions(value: object, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_mentions(item, key) for item in value.values())
    if isinstance(value, list):
        return any(_mentions(item, key) for item in value)
    return False


class Workflow(schema.as_state_machine()):
    """Sequences of calls along the links schemathesis infers from the responses (create an
    experiment, read it, its runs and metrics, clone, share, cancel, delete it, read it again),
    for the checks that need a history: `use_after_free` (a deleted experiment reads as 404)
    and `ensure_resource_availability` (a created one can be read at once)."""

    def get_call_kwargs(self, case) -> dict:
        return {"headers": ADMIN}

    def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
        case.validate_response(
            response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
        )


@pytest.mark.usefixtures("seeded")
class TestWorkflow(Workflow.TestCase):
    settings = settings(
        max_examples=STATEFUL_EXAMPLES,
        stateful_step_count=6,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
