"""The experiment page's first and second visit: what waits for plotly.js and what is kept.

* The comparison table (and everything else that is not a chart) is drawn from the API's
  answers while plotly.js is still on its way: here the browser's request for the bundle is
  held back until the table is on screen, and the charts appear once it is let through.
* A second visit asks the server for no file at all: the page names its files under the
  frontend's version (`/assets/VERSION/...`), and those answers are kept for good, so every
  module, the stylesheet and plotly.js come from the browser's cache (a resource entry with a
  `transferSize` of 0; a revalidation would be a 304 round trip, with bytes of headers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, Route

from backend.store.db import session_scope
from backend.store.results import write_metrics
from backend.store.writes import claim_run, create_experiment, set_status
from tests.browser.support import PageWatch, Server

pytestmark = pytest.mark.browser

OPTIMIZERS = ["sgd_momentum", "kfac"]
LEARNING_RATES = [0.01, 0.1]
SEEDS = 2
POINTS = 200
PLOTLY = "**/vendor/plotly-cartesian.min.js"

DRAWN_JS = """() => performance.getEntriesByName('kfac:curves-drawn').length > 0"""
CHART_DRAWN_JS = """() => document.getElementById('chart-train_loss')
  ?.classList.contains('js-plotly-plot') ?? false"""
LEGEND_JS = """() => document.getElementById('chart-train_loss').data
  .filter((t) => t.showlegend !== false).map((t) => t.name)"""
FILES_JS = """() => performance.getEntriesByType('resource')
  .map((e) => ({path: new URL(e.name).pathname, transfer: e.transferSize}))
  .filter((e) => e.path.startsWith('/assets/') || e.path.startsWith('/static/'))"""


@pytest.fixture
def sweep(server: Server) -> Iterator[str]:
    """A finished sweep of 2 optimizers × 2 learning rates × 2 seeds (4 table rows), written
    straight into the lab's store."""
    grid = [(o, lr, s) for o in OPTIMIZERS for lr in LEARNING_RATES for s in range(SEEDS)]
    runs = [
        {
            "label": f"{o} lr={lr} · seed {s}",
            "optimizer": {"name": o, "lr": lr},
            "seed": s,
            "spec": {"optimizer": {"name": o, "lr": lr}, "config": {"lr": lr}, "seed": s},
        }
        for o, lr, s in grid
    ]
    with session_scope(server.database_url) as session:
        experiment = create_experiment(session, name="first visit", spec={}, runs=runs)
        experiment_id, run_ids = experiment.id, [run.id for run in experiment.runs]
    for index, run_id in enumerate(run_ids):
        scale = 50 + 10 * index
        points = [("train_loss", s, 0.01 * s, 1 + math.exp(-s / scale)) for s in range(POINTS)]
        with session_scope(server.database_url) as session:
            claim_run(session, run_id, "first-visit-test")
            write_metrics(session, run_id, points)
            set_status(session, run_id, "succeeded", step=POINTS)
    yield experiment_id


def test_the_table_is_drawn_while_plotly_is_held_back(
    owner_page: tuple[Page, PageWatch], sweep: str
) -> None:
    page, _ = owner_page
    held: list[Route] = []

    def hold(route: Route) -> None:  # neither answered nor failed: pending until released
        held.append(route)

    page.route(PLOTLY, hold)
    # The "load" event waits for async scripts too, plotly.js included.
    page.goto(f"/experiments/{sweep}", wait_until="domcontentloaded")
    rows = page.locator("#comparison-rows tr")
    rows.first.wait_for()
    assert rows.count() == len(OPTIMIZERS) * len(LEARNING_RATES)
    assert page.locator("#runs tr").count() == len(OPTIMIZERS) * len(LEARNING_RATES) * SEEDS
    assert len(held) == 1, "the page did not ask for plotly.js"
    assert page.evaluate("() => window.Plotly === undefined")
    assert not page.evaluate(DRAWN_JS) and not page.evaluate(CHART_DRAWN_JS)

    held[0].continue_()
    page.wait_for_function(DRAWN_JS, timeout=60_000)
    assert page.evaluate(CHART_DRAWN_JS)
    legend = page.evaluate(LEGEND_JS)
    assert len(legend) == len(OPTIMIZERS), legend  # a sweep opens on each optimizer's winner


def test_a_second_visit_takes_every_file_from_the_cache(
    owner_page: tuple[Page, PageWatch], sweep: str
) -> None:
    page, _ = owner_page
    page.goto(f"/experiments/{sweep}")
    page.wait_for_function(DRAWN_JS, timeout=60_000)
    first = page.evaluate(FILES_JS)
    paths = {entry["path"] for entry in first}
    assert any(path.endswith("/vendor/plotly-cartesian.min.js") for path in paths), paths
    assert any(path.endswith("/js/experiment.js") for path in paths), paths
    assert all(path.startswith("/assets/") for path in paths), paths  # every file versioned

    page.goto(f"/experiments/{sweep}")
    page.wait_for_function(DRAWN_JS, timeout=60_000)
    second = page.evaluate(FILES_JS)
    assert {entry["path"] for entry in second} == paths
    fetched = [entry for entry in second if entry["transfer"] != 0]
    assert not fetched, f"asked the server again for {fetched}"
