"""Bad input answers 422 naming the field, never 500: NaN, ±Infinity and 1e999999 in any
numeric field of a JSON body (and the keep-alive connection stays usable), values of the
wrong type; 405 names every allowed method; the OpenAPI document says what the server does."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import httpx
import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN, SMALL_SPEC, LiveServer

JSON = {**ADMIN, "Content-Type": "application/json"}
BASE = '{"base": {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [8]}, '


def strict_json(text: str) -> object:
    """Parse as standard JSON: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def error_locs(response: httpx.Response) -> set[str]:
    return {".".join(map(str, error["loc"])) for error in strict_json(response.text)["detail"]}


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999999", "-1e999999"]

# (body with X where the bad number goes, the field the error must name)
BODIES = [
    (BASE + '"steps": X}}', "body.base.steps"),
    (BASE + '"epochs": X}}', "body.base.epochs"),
    (BASE + '"optimizer": {"name": "kfac", "kl_clip": X}}}', "body.base.optimizer.kfac.kl_clip"),
    ('{"base": {"model": {"name": "mlp", "width_scale": X}}}', "body.base.model.mlp.width_scale"),
    ('{"runs": [{}, {"seed": X}]}', "body.runs.1.seed"),
    ('{"base": {}, "seeds": [0, X]}', "body.seeds.1"),
    ('{"preset": "smoke", "overrides": {"steps": X}}', "body.overrides.steps"),
    ('{"preset": "smoke", "overrides": {"optimizers": [{"name": "adam", "lr": X}]}}',
     "body.overrides.optimizers.0.adam.lr"),
    ('{"preset": "smoke", "overrides": {"probe": {"damping": X}}}', "body.overrides.probe.damping"),
    ('{"preset": "smoke", "name": X}', "body.name"),
]  # fmt: skip


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(("body", "field"), BODIES)
def test_non_finite_numbers_are_422_naming_the_field(
    client: TestClient, body: str, field: str, number: str
) -> None:
    response = client.post("/api/experiments", content=body.replace("X", number), headers=JSON)
    assert response.status_code == 422, response.text
    assert field in error_locs(response)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e999999"])
def test_non_finite_numbers_in_a_clone_request_are_422(
    client: TestClient, create: Callable[..., dict], number: str
) -> None:
    experiment = create()
    response = client.post(
        f"/api/experiments/{experiment['id']}/clone", content=f'{{"name": {number}}}', headers=JSON
    )
    assert response.status_code == 422 and error_locs(response) == {"body.name"}


def test_an_infinite_kl_clip_is_refused_not_stored_as_no_clipping(client: TestClient) -> None:
    body = {**SMALL_SPEC, "optimizers": [{"name": "kfac", "kl_clip": "INF"}]}
    text = json.dumps(body).replace('"INF"', "Infinity")
    response = client.post("/api/experiments", content=text, headers=JSON)
    assert response.status_code == 422
    assert error_locs(response) == {"body.optimizers.0.kfac.kl_clip"}


def test_the_connection_stays_usable_after_a_bad_number(live_server: LiveServer) -> None:
    """A real server, one keep-alive connection: the bad request, then a good one on the same
    socket (the 500 of FastAPI's handler used to close it)."""
    with httpx.Client(base_url=live_server.url, headers=ADMIN, timeout=60) as http:
        bad = http.post("/api/experiments", content='{"base": {"steps": NaN}}', headers=JSON)
        first_socket = _client_address(bad)
        good = http.post("/api/experiments", json=SMALL_SPEC)
        second_socket = _client_address(good)
    assert bad.status_code == 422 and error_locs(bad) == {"body.base.steps"}
    assert good.status_code == 201, good.text
    assert first_socket == second_socket


