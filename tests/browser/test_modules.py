"""The frontend's pure modules, run in the browser as the pages load them (no build, no Node):
the curve arithmetic, optimizer grouping and the escaping rules."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.browser.support import PageWatch

pytestmark = pytest.mark.browser


def run_module(page: Page, module: str, body: str):
    """Evaluate `body` (an async function of the module `m`) in the page."""
    return page.evaluate(f"import('/static/js/{module}').then(async (m) => ({body})(m))")


@pytest.fixture
def page(owner_page: tuple[Page, PageWatch]) -> Page:
    page, _ = owner_page
    page.goto("/new")
    return page


def test_mean_and_band_align_runs_on_the_union_of_their_steps(page: Page) -> None:
    band = run_module(
        page,
        "series.js",
        "m => m.meanBand([{x: [1, 3], y: [10, 30]}, {x: [2, 3, 4], y: [0, 10, 40]}])",
    )
    # x=1: only run A; x=2: A interpolated (20) and B (0); x=3: both; x=4: only B.
    assert band == {
        "x": [1, 2, 3, 4],
        "mean": [10, 10, 20, 40],
        "lower": [10, 0, 10, 40],
        "upper": [10, 20, 30, 40],
        "n": [1, 2, 2, 1],
    }


def test_smoothing_is_a_debiased_ema_that_keeps_the_input(page: Page) -> None:
    result = run_module(
        page,
        "series.js",
        "m => { const ys = [4, 4, 4]; return [m.smooth(ys, 0.9), m.smooth(ys, 0), ys]; }",
    )
    smoothed, unsmoothed, original = result
    assert smoothed == pytest.approx([4, 4, 4])  # debiased: a constant stays constant
    assert unsmoothed == original == [4, 4, 4]


def test_runs_group_by_optimizer_setting_with_distinct_labels(page: Page) -> None:
    groups = run_module(
        page,
        "optimizers.js",
        """m => m.groupRuns([
          {id: "a", optimizer: {name: "kfac"}, seed: 0},
          {id: "b", optimizer: {name: "kfac"}, seed: 1},
          {id: "c", optimizer: {name: "sgd_momentum", lr: 0.01}, seed: 0},
          {id: "d", optimizer: {name: "sgd_momentum", lr: 0.1}, seed: 0},
        ]).map((g) => [g.label, g.colour, g.dash, g.runs.map((r) => r.id)])""",
    )
    assert groups == [
        ["K-FAC", "#0072B2", "solid", ["a", "b"]],
        ["SGD + momentum lr=0.01", "#E69F00", "solid", ["c"]],
        ["SGD + momentum lr=0.1", "#E69F00", "dash", ["d"]],
    ]


def test_strings_never_become_markup(page: Page) -> None:
    escaped, text, refused = run_module(
        page,
        "dom.js",
        """m => {
          const name = "<img src=x onerror=alert(1)>";
          let refused = false;
          try { m.el("div", { onclick: "alert(1)" }); } catch { refused = true; }
          return [m.escapeHtml(name), m.el("p", {}, name).innerHTML, refused];
        }""",
    )
    assert escaped == "&lt;img src=x onerror=alert(1)&gt;"
    assert text == "&lt;img src=x onerror=alert(1)&gt;"  # a text node, shown as typed
    assert refused


def test_a_runs_provenance_reads_as_lines(page: Page) -> None:
    text = run_module(
        page,
        "runs.js",
        """m => [m.provenanceText({kfac_lab: "0.1.0", git_commit: "0123456789abcdef+dirty",
          python: "3.11.7", torch: "2.13.0", cuda: null, host: "gpu-3",
          plugins: {"kfac-lab-example-plugin": "0.1.0"}}), m.provenanceText(null)]""",
    )
    assert text == [
        "kfac-lab 0.1.0 (git 0123456789ab)\nPython 3.11.7\ntorch 2.13.0\nhost gpu-3\n"
        "plugins: kfac-lab-example-plugin 0.1.0",
        None,
    ]
