"""Comparisons in a real browser: a sweep launched from the form shows its comparison table
(one row per configuration, each optimizer's winner marked, every column sortable), the
winners-only switch and the sensitivity chart; two experiments overlay side by side on
/compare, which a share link cannot open.

The sweep is small (the smoke preset at 20 steps, SGD-m over two learning rates: 3 runs), so
the module stays within a few minutes on two loaded cores; the side-by-side experiments are
seeded straight into the store with known curves.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from backend.store.db import session_scope
from backend.store.results import write_metrics
from backend.store.writes import claim_run, create_experiment, set_status
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

FINISH_TIMEOUT_MS = 2 * WORKER_WAIT_MS  # three short runs, one after the other
ROWS = "#comparison-rows tr"
# Traces that have a legend entry (a group's mean or single line; not its band or dotted part).
LEGEND_JS = """id => (document.getElementById(id)?.data ?? [])
  .filter((t) => t.showlegend !== false).map((t) => t.name)"""
FINAL_CELLS_JS = """() => [...document.querySelectorAll('#comparison-rows tr')]
  .map((row) => row.children[2].textContent)"""


def wait_until(page: Page, expression: str, timeout: float = 60_000, show: str = "null") -> None:
    """Poll a JavaScript condition (on a timer: the page's animation frames are its own); on
    timeout, fail with what the JavaScript expression `show` gives then."""
    try:
        page.wait_for_function(f"() => ({expression})", polling=250, timeout=timeout)
    except PlaywrightTimeout:
        pytest.fail(f"not true after {timeout / 1000:.0f} s: {expression}\n{page.evaluate(show)}")


def wait_for_legend(page: Page, count: int) -> list[str]:
    """The training-loss chart's legend once it has `count` entries."""
    legend = f"({LEGEND_JS})('chart-train_loss')"
    wait_until(page, f"{legend}.length === {count}", show=legend)
    return page.evaluate(LEGEND_JS, "chart-train_loss")


@pytest.fixture(scope="module")
def swept(browser: Browser, browser_context_args: dict, server: Server) -> Iterator[Launched]:
    """The smoke preset with SGD-m swept over two learning rates, launched from the form."""
    fields = {
        "name": "lr sweep",
        "base.steps": "20",
        "base.eval_interval": "10",
        "base.snapshot_interval": "20",
    }
    context, watch, page = smoke_form(browser, browser_context_args, server, fields)
    count = page.locator("#run-count")
    expect(count).to_have_text("2 runs in all (2 configurations × 1 seed).")
    lr = page.locator('[name="optimizers.1.lr"]')  # SGD with momentum's learning rate
    expect(lr).to_have_value("0.01")
    lr.fill("0.01, 0.03")
    expect(count).to_have_text("3 runs in all (3 configurations × 1 seed).")
    page.locator('[name="seeds"]').fill("0, 1")
    expect(count).to_have_text("6 runs in all (3 configurations × 2 seeds).")
    page.locator('[name="seeds"]').fill("0")
    expect(count).to_have_text("3 runs in all (3 configurations × 1 seed).")
    yield launch(context, watch, page)
    context.close()


def test_sweep_shows_the_table_winners_and_sensitivity(
    swept: Launched, screenshots: Screenshots
) -> None:
    page = swept.page
    expect(page.locator(ROWS)).to_have_count(3)
    labels = page.locator(ROWS).evaluate_all("rows => rows.map((r) => r.dataset.label)")
    assert labels == ["kfac", "sgd_momentum lr=0.01", "sgd_momentum lr=0.03"], labels
    # Every run finished: one winner per optimizer, its row marked.
    expect(page.locator(f"{ROWS} td.num", has_text=re.compile(r"^1 / 1$"))).to_have_count(
        3, timeout=FINISH_TIMEOUT_MS
    )
    expect(page.locator(f"{ROWS}.winner .winner-mark")).to_have_count(2)
    expect(page.locator(f'{ROWS}[data-label="kfac"] .winner-mark')).to_have_count(1)

    # The sensitivity chart of lr: one line (SGD-m, K-FAC sweeps nothing) over both values,
    # on a log axis.
    wait_until(
        page,
        "document.getElementById('sensitivity-lr')?.data?.[0]?.x.length === 2",
        show="document.getElementById('sensitivity')?.innerHTML.slice(0, 500)",
    )
    chart = page.evaluate(
        """() => { const node = document.getElementById('sensitivity-lr');
          return [node.data.map((t) => [t.name, t.x]), node.layout.xaxis.type]; }"""
    )
    assert chart == [[["sgd_momentum", [0.01, 0.03]]], "log"], chart

    # A sweep draws each optimizer's winner first; the switch shows every configuration.
    switch = page.locator("#winners-only")
    expect(switch).to_be_checked()
    wait_for_legend(page, 2)
    switch.uncheck()
    names = wait_for_legend(page, 3)
    assert sorted(names) == sorted(labels), names
    screenshots.save("comparison-sweep", page.locator("#comparison-panel"))
    swept.watch.assert_clean()


def test_every_column_sorts_both_ways(swept: Launched) -> None:
    page = swept.page
    expect(page.locator(f"{ROWS} td.num", has_text=re.compile(r"^1 / 1$"))).to_have_count(
        3, timeout=FINISH_TIMEOUT_MS
    )
    header = page.locator("#comparison-head th")
    titles = header.evaluate_all("cells => cells.map((c) => c.textContent)")
    assert len(titles) == 8, titles
    for index in range(len(titles)):
        header.nth(index).locator("button").click()
        expect(header.nth(index)).to_have_attribute("aria-sort", "ascending")
        header.nth(index).locator("button").click()
        expect(header.nth(index)).to_have_attribute("aria-sort", "descending")

    final = page.locator('#comparison-head th[data-key="final"]')
    final.locator("button").click()
    expect(final).to_have_attribute("aria-sort", "ascending")
    means = [float(text.split("±")[0]) for text in page.evaluate(FINAL_CELLS_JS)]
    assert means == sorted(means), means
    final.locator("button").click()
    expect(final).to_have_attribute("aria-sort", "descending")
    means = [float(text.split("±")[0]) for text in page.evaluate(FINAL_CELLS_JS)]
    assert means == sorted(means, reverse=True), means
    swept.watch.assert_clean()


def test_a_bad_value_in_a_sweep_is_named_at_its_field(owner_page: tuple[Page, PageWatch]) -> None:
    page, watch = owner_page
    page.goto("/new")
    expect(page.locator('.preset[data-name="smoke"]')).to_have_attribute("aria-pressed", "true")
    page.locator('[name="optimizers.1.lr"]').fill("0.01, -0.03")
    expect(page.locator("#run-count")).to_have_text("3 runs in all (3 configurations × 1 seed).")
    page.click("#launch")
    # The API names `optimizers.1.sweep.lr.1`; the form puts it by the lr field it came from.
    error = page.locator('.field[data-path="optimizers.1.lr"] .field-error')
    expect(error).to_contain_text("greater than 0")
    assert page.url.endswith("/new")
    watch.errors[:] = [e for e in watch.errors if "422" not in e]  # the refusal just asked for


# ---- side by side ----------------------------------------------------------------------------


def seed_experiment(server: Server, name: str, scale: float) -> str:
    """A finished experiment of K-FAC and SGD-m, two seeds each, with known loss curves."""
    optimizers = [{"name": "kfac"}, {"name": "sgd_momentum", "lr": 0.01, "momentum": 0.9}]
    runs = [
        {"label": f"{o['name']} · seed {seed}", "optimizer": o, "seed": seed, "spec": {}}
        for o in optimizers
        for seed in (0, 1)
    ]
    with session_scope(server.database_url) as session:
        experiment = create_experiment(session, name=name, spec={}, runs=runs)
        experiment_id, run_ids = experiment.id, [run.id for run in experiment.runs]
    for index, run_id in enumerate(run_ids):
        points = [
            ("train_loss", s, 0.1 * s, scale * (1 + index) * math.exp(-s / 20) + 1)
            for s in range(1, 41)
        ]
        with session_scope(server.database_url) as session:
            claim_run(session, run_id, "comparison-test")
            write_metrics(session, run_id, points)
            set_status(session, run_id, "succeeded", step=40)
    return experiment_id


@pytest.fixture(scope="module")
def pair(server: Server) -> tuple[tuple[str, str], tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    names = (f"alpha {tag}", f"beta {tag}")
    scales = (10, 20)
    return tuple((seed_experiment(server, n, s), n) for n, s in zip(names, scales, strict=True))


def test_two_experiments_overlay_side_by_side(
    owner_page: tuple[Page, PageWatch], pair, screenshots: Screenshots
) -> None:
    page, _ = owner_page
    (first, first_name), (second, second_name) = pair
    page.goto("/")
    compare = page.locator("#compare")
    expect(compare).to_be_disabled()
    page.locator(f'#experiments tr[data-id="{first}"] input.pick').check()
    expect(compare).to_be_disabled()  # one experiment is no comparison
    page.locator(f'#experiments tr[data-id="{second}"] input.pick').check()
    expect(compare).to_be_enabled()
    compare.click()
    page.wait_for_url("**/compare?ids=*")
    assert urlsplit(page.url).query == f"ids={first},{second}"

    expect(page.locator(ROWS)).to_have_count(4)
    labels = page.locator(ROWS).evaluate_all("rows => rows.map((r) => r.dataset.label)")
    assert sum(label.startswith(first_name) for label in labels) == 2, labels
    assert sum(label.startswith(second_name) for label in labels) == 2, labels
    expect(page.locator("#compare-experiments a")).to_have_count(2)
    # Every group's curve, named with its experiment (no sweep: all groups, no winners filter).
    names = wait_for_legend(page, 4)
    assert sum(first_name in name for name in names) == 2, names
    assert sum(second_name in name for name in names) == 2, names
    screenshots.save("compare", page)


def test_a_share_link_cannot_open_the_side_by_side_page(
    owner_page: tuple[Page, PageWatch],
    pair,
    browser: Browser,
    browser_context_args: dict,
) -> None:
    page, _ = owner_page
    (first, _), (second, _) = pair
    page.goto(f"/experiments/{first}")
    link = page.evaluate(
        """id => fetch(`/api/experiments/${id}/share`, { method: "POST", headers: {
          Authorization: `Bearer ${localStorage.getItem('kfac-lab.token')}` } })
          .then((r) => r.json())""",
        first,
    )
    share = urlsplit(link["url"])
    # The share link's credential, wherever it travels (query or fragment), on the compare page.
    query = "&".join(filter(None, [f"ids={first},{second}", share.query]))
    url = f"/compare?{query}" + (f"#{share.fragment}" if share.fragment else "")

    stranger = browser.new_context(**browser_context_args)  # no admin token anywhere
    try:
        watch = PageWatch()
        visitor = watch.attach(stranger.new_page())
        visitor.goto(url)
        expect(visitor.locator("#compare-title")).to_have_text("Cannot compare these experiments")
        expect(visitor.locator(f"{ROWS} .error-text")).to_have_count(1)
        expect(visitor.locator(f"{ROWS}[data-label]")).to_have_count(0)
        assert visitor.evaluate(LEGEND_JS, "chart-train_loss") == []
        # The refusal itself is the browser's console error of the failed request.
        watch.errors[:] = [e for e in watch.errors if not re.search(r"\b40[13]\b", e)]
        watch.assert_clean()
    finally:
        stranger.close()
