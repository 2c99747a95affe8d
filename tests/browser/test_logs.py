"""The experiment page's log panels: one per run, collapsed until opened; an open panel shows
the run's lines and tails the new ones live (through the event stream), and a line holding
markup shows as text."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import PageWatch, Server

pytestmark = pytest.mark.browser

INJECTED = "<script>window.injected = 1</script><b>bold</b>"


def test_a_run_s_log_panel_shows_its_lines_as_text_and_tails_new_ones(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    page, _ = owner_page
    run = server.post(
        "/api/tracking/runs",
        {
            "id": uuid.uuid4().hex,
            "experiment": f"logs {uuid.uuid4().hex[:6]}",
            "label": "scripted",
        },
    )
    logs = f"/api/tracking/runs/{run['run_id']}/logs"
    server.post(logs, {"lines": [[0, 1.7e9, "INFO", "started"], [1, 1.7e9, "ERROR", INJECTED]]})

    page.goto(f"/experiments/{run['experiment_id']}")
    panel = page.locator(f'details.run-log[data-run="{run["run_id"]}"]')
    expect(panel.locator("summary")).to_have_text("scripted")
    expect(panel.locator(".log-line")).to_have_count(0)  # collapsed: nothing read yet
    panel.locator("summary").click()
    lines = panel.locator(".log-line")
    expect(lines).to_have_count(2)
    expect(lines.nth(0)).to_contain_text("INFO started")
    expect(lines.nth(1)).to_contain_text(f"ERROR {INJECTED}")  # the markup, as text
    expect(lines.nth(1)).to_have_class("log-line log-error")
    assert lines.nth(1).locator("script, b").count() == 0
    assert page.evaluate("() => window.injected") is None

    expect(page.locator("#live-text")).to_have_text("live", timeout=30_000)
    server.post(logs, {"lines": [[2, 1.7e9, "WARNING", "step 10: slow"]]})
    expect(lines).to_have_count(3, timeout=30_000)  # no reload: through the stream
    expect(lines.nth(2)).to_contain_text("WARNING step 10: slow")
    server.post(logs, {"lines": [[2, 1.7e9, "WARNING", "step 10: slow"]]})  # a retry: once
    server.post(f"/api/tracking/runs/{run['run_id']}/end", {"status": "succeeded", "step": 10})
    expect(page.locator("#live-text")).to_have_text("finished", timeout=30_000)
    expect(lines).to_have_count(3)
