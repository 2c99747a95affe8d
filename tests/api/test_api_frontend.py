"""Serving the frontend: pages at hash-free paths, static files that revalidate, and the
plotly.js of the `plotly` package, cached and compressed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.frontend import COMPILE_HINT, plotly_js
from backend.api.main import create_app
from backend.settings import Settings


@pytest.fixture
def site(sqlite_url: str, tmp_path: Path) -> TestClient:
    settings = Settings(home=tmp_path, database_url=sqlite_url, admin_token="t")
    root = tmp_path / "frontend"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>shell</title>")
    (root / "experiment.html").write_text("<!doctype html><title>experiment</title>")
    (root / "js" / "app.js").write_text("export const x = 1;\n")
    with TestClient(create_app(settings, frontend_dir=root)) as client:
        yield client


def test_pages_are_served_at_their_paths(site: TestClient) -> None:
    index = site.get("/?token=abc")
    assert index.status_code == 200 and "shell" in index.text
    assert index.headers["content-type"].startswith("text/html")
    assert index.headers["cache-control"] == "no-cache" and index.headers["etag"]
    assert "shell" in site.get("/new").text  # no new.html: the SPA shell
    assert "experiment" in site.get(f"/experiments/{'a' * 32}?share=t").text
    again = site.get("/", headers={"If-None-Match": index.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_static_files_revalidate(site: TestClient) -> None:
    script = site.get("/static/js/app.js")
    assert script.status_code == 200 and "export" in script.text
    assert script.headers["cache-control"] == "no-cache"
    assert script.headers["content-type"].startswith("text/javascript")
    cached = site.get("/static/js/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert cached.status_code == 304
    assert site.get("/static/js/missing.js").status_code == 404
    assert site.get("/static/../index.html").status_code == 404


def test_plotly_comes_from_the_python_package(site: TestClient) -> None:
    path = plotly_js()
    assert path is not None and isinstance(path, Path)
    plain = site.get("/static/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and plain.content == COMPILE_HINT + path.read_bytes()
    assert plain.headers["cache-control"] == "public, max-age=86400"
    compressed = site.get(
        "/static/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"}, follow_redirects=True
    )
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.content == plain.content  # httpx decodes it
    assert compressed.headers["etag"] != plain.headers["etag"]
    assert int(compressed.headers["content-length"]) < len(path.read_bytes()) / 2
    not_modified = site.get(
        "/static/vendor/plotly.min.js",
        headers={"Accept-Encoding": "gzip", "If-None-Match": compressed.headers["etag"]},
    )
    assert not_modified.status_code == 304


def test_without_a_frontend_pages_are_404(client: TestClient) -> None:
    missing = client.get("/")
    assert missing.status_code == 404 and "frontend" in missing.json()["detail"]
