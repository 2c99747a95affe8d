"""Organising experiments over HTTP: notes, tags and archiving through PATCH, and the list's
search, filters, sorts and pages (`GET /api/experiments`), each input read strictly."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from backend.api.page_schemas import MAX_NOTES_CHARS, MAX_TAGS
from tests.api.conftest import ADMIN, SMALL_SPEC, finish_run


@pytest.fixture
def word() -> str:
    return f"w{secrets.token_hex(4)}"


def patch(client: TestClient, experiment_id: str, body: dict, headers=ADMIN):
    return client.patch(f"/api/experiments/{experiment_id}", json=body, headers=headers)


def names(client: TestClient, **params) -> tuple[list[str], int]:
    answer = client.get("/api/experiments", params=params, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return [item["name"] for item in answer.json()["items"]], answer.json()["total"]


def test_notes_tags_and_archive_change_only_what_is_given(
    client: TestClient, create: Callable[..., dict]
) -> None:
    experiment = create({**SMALL_SPEC, "name": "to organise"})
    path = experiment["id"]
    assert experiment["tags"] == [] and experiment["archived_at"] is None
    notes = "# Findings\n\nK-FAC wins *early*; see [the paper](https://arxiv.org/abs/1503.05671)."
    changed = patch(client, path, {"notes": notes, "tags": ["kfac", "baseline"]}).json()
    assert changed["notes"] == notes and changed["tags"] == ["baseline", "kfac"]
    assert changed["name"] == "to organise"
    archived = patch(client, path, {"archived": True}).json()
    assert archived["archived_at"] is not None and archived["notes"] == notes
    assert archived["tags"] == ["baseline", "kfac"]
    again = client.get(f"/api/experiments/{path}", headers=ADMIN).json()
    assert again["notes"] == notes and again["archived_at"] == archived["archived_at"]
    shown = patch(client, path, {"archived": False, "tags": [], "name": "organised"}).json()
    assert shown["archived_at"] is None and shown["tags"] == [] and shown["name"] == "organised"
    assert shown["spec"]["name"] == "organised"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"notes": "x" * (MAX_NOTES_CHARS + 1)}, ["body", "notes"]),
        ({"notes": "a\x00b"}, ["body", "notes"]),
        ({"tags": ["Upper"]}, ["body", "tags", 0]),
        ({"tags": ["ok", "has space"]}, ["body", "tags", 1]),
        ({"tags": ["x" * 33]}, ["body", "tags", 0]),
        ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, ["body", "tags"]),
        ({"tags": ["same", "same"]}, ["body", "tags"]),
        ({"archived": "yes please"}, ["body", "archived"]),
        ({"archived": 0}, ["body", "archived"]),  # strict: a boolean, not a number
        ({"tags": ["2024"]}, ["body", "tags", 0]),  # a tag starts with a letter
        ({"name": None}, ["body", "name"]),
        ({"colour": "red"}, ["body", "colour"]),
        ({}, ["body"]),
    ],
)
def test_bad_changes_are_422_naming_the_field(
    client: TestClient, create: Callable[..., dict], body: dict, where: list
) -> None:
    experiment = create()
    answer = patch(client, experiment["id"], body)
    assert answer.status_code == 422, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [where]
    after = client.get(f"/api/experiments/{experiment['id']}", headers=ADMIN).json()
    assert after["notes"] == "" and after["tags"] == [] and after["archived_at"] is None


def test_a_share_link_reads_the_notes_and_changes_nothing(
    client: TestClient, create: Callable[..., dict]
) -> None:
    experiment = create()
    patch(client, experiment["id"], {"notes": "read me", "tags": ["shared"]})
    token = client.post(f"/api/experiments/{experiment['id']}/share", headers=ADMIN).json()
    shared = {"Authorization": f"Bearer {token['token']}"}
    seen = client.get(f"/api/experiments/{experiment['id']}", headers=shared).json()
    assert seen["notes"] == "read me" and seen["tags"] == ["shared"]
    assert patch(client, experiment["id"], {"notes": "defaced"}, shared).status_code == 403
    assert client.get("/api/experiments", headers=shared).status_code == 403


def test_the_list_searches_filters_sorts_and_pages(
    client: TestClient, create: Callable[..., dict], db_url: str, word: str
) -> None:
    made = {}
    for name, optimizer, tags in [
        ("b second", "adam", ["team-a"]),
        ("a first", "sgd", ["team-b", word]),
        ("c third", "kfac", []),
    ]:
        spec = {**SMALL_SPEC, "name": f"{word} {name}", "optimizers": [{"name": optimizer}]}
        made[name] = create(spec)
        patch(client, made[name]["id"], {"tags": tags} if tags else {"archived": False})
    for run in made["a first"]["runs"]:
        finish_run(db_url, run["id"], final_metrics={"train_loss": 0.5})

    # newest first: created b, a, c
    assert names(client, q=word) == ([f"{word} c third", f"{word} a first", f"{word} b second"], 3)
    assert names(client, q=word, sort="name", order="asc")[0][0] == f"{word} a first"
    assert names(client, q=word, sort="status", order="desc")[0][0] == f"{word} a first"
    assert names(client, q=word, sort="tags", order="asc")[0] == [
        f"{word} b second",
        f"{word} a first",
        f"{word} c third",  # no tag: last
    ]
    assert names(client, q=word, sort="best_loss")[0][0] == f"{word} a first"
    assert names(client, q=word, optimizer="adam") == ([f"{word} b second"], 1)
    assert names(client, q=word, tag="team-b") == ([f"{word} a first"], 1)
    assert names(client, q=word, status="succeeded") == ([f"{word} a first"], 1)
    first, total = names(client, q=word, sort="name", order="asc", limit=2)
    rest, _ = names(client, q=word, sort="name", order="asc", limit=2, offset=2)
    assert total == 3 and first + rest == sorted(first + rest) and len(set(first + rest)) == 3

    patch(client, made["c third"]["id"], {"archived": True})
    assert names(client, q=word)[1] == 2
    assert names(client, q=word, archived="only") == ([f"{word} c third"], 1)
    assert names(client, q=word, archived="include")[1] == 3


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"sort": "colour"}, ["query", "sort"]),
        ({"order": "sideways"}, ["query", "order"]),
        ({"archived": "maybe"}, ["query", "archived"]),
        ({"tag": "Not A Tag"}, ["query", "tag", 0]),
        ({"q": "x" * 201}, ["query", "q"]),
        ({"optimizer": "o" * 65}, ["query", "optimizer", 0]),
        ({"optimizer": "-44654"}, ["query", "optimizer", 0]),
        ({"q": ["one", "two"]}, ["query", "q"]),  # a single value given twice
        ({"sort": ["name", "runs"]}, ["query", "sort"]),
        ({"sort_by": "name"}, ["query", "sort_by"]),
        ({"limit": 0}, ["query", "limit"]),
    ],
)
def test_bad_list_queries_are_422_naming_the_parameter(
    client: TestClient, params: dict, where: list
) -> None:
    answer = client.get("/api/experiments", params=params, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [where]
