"""The lab in a real browser: launch a comparison from the form, watch it live, look at the
curvature, share it read-only; escaping, console errors, and the page's speed with big data.

One smoke comparison (K-FAC against SGD with momentum, 60 steps, a snapshot every 20) is
launched from the form once per module and shared by the tests that watch it, so the whole
file stays within a few minutes on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from backend.spec import ExperimentSpec
from tests.browser.support import (
    WORKER_WAIT_MS,
    Launched,
    PageWatch,
    Screenshots,
    Server,
    launch,
    smoke_form,
)

pytestmark = pytest.mark.browser

XSS_NAME = "<img src=x onerror=alert(1)>"
LIVE_TIMEOUT_MS = WORKER_WAIT_MS  # the smoke runs train meanwhile

POINTS_JS = """id => {
  const node = document.getElementById(id);
  return (node && node.data || []).reduce((n, trace) => n + trace.x.length, 0);
}"""
HEATMAP_JS = """id => {
  const trace = document.getElementById(id)?.data?.[0];
  return trace ? JSON.stringify([trace.z.length, trace.z[0]?.slice(0, 40)]) : null;
}"""


def wait_until(page: Page, expression: str, timeout: float = 30_000) -> None:
    """Poll a JavaScript condition (on a timer: the page's animation frames are its own)."""
    # As a function: a bare expression would be re-evaluated with `eval`, which the pages'
    # Content-Security-Policy forbids.
    page.wait_for_function(f"() => ({expression})", polling=250, timeout=timeout)


def fill_field(page: Page, path: str, value: str) -> None:
    page.locator(f'[name="{path}"]').fill(value)


@pytest.fixture(scope="module")
def launched(browser: Browser, browser_context_args: dict, server: Server) -> Iterator[Launched]:
    """A smoke comparison launched from the form, and the experiment page it opened."""
    fields = {
        "name": XSS_NAME,
        "base.steps": "60",
        "base.snapshot_interval": "20",
        "base.eval_interval": "20",
    }
    permissions = ("clipboard-read", "clipboard-write")
    context, watch, page = smoke_form(browser, browser_context_args, server, fields, permissions)
    yield launch(context, watch, page)
    context.close()


def test_form_shows_field_errors_next_to_the_field(
    owner_page: tuple[Page, PageWatch], screenshots: Screenshots
) -> None:
    page, watch = owner_page
    page.goto("/new")
    screenshots.save("new", page)
    fill_field(page, "base.steps", "0")
    page.click("#launch")
    error = page.locator('.field[data-path="base.steps"] .field-error')
    expect(error).to_contain_text("greater than or equal to 1")
    expect(page.locator("#form-error")).to_contain_text("correct the fields")
    assert page.url.endswith("/new")
    # The optimizers' fields come from the API's schema, defaults shown.
    expect(page.locator('[name="optimizers.0.damping"]')).to_have_value("1")
    # A 422 is an expected answer, not a page error: the browser logs the failed request only.
    watch.errors[:] = [e for e in watch.errors if "422" not in e]


def test_launched_page_shows_the_name_as_text(launched: Launched) -> None:
    page = launched.page
    expect(page.locator("#experiment-name")).to_have_text(XSS_NAME)
    assert page.locator("#experiment-name img").count() == 0
    expect(page.locator("#runs tr")).to_have_count(2)
    assert page.title().startswith(XSS_NAME)
    launched.watch.assert_clean()


def test_the_spec_downloads_as_the_json_kfac_lab_run_takes(launched: Launched) -> None:
    page = launched.page
    with page.expect_download() as download:
        page.click("#export-spec")
    spec = json.loads(Path(download.value.path()).read_text())
    assert spec["name"] == XSS_NAME and len(spec["runs"]) == 2
    ExperimentSpec.model_validate(spec)  # what `kfac-lab run` validates it with
    launched.watch.assert_clean()


def test_curves_grow_live(launched: Launched, screenshots: Screenshots) -> None:
    page = launched.page
    wait_until(page, f"({POINTS_JS})('chart-train_loss') > 0", timeout=LIVE_TIMEOUT_MS)
    first = page.evaluate(POINTS_JS, "chart-train_loss")
    navigations = page.evaluate("performance.getEntriesByType('navigation').length")
    wait_until(page, f"({POINTS_JS})('chart-train_loss') > {first}", timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == navigations
    expect(page.locator("#live-text")).to_have_text("live")
    # K-FAC's internals (λ, α, μ, ρ, update norm) are drawn too, once scrolled to.
    expect(page.locator("#internals-panel")).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    page.locator("#internals-panel").scroll_into_view_if_needed()
    wait_until(page, f"({POINTS_JS})('chart-damping') > 0", timeout=LIVE_TIMEOUT_MS)

    # Zooming fetches finer data for the visible range; zooming out, the whole range again.
    zoom = "range => Plotly.relayout(document.getElementById('chart-train_loss'), range)"
    with page.expect_response(lambda r: "/metrics" in r.url and "x_min=2" in r.url):
        page.evaluate(zoom, {"xaxis.range": [2, 12]})
    with page.expect_response(lambda r: "/metrics" in r.url and "x_min" not in r.url):
        page.evaluate(zoom, {"xaxis.autorange": True})
    launched.watch.assert_clean()


def test_snapshot_slider_changes_the_heatmaps(launched: Launched, screenshots: Screenshots) -> None:
    page = launched.page
    slider = page.locator("#snapshot-slider")
    page.locator("#curvature-panel").scroll_into_view_if_needed()  # it loads once seen
    # Two snapshots of the K-FAC run (steps 20 and 40): the slider follows them live.
    wait_until(
        page,
        "Number(document.getElementById('snapshot-slider').max) >= 1",
        timeout=LIVE_TIMEOUT_MS,
    )
    shown = "document.getElementById('heatmaps').dataset.step"
    wait_until(page, f"!['20', undefined].includes({shown})", timeout=LIVE_TIMEOUT_MS)
    newest = page.evaluate(HEATMAP_JS, "heat-exact")
    slider.evaluate("node => { node.value = '0'; node.dispatchEvent(new Event('input')); }")
    expect(page.locator("#snapshot-step")).to_have_text("step 20")
    wait_until(page, f"{shown} === '20'", timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate(HEATMAP_JS, "heat-exact") != newest
    for key in ("kronecker", "difference", "kronecker_inverse", "block_tridiagonal_inverse"):
        assert page.evaluate(HEATMAP_JS, f"heat-{key}") is not None
    screenshots.save("curvature-heatmaps", page.locator("#curvature-panel"))
    screenshots.save("experiment-curves", page.locator("#curves-panel"))

    # Block averages: one cell per pair of probed layers; the spectra of every layer.
    page.click('#heat-view button[data-view="blocks"]')
    layers = page.evaluate("document.getElementById('heat-exact').data[0].z.length")
    assert layers == 4
    expect(page.locator("#spectra .chart")).to_have_count(layers)
    page.click('#heat-view button[data-view="full"]')
    launched.watch.assert_clean()


def test_share_link_opens_a_read_only_page(
    launched: Launched,
    browser: Browser,
    browser_context_args: dict,
    server: Server,
    screenshots: Screenshots,
) -> None:
    owner = launched.page
    owner.click("#share")
    share_input = owner.locator("#share-url")
    expect(share_input).not_to_have_value("")
    share_url = share_input.input_value()
    assert f"/experiments/{launched.id}#share=" in share_url

    stranger = browser.new_context(**browser_context_args)  # no admin token anywhere
    try:
        watch = PageWatch()
        page = watch.attach(stranger.new_page())
        page.goto(share_url)
        expect(page.locator("#experiment-name")).to_have_text(XSS_NAME)
        expect(page.locator("#readonly-note")).to_be_visible()
        wait_until(page, f"({POINTS_JS})('chart-train_loss') > 0")
        for control in ("#share", "#clone", "#cancel-all", "#share-box", "nav"):
            assert page.locator(control).count() == 0, f"{control} on a shared page"
        expect(page.locator("#runs button", has_text="Cancel")).to_have_count(0)
        screenshots.save("shared-view", page)

        share_token = share_url.split("share=")[1]
        writes = page.evaluate(
            """async ([id, token]) => {
              const headers = {
                Authorization: `Bearer ${token}`, "Content-Type": "application/json",
              };
              const post = (path, body) =>
                fetch(path, { method: "POST", headers, body }).then((r) => r.status);
              return [
                await post(`/api/experiments/${id}/clone`, "{}"),
                await post(`/api/experiments/${id}/share`, ""),
                await post(`/api/experiments/${id}/cancel`, ""),
                await post("/api/experiments", JSON.stringify({ preset: "smoke" })),
              ];
            }""",
            [launched.id, share_token],
        )
        assert all(status in (401, 403) for status in writes), writes
        watch.errors[:] = [e for e in watch.errors if "403" not in e]  # the refusals just asked for
        watch.assert_clean()

        owner.click("#revoke-share")
        expect(owner.locator("#share-box")).to_be_hidden()
        status = page.evaluate(
            "([id, token]) => fetch(`/api/experiments/${id}`, "
            "{ headers: { Authorization: `Bearer ${token}` } }).then((r) => r.status)",
            [launched.id, share_token],
        )
        assert status == 403
    finally:
        stranger.close()
    launched.watch.assert_clean()


def test_experiments_list_search_and_filter(
    launched: Launched, owner_page: tuple[Page, PageWatch], screenshots: Screenshots
) -> None:
    page, _ = owner_page
    page.goto("/")
    row = page.locator(f'#experiments tr[data-id="{launched.id}"]')
    expect(row.locator("a")).to_have_text(XSS_NAME)
    assert row.locator("img").count() == 0
    expect(row.locator(".badges .badge")).to_have_count(2)
    expect(row).to_contain_text("smoke")
    screenshots.save("list", page)

    page.fill("#search", "onerror")
    expect(row).to_be_visible()
    page.fill("#search", "no experiment has this name")
    expect(page.locator("#list-message")).to_have_text("No experiment matches.")
    page.fill("#search", "")
    page.select_option("#status-filter", "failed")
    expect(row).to_have_count(0)