def _client_address(response: httpx.Response) -> tuple[str, int]:
    """The local address of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"base": {"steps": True}}, "body.base.steps"),
        ({"base": {"steps": "10"}}, "body.base.steps"),
        ({"base": {"steps": 10.5}}, "body.base.steps"),
        ({"base": {"dataset": {"name": "mnist", "download": "no"}}}, "body.base.dataset.download"),
        ({"base": {"optimizer": {"name": "sgd", "lr": "0.1"}}}, "body.base.optimizer.sgd.lr"),
        ({"base": {"model": {"name": "mlp", "hidden": [True]}}}, "body.base.model.mlp.hidden.0"),
        ({"preset": "smoke", "overrides": {"steps": True}}, "body.overrides.steps"),
        ({"preset": "smoke", "overrides": {"seeds": ["1"]}}, "body.overrides.seeds.0"),
    ],
)
def test_values_of_the_wrong_type_are_422(client: TestClient, body: dict, field: str) -> None:
    response = client.post("/api/experiments", json=body, headers=ADMIN)
    assert response.status_code == 422 and field in error_locs(response), response.text


def test_numbers_are_read_as_json_means_them(client: TestClient) -> None:
    body = {"base": {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [8.0]},
                     "steps": 20.0, "optimizer": {"name": "sgd", "lr": 1}}}  # fmt: skip
    response = client.post("/api/experiments", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    spec = response.json()["spec"]["runs"][0]
    assert spec["steps"] == 20 and spec["model"]["hidden"] == [8]
    assert spec["optimizer"]["lr"] == 1.0


# --- 405 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/experiments", "GET, POST"),
        ("PUT", "/api/experiments/0123", "GET, PATCH, DELETE"),
        ("PUT", "/api/experiments/0123/share", "GET, POST, DELETE"),
        ("GET", "/api/experiments/validate", "POST"),
        ("DELETE", "/api/presets", "GET"),
        ("GET", "/api/runs/0123/cancel", "POST"),
    ],
)
def test_405_lists_every_allowed_method(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path, headers=ADMIN)
    assert response.status_code == 405 and response.headers["allow"] == allow
    assert response.json() == {"detail": "Method Not Allowed"}


# --- the OpenAPI document ------------------------------------------------------------------


def test_the_published_create_schema_refuses_an_empty_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    body_schema = document["paths"]["/api/experiments"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    validator = jsonschema_rs.validator_for({**document, **body_schema})
    for body, valid in (({}, False), ({"preset": "smoke"}, True), (SMALL_SPEC, True)):
        assert validator.is_valid(body) is valid, body
        answer = client.post("/api/experiments", json=body, headers=ADMIN)
        assert (answer.status_code == 201) is valid, answer.text


def test_the_limits_of_metric_names_are_published_and_applied(
    client: TestClient, create: Callable[..., dict]
) -> None:
    experiment = create()
    paths = {
        "/api/runs/{run_id}/metrics": f"/api/runs/{experiment['runs'][0]['id']}/metrics",
        "/api/runs/{run_id}/export": f"/api/runs/{experiment['runs'][0]['id']}/export",
        "/api/experiments/{experiment_id}/metrics": f"/api/experiments/{experiment['id']}/metrics",
    }
    document = client.get("/openapi.json").json()
    for template, path in paths.items():
        (parameter,) = [
            p for p in document["paths"][template]["get"]["parameters"] if p["name"] == "names"
        ]
        array = parameter["schema"]["anyOf"][0]
        pattern = re.compile(array["items"]["pattern"])
        assert array["maxItems"] == 32
        for names, accepted in (
            (["train_loss", "a,b"], True),
            (["x" * 64], True),
            ([",".join(["n"] * 32)], True),
            (["x" * 65], False),
            (["a\x00b"], False),
            ([",".join(["n"] * 33)], False),
            (["n"] * 33, False),
        ):
            published = len(names) <= 32 and all(pattern.search(name) for name in names)
            answer = client.get(path, params={"names": names}, headers=ADMIN)
            assert published is accepted and (answer.status_code == 200) is accepted, (path, names)
            if not accepted:
                assert any(loc.startswith("query.names") for loc in error_locs(answer))


def test_errors_of_the_html_report_are_documented_as_json(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    responses = document["paths"]["/api/experiments/{experiment_id}/report"]["get"]["responses"]
    assert set(responses["200"]["content"]) == {"text/html"}
    for code in ("401", "403", "404"):
        assert set(responses[code]["content"]) == {"application/json"}, code
    missing = client.get(f"/api/experiments/{'0' * 32}/report", headers=ADMIN)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    assert missing.json() == {"detail": "No such experiment."}


def test_the_published_preset_names_are_the_accepted_ones(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    names = document["components"]["schemas"]["PresetRequest"]["properties"]["preset"]["enum"]
    assert "smoke" in names
    for name in names:
        body = {"preset": name, "overrides": {"steps": 0}}  # refused, after the name is found
        answer = client.post("/api/experiments", json=body, headers=ADMIN)
        assert error_locs(answer) == {"body.overrides.steps"}, name
    unknown = client.post("/api/experiments", json={"preset": "nope"}, headers=ADMIN)
    assert error_locs(unknown) == {"body.preset"} and "nope" not in names


def test_echoed_input_is_always_plain_json() -> None:
    """Whatever a validation error echoes (a model given as input, a validator's exception in
    `ctx`, non-finite numbers at any depth) is written as standard JSON."""
    from pydantic import BaseModel

    from backend.api.errors import json_safe

    class Echoed(BaseModel):
        x: float

    errors = [{"input": Echoed(x=math.nan), "ctx": {"error": ValueError("too big")},
               "loc": ("body", 0), "more": (math.inf, [-math.inf])}]  # fmt: skip
    text = json.dumps(json_safe(errors), allow_nan=False)
    expected = {"input": {"x": "NaN"}, "ctx": {"error": "too big"}, "loc": ["body", 0],
                "more": ["Infinity", ["-Infinity"]]}  # fmt: skip
    assert strict_json(text) == [expected]


@pytest.mark.parametrize("name", [{}, [], ["kfac"], 3, None])
@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("optimizers", "body.optimizers.0"),
        ("base.optimizer", "body.base.optimizer"),
        ("base.model", "body.base.model"),
    ],
)
def test_a_name_that_is_not_a_string_is_422(
    client: TestClient, name: object, where: str, field: str
) -> None:
    """A model's or optimizer's `name` of any JSON type is refused at its field (a dict or a
    list once reached the registry's lookup and could not be hashed: a 500)."""
    body = {"base": {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [8]}}}
    entry = {"name": name}
    if where == "optimizers":
        body["optimizers"] = [entry]
    else:
        body["base"][where.split(".")[1]] = entry
    response = client.post("/api/experiments", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert any(loc.startswith(field) for loc in error_locs(response)), response.text


@pytest.mark.parametrize(
    ("template", "declared"),
    [
        ("/api/experiments", {"limit": 5}),
        ("/api/presets", {}),
        ("/api/comparison", {"metric": "train_loss"}),
        ("/healthz", {}),
        ("/api/experiments/{experiment_id}/metrics", {"names": "train_loss", "max_points": 4}),
        ("/api/experiments/{experiment_id}", {}),
    ],
)
def test_an_unknown_query_parameter_is_422_naming_it(
    client: TestClient, create: Callable[..., dict], template: str, declared: dict
) -> None:
    """Query strings are read as strictly as bodies (the published parameters are a closed
    set): one the route does not declare is refused by name, after the token is checked;
    declared ones, a dependency's included (`names`), are taken as before."""
    path = template.format(experiment_id=create()["id"])
    assert client.get(path, params=declared, headers=ADMIN).status_code == 200
    answer = client.get(path, params={**declared, "max_point": 4, "zz": ""}, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert error_locs(answer) == {"query.max_point", "query.zz"}, answer.text
    assert {error["type"] for error in answer.json()["detail"]} == {"extra_forbidden"}
    if template.startswith("/api/"):
        assert client.get(path, params={"zz": 1}).status_code == 401
    responses = client.get("/openapi.json").json()["paths"][template]["get"]["responses"]
    assert "422" in responses, template


def test_a_run_across_too_many_ranks_is_422_naming_nodes(client: TestClient) -> None:
    body = {**SMALL_SPEC, "base": {**SMALL_SPEC["base"], "batch_size": 4, "nodes": 5}}
    response = client.post("/api/experiments", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert error_locs(response) == {"body.base.nodes"}
    assert "5 nodes × 1 processes = 5 ranks" in response.text
