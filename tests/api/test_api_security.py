"""Security headers on every kind of answer, the report's and the docs' own policies, and
tokens redacted from the access log."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from backend.api.frontend import FRONTEND_DIR
from backend.api.main import create_app
from backend.api.pages import frontend_version
from backend.api.security import PAGE_POLICY, RedactTokens, html_policy
from backend.settings import Settings
from tests.api.conftest import ADMIN, LiveServer
from tests.api.test_api_events import open_stream

EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def assert_secured(response, policy: str | None = PAGE_POLICY) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (response.request.url, name)
    csp = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp
    script_src = re.search(r"script-src([^;]*)", csp).group(1)
    assert "unsafe-inline" not in script_src and "unsafe-eval" not in script_src
    if policy is not None:
        assert csp == policy


@pytest.fixture
def site(settings: Settings, broker) -> Iterator[TestClient]:
    """The app with the real frontend, and a route with a bug."""
    app = create_app(settings)

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_every_kind_of_answer_carries_the_headers(
    site: TestClient, create: Callable[..., dict]
) -> None:
    experiment = create()
    answers = {
        "json": site.get("/api/experiments", headers=ADMIN),
        "401": site.get("/api/experiments"),
        "403": site.get("/api/experiments", headers={"Authorization": "Bearer guess"}),
        "404": site.get(f"/api/experiments/{'a' * 32}", headers=ADMIN),
        "422": site.post("/api/experiments", json={"name": 1}, headers=ADMIN),
        "500": site.get("/boom"),
        "page": site.get("/"),
        "experiment page": site.get(f"/experiments/{experiment['id']}"),
        "static": site.get("/static/js/api.js"),
        "versioned": site.get(f"/assets/{frontend_version(FRONTEND_DIR)}/js/api.js"),
        "plotly": site.get("/static/vendor/plotly-cartesian.min.js"),
        "health": site.get("/healthz"),
        "openapi": site.get("/openapi.json"),
        "csv": site.get(f"/api/runs/{experiment['runs'][0]['id']}/export", headers=ADMIN),
    }
    assert answers["500"].status_code == 500 and answers["page"].status_code == 200
    assert answers["versioned"].status_code == answers["plotly"].status_code == 200
    for kind, response in answers.items():
        assert_secured(response), kind


async def test_event_streams_carry_the_headers(
    live_server: LiveServer, create: Callable[..., dict]
) -> None:
    async with open_stream(live_server, create()["id"]) as stream:
        assert_secured(stream.response)


def inline_script_hashes(html: str) -> set[str]:
    bodies = re.findall(r"<script(?![^>]*src=)[^>]*>(.*?)</script>", html, re.DOTALL)
    return {base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies}


def test_the_report_allows_exactly_its_own_scripts(
    site: TestClient, create: Callable[..., dict]
) -> None:
    experiment = create({"preset": "smoke", "name": "</script><script>alert(1)</script>"})
    response = site.get(f"/api/experiments/{experiment['id']}/report", headers=ADMIN)
    assert response.status_code == 200
    assert_secured(response, policy=None)
    script_src = re.search(r"script-src([^;]*)", response.headers["content-security-policy"])
    allowed = set(re.findall(r"'sha256-([^']+)'", script_src.group(1)))
    assert allowed and allowed == inline_script_hashes(response.text)
    assert "'self'" not in script_src.group(1) and "https:" not in script_src.group(1)


def test_a_script_added_to_a_document_is_not_allowed() -> None:
    page = "<p>x</p><script>draw()</script>"
    policy = html_policy(page)
    assert len(re.findall(r"'sha256-", policy)) == 1
    tampered = page + "<script>steal()</script>"
    assert inline_script_hashes(tampered) - set(re.findall(r"'sha256-([^']+)'", policy))


def test_the_api_docs_run_under_their_own_policy(site: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        response = site.get(path)
        assert response.status_code == 200, path
        assert_secured(response, policy=None)
        csp = response.headers["content-security-policy"]
        for origin in re.findall(r'<script src="(https://[^/"]+)', response.text):
            assert origin in re.search(r"script-src([^;]*)", csp).group(1)
        sources = set(csp.replace(";", " ").split())
        assert {f"'sha256-{h}'" for h in inline_script_hashes(response.text)} <= sources


def test_tokens_are_redacted_from_access_log_lines() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/experiments/x?share=s3cr3t&a=1&token=adm1n", "1.1", 200),
        None,
    )
    RedactTokens().filter(record)
    line = record.getMessage()
    assert "s3cr3t" not in line and "adm1n" not in line
    assert "share=[redacted]&a=1&token=[redacted]" in line
    assert any(isinstance(f, RedactTokens) for f in logging.getLogger("uvicorn.access").filters)
