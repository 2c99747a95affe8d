"""Tokens in a real browser: after the first visit no request carries a token in its URL
(pages, API calls, the live stream, the CSV export, the report), old `?share=` links move to
the fragment, the server's access log never holds a token, and the pages run under their
Content-Security-Policy without a single violation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect

from backend.store.access import create_share_link
from backend.store.db import session_scope
from backend.store.results import write_metrics
from backend.store.writes import claim_run, create_experiment, set_status
from tests.browser.support import PageWatch, Server

pytestmark = pytest.mark.browser

POINTS_JS = "document.getElementById('chart-train_loss')?.data?.[0]?.x.length ?? 0"


@dataclass
class Live:
    """A stored experiment whose one run is `running`, so its page opens the event stream."""

    experiment_id: str
    run_id: str
    share_token: str


@pytest.fixture
def live(server: Server) -> Iterator[Live]:
    with session_scope(server.database_url) as session:
        runs = [{"label": "sgd", "optimizer": {"name": "sgd"}, "seed": 0, "spec": {}}]
        experiment = create_experiment(session, name="tokens", spec={}, runs=runs)
        experiment_id, run_id = experiment.id, experiment.runs[0].id
        claim_run(session, run_id, "tokens-test")
        write_metrics(session, run_id, [("train_loss", 1, 0.1, 2.0)])
        share_token = create_share_link(session, experiment_id)
    yield Live(experiment_id, run_id, share_token)
    with session_scope(server.database_url) as session:
        set_status(session, run_id, "succeeded", step=2)


class Requests:
    """Every request URL a browser context sends, in order."""

    def __init__(self, context: BrowserContext):
        self.urls: list[str] = []
        context.on("request", self._record)

    def _record(self, request: Request) -> None:
        self.urls.append(request.url)

    def carrying(self, *secrets: str) -> list[str]:
        return [url for url in self.urls if any(secret in url for secret in secrets)]


def access_log(server: Server) -> str:
    """The server's access log lines (its output also holds the start-up banner, which shows
    the admin token to whoever started it, as Jupyter does)."""
    lines = (server.home / "serve.log").read_text().splitlines()
    return "\n".join(line for line in lines if " HTTP/1.1" in line)


def watched(context: BrowserContext) -> tuple[Page, PageWatch]:
    watch = PageWatch()
    return watch.attach(context.new_page()), watch


def add_point_and_wait(page: Page, server: Server, live: Live, step: int) -> None:
    """A new point reaches the open page through its live stream."""
    with session_scope(server.database_url) as session:
        write_metrics(session, live.run_id, [("train_loss", step, 0.1 * step, 1.0 / step)])
    page.wait_for_function(f"() => ({POINTS_JS}) >= {step}", polling=250, timeout=30_000)


def test_the_admin_token_is_in_the_first_url_only(
    browser: Browser, browser_context_args: dict, server: Server, live: Live
) -> None:
    context = browser.new_context(**browser_context_args, accept_downloads=True)
    requests = Requests(context)
    try:
        page, watch = watched(context)
        page.goto(f"/?token={server.token}")
        page.wait_for_function("() => localStorage.getItem('kfac-lab.token') !== null")
        assert requests.carrying(server.token) == [requests.urls[0]]
        assert "token" not in page.url
        page.goto("/new")
        expect(page.locator('.preset[data-name="smoke"]')).to_have_attribute("aria-pressed", "true")

        page.goto(f"/experiments/{live.experiment_id}")
        expect(page.locator("#live-text")).to_have_text("live", timeout=30_000)
        add_point_and_wait(page, server, live, 2)
        with page.expect_download() as csv:
            page.locator("#runs button", has_text="Raw CSV").click()
        assert "train_loss" in csv.value.path().read_text()
        expect(page.locator("#report")).to_be_visible()
        with page.expect_download() as report:
            page.click("#report")
        assert report.value.suggested_filename == f"kfac-lab-{live.experiment_id}.html"

        assert any("/events" in url for url in requests.urls), requests.urls
        assert requests.carrying(server.token, "token=") == [requests.urls[0]], requests.urls
        watch.assert_clean()  # CSP violations are console errors
    finally:
        context.close()
    log = access_log(server)
    assert "token=[redacted]" in log  # the access log is on, and the first URL was redacted
    assert server.token not in log


def test_an_old_share_link_moves_its_token_to_the_fragment(
    browser: Browser, browser_context_args: dict, server: Server, live: Live
) -> None:
    context = browser.new_context(**browser_context_args)  # no admin token anywhere
    requests = Requests(context)
    try:
        page, watch = watched(context)
        page.goto(f"/experiments/{live.experiment_id}?share={live.share_token}")
        expect(page.locator("#readonly-note")).to_be_visible()
        assert page.url.endswith(f"/experiments/{live.experiment_id}#share={live.share_token}")
        expect(page.locator("#live-text")).to_have_text("live", timeout=30_000)
        add_point_and_wait(page, server, live, 2)
        assert requests.carrying(live.share_token) == [requests.urls[0]], requests.urls

        page.reload()  # the link as it now reads: its token never leaves the browser
        expect(page.locator("#readonly-note")).to_be_visible()
        expect(page.locator("#live-text")).to_have_text("live", timeout=30_000)
        add_point_and_wait(page, server, live, 3)
        assert requests.carrying(live.share_token) == [requests.urls[0]], requests.urls
        watch.assert_clean()
    finally:
        context.close()
    log = access_log(server)
    assert "share=[redacted]" in log and live.share_token not in log


def test_an_injected_inline_script_does_not_run(owner_page: tuple[Page, PageWatch]) -> None:
    """The policy is enforced by the browser, and a violation is the console error the page
    watch of every browser test looks for."""
    page, watch = owner_page
    page.goto("/")
    expect(page.locator("h1").first).to_be_visible()
    page.evaluate(
        """() => {
          const script = document.createElement("script");
          script.textContent = "window.injected = true";
          document.body.append(script);
        }"""
    )
    assert page.evaluate("() => window.injected") is None
    violations = [e for e in watch.errors if "Content Security Policy" in e]
    assert violations, watch.errors
    watch.errors[:] = [e for e in watch.errors if e not in violations]
