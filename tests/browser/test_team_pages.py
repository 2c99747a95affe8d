"""What a team meets day to day, in a real browser: the form posts the whole spec it shows
(custom runs included), seeds that are not numbers are named, the report says it downloads,
share links are listed and revoked one by one and a revoked link or a page without the lab's
token says what happened, the curvature section says what it loads and keeps its size, log
axes label every tick in full, one tooltip shows every run at an x, and the block view names
its real cell size.

Most tests seed finished experiments straight into the store (no training: the two cores stay
free); the form tests launch through the API as a user does and delete what they launched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect

from backend.spec import ExperimentSpec
from backend.store.db import session_scope
from backend.store.results import write_metrics, write_snapshot
from backend.store.writes import claim_run, create_experiment, heartbeat, set_status
from tests.browser.support import PageWatch, Screenshots, Server

pytestmark = pytest.mark.browser

STEPS = 200
SIDE = 1024  # the stored matrices are pooled to 512: 2 × 2 entries a cell
BLOCKS = [[0, 400], [400, 1024]]


@dataclass
class Seeded:
    experiment_id: str
    run_ids: list[str]


def loss(step: int, run: int) -> float:
    """From about 200 down to about 1: a loss across two decades."""
    return 200 * math.exp(-step / (20 + 10 * run)) + 1


@pytest.fixture(scope="module")
def seeded(server: Server) -> Seeded:
    """A finished comparison of two runs with curves over two decades and two snapshots."""
    runs = [
        {"label": name, "optimizer": {"name": name}, "seed": 0, "spec": {}}
        for name in ("kfac", "sgd_momentum")
    ]
    with session_scope(server.database_url) as session:
        experiment = create_experiment(session, name="team pages", spec={}, runs=runs)
        experiment_id, run_ids = experiment.id, [run.id for run in experiment.runs]
    rng = np.random.default_rng(0)
    for index, run_id in enumerate(run_ids):
        with session_scope(server.database_url) as session:
            claim_run(session, run_id, "team-pages-test")
            points = [("train_loss", s, s * 0.01, loss(s, index)) for s in range(1, STEPS + 1)]
            write_metrics(session, run_id, points)
            for step in (STEPS // 2, STEPS) if index == 0 else ():
                half = rng.standard_normal((SIDE, SIDE))
                matrix = half + half.T
                write_snapshot(
                    session,
                    run_id,
                    step,
                    {"exact": matrix, "kronecker": matrix * 0.9},
                    BLOCKS,
                    spectra={"0": {"A": rng.uniform(0.01, 10, 32), "G": rng.uniform(0, 1, 32)}},
                    relative_errors={"kronecker_vs_exact": rng.uniform(0, 1, (2, 2))},
                    block_averages={"exact": rng.uniform(0, 1, (2, 2))},
                    extras={"layer_names": ["0", "2"], "layer_labels": ["fc1 19→20", "fc2 20→26"]},
                )
            set_status(session, run_id, "succeeded", step=STEPS)
    return Seeded(experiment_id, run_ids)


def expected_refusals(watch: PageWatch, *codes: int) -> None:
    """The browser logs a refused request as a console error: drop those the test caused."""
    watch.errors[:] = [e for e in watch.errors if not any(f"status of {c}" in e for c in codes)]


def delete_experiment(page: Page, experiment_id: str) -> None:
    # From the list, not the experiment's own page: that page's requests still in flight would
    # answer 404 once the experiment is gone (a console error), and a busy machine makes it likely.
    page.goto("/")
    status = page.evaluate(
        """id => fetch(`/api/experiments/${id}`, { method: "DELETE", headers: { Authorization:
             `Bearer ${localStorage.getItem("kfac-lab.token")}` } }).then((r) => r.status)""",
        experiment_id,
    )
    assert status in (200, 204), status


def launch_request(request: Request) -> bool:
    return request.url.endswith("/api/experiments") and request.method == "POST"


# ---- the form ------------------------------------------------------------------------------


def test_a_custom_comparison_posts_the_whole_spec_it_shows(
    owner_page: tuple[Page, PageWatch],
) -> None:
    page, watch = owner_page
    page.goto("/new")
    page.click('.preset[data-name="custom"]')
    page.locator('[name="base.model.width_scale"]').fill("99")  # over its limit
    page.locator('[name="base.steps"]').fill("2")
    page.click("#launch")
    # The error sits at the form's own field, in the form's own words.
    error = page.locator('.field[data-path="base.model.width_scale"] .field-error')
    expect(error).not_to_be_empty()
    expect(page.locator("#form-error")).not_to_contain_text("discriminator")
    assert "discriminator" not in page.locator("body").inner_text()

    # Before launching, the form shows the network as it will be built and what a run costs.
    page.locator('[name="base.model.width_scale"]').fill("0.25")
    preview = page.locator("#preview")
    expect(preview).to_contain_text("784 → 250 → 125 → 62 → 8 → 62 → 125 → 250 → 784")
    expect(preview).to_contain_text("parameters")
    expect(preview).to_contain_text("of memory")
    expect(preview).to_contain_text("a step")
    with page.expect_request(
        lambda r: r.url.endswith("/api/experiments") and r.method == "POST"
    ) as sent:
        page.click("#launch")
    body = json.loads(sent.value.post_data)
    assert "overrides" not in body and "preset" not in body, body
    assert body["base"]["model"] == {"name": "autoencoder", "width_scale": 0.25}, body
    page.wait_for_url("**/experiments/*", wait_until="commit", timeout=30_000)
    delete_experiment(page, page.url.rstrip("/").split("/")[-1])
    expected_refusals(watch, 422)  # the over-limit width: launch and preview said no


def test_a_preset_edited_in_the_form_travels_whole_with_its_origin(
    owner_page: tuple[Page, PageWatch],
) -> None:
    page, _ = owner_page
    page.goto("/new")
    expect(page.locator('.preset[data-name="smoke"]')).to_have_attribute("aria-pressed", "true")
    page.locator('[name="base.steps"]').fill("3")
    with page.expect_request(
        lambda r: r.url.endswith("/api/experiments") and r.method == "POST"
    ) as sent:
        page.click("#launch")
    body = json.loads(sent.value.post_data)
    assert body.keys() == {"preset", "spec"} and body["preset"] == "smoke", body
    assert body["spec"]["base"]["steps"] == 3 and body["spec"]["optimizers"], body
    page.wait_for_url("**/experiments/*", wait_until="commit", timeout=30_000)
    delete_experiment(page, page.url.rstrip("/").split("/")[-1])


def test_seeds_that_are_not_whole_numbers_are_named(owner_page: tuple[Page, PageWatch]) -> None:
    page, _ = owner_page
    page.goto("/new")
    seeds = page.locator('[name="seeds"]')
    seeds.fill("0, one")
    count = page.locator("#run-count")
    expect(count).to_have_text('Seeds are whole numbers: "one" is not.')
    expect(count).to_have_class("legend-note error-text")
    seeds.fill("0, 1, 2")
    expect(count).to_contain_text("× 3 seeds")
    expect(count).not_to_have_class("legend-note error-text")


# ---- the experiment page -------------------------------------------------------------------


def test_the_report_says_it_downloads(owner_page: tuple[Page, PageWatch], seeded: Seeded) -> None:
    page, _ = owner_page
    page.goto(f"/experiments/{seeded.experiment_id}")
    button = page.locator("#report")
    expect(button).to_have_text("Download HTML report")
    with page.expect_download() as report:
        button.click()
    assert report.value.suggested_filename == f"kfac-lab-{seeded.experiment_id}.html"
    expect(page.locator("#toasts")).to_contain_text(
        f"Report downloaded: kfac-lab-{seeded.experiment_id}.html"
    )


def test_share_links_are_listed_and_revoked_one_by_one(
    owner_page: tuple[Page, PageWatch], seeded: Seeded, browser: Browser, browser_context_args: dict
) -> None:
    owner, owner_watch = owner_page
    owner.goto(f"/experiments/{seeded.experiment_id}")
    owner.click("#share")
    expect(owner.locator("#share-url")).not_to_have_value("")
    first_url = owner.locator("#share-url").input_value()
    rows = owner.locator("#share-links tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("never opened")

    stranger = browser.new_context(**browser_context_args)
    try:
        watch = PageWatch()
        page = watch.attach(stranger.new_page())
        page.goto(first_url)
        expect(page.locator("#experiment-name")).to_have_text("team pages")

        # Opening the box again lists the link as used; it mints no second link by itself.
        owner.click("#share")
        expect(rows).to_have_count(1)
        expect(rows.first).not_to_contain_text("never opened")
        owner.click("#new-share")
        expect(rows).to_have_count(2)
        second_url = owner.locator("#share-url").input_value()
        assert second_url != first_url

        used = rows.filter(has_not_text="never opened")
        expect(used).to_have_count(1)
        used.get_by_role("button", name="Revoke").click()
        expect(used).to_contain_text("revoked")
        expect(owner.locator("#share-links button", has_text="Revoke")).to_have_count(1)

        # The revoked link's page says so, with nothing left to press.
        page.reload()
        notice = page.locator("#notice")
        expect(notice).to_contain_text("This link no longer opens the experiment")
        expect(notice).to_contain_text("revoked")
        for control in ("#export-csv", "#export-png", "#report", "#runs"):
            expect(page.locator(control)).to_have_count(0)
        expected_refusals(watch, 403)
        watch.assert_clean()

        other = stranger.new_page()
        other.goto(second_url)
        expect(other.locator("#experiment-name")).to_have_text("team pages")
    finally:
        stranger.close()
    owner_watch.assert_clean()


def test_the_logo_of_a_shared_page_leads_to_a_page_that_says_why(
    owner_page: tuple[Page, PageWatch], seeded: Seeded, browser: Browser, browser_context_args: dict
) -> None:
    owner, _ = owner_page
    owner.goto(f"/experiments/{seeded.experiment_id}")
    owner.click("#share")  # lists the links (an earlier test left some live)
    rows = owner.locator("#share-links tr[data-id]")
    expect(rows.first).to_be_visible()
    before = rows.count()
    owner.click("#new-share")
    expect(rows).to_have_count(before + 1)
    share_url = owner.locator("#share-url").input_value()
    stranger = browser.new_context(**browser_context_args)
    try:
        watch = PageWatch()
        page = watch.attach(stranger.new_page())
        page.goto(share_url)
        expect(page.locator("#experiment-name")).to_have_text("team pages")
        page.click(".brand")
        notice = page.locator("#notice")
        expect(notice).to_contain_text("Sign in to this lab")
        expect(notice).to_contain_text("share link opens its one experiment only")
        assert "Bearer" not in page.locator("body").inner_text()
        expected_refusals(watch, 401)
        watch.assert_clean()
    finally:
        stranger.close()


class HeldSnapshots:
    """Holds every snapshot request of a page until `release`, then lets all through."""

    def __init__(self, page: Page):
        self.held: list[Route] = []
        self.released = False
        page.route("**/api/snapshots/*", self._handle)

    def _handle(self, route: Route) -> None:
        if self.released:
            route.continue_()
        else:
            self.held.append(route)

    def release(self) -> None:
        self.released = True
        for route in self.held:
            route.continue_()


def test_the_curvature_section_says_what_it_loads_and_keeps_its_size(
    owner_page: tuple[Page, PageWatch], seeded: Seeded
) -> None:
    page, _ = owner_page
    held = HeldSnapshots(page)
    page.goto(f"/experiments/{seeded.experiment_id}")
    page.locator("#curvature-panel").scroll_into_view_if_needed()
    loading = page.locator("#curvature-loading")
    expect(loading).to_contain_text(f"Loading the snapshot of step {STEPS}")
    expect(page.locator("#curvature-panel")).to_have_attribute("aria-busy", "true")
    expect(page.locator("#snapshot-run option").first).to_contain_text("kfac")
    height = page.locator("#heatmaps").bounding_box()["height"]
    assert height >= 400, f"the heatmaps take {height} px while loading"
    held.release()
    expect(loading).to_be_hidden()
    expect(page.locator("#curvature-panel")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#heatmaps")).to_have_attribute("data-step", str(STEPS))

    # Layers named as the model names them, with their shapes; the spectra name their steps.
    ticks = page.locator("#heat-exact .xtick text")
    expect(ticks).to_have_text(["fc1 19→20", "fc2 20→26"])
    spectrum = page.locator("#spectrum-0")
    expect(spectrum.locator(".gtitle")).to_contain_text("fc1 19→20")
    expect(spectrum.locator(".legend")).to_contain_text(f"step {STEPS}")

    # Hovering a cell names its layer pair, its indices within them and its signed value.
    box = page.locator("#heat-exact .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.9)
    hover = page.locator("#heat-hover")
    expect(hover).to_contain_text("fc2 20→26 × fc1 19→20")
    expect(hover).to_contain_text("within the layers (cells of 2 × 2)")
    signed = hover.locator("div").last.inner_text()
    assert signed.startswith("value: ") and float(signed.split(": ")[1].replace("−", "-"))

    # The block view's caption names its cell: a pair of layers, not the pooled entries.
    note = page.locator("#heatmap-note")
    expect(note).to_contain_text("averaged over 2 × 2 parameter cells")
    page.click('#heat-view button[data-view="blocks"]')
    expect(note).to_contain_text("each cell averages one pair of layers' block")
    expect(note).to_contain_text("s = 400, 624")
    expect(note).not_to_contain_text("2 × 2")


TICKS_JS = (
    """id => [...document.querySelectorAll(`#${id} .ytick text`)].map((t) => t.textContent)"""
)


def test_log_axes_label_every_tick_in_full_and_one_tooltip_shows_every_run(
    owner_page: tuple[Page, PageWatch], seeded: Seeded
) -> None:
    page, _ = owner_page
    page.goto(f"/experiments/{seeded.experiment_id}")
    page.wait_for_function(
        "() => performance.getEntriesByName('kfac:curves-drawn').length > 0", timeout=30_000
    )
    ticks = page.evaluate(TICKS_JS, "chart-train_loss")
    assert len(ticks) >= 3, ticks
    unreadable = [t for t in ticks if not math.isfinite(float(t.replace(",", "")))]
    assert not unreadable, f"tick labels {ticks}"
    values = [float(t.replace(",", "")) for t in ticks]
    assert values == sorted(values) and len(set(values)) == len(values), ticks

    box = page.locator("#chart-train_loss .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    hover = page.locator("#chart-train_loss .hoverlayer")
    expect(hover).to_contain_text("kfac")
    expect(hover).to_contain_text("sgd")


def test_keyboard_search_new_comparison_and_the_snapshot_slider(
    owner_page: tuple[Page, PageWatch], seeded: Seeded
) -> None:
    page, _ = owner_page
    page.goto("/")
    expect(page.locator("#experiments tr").first).to_be_visible()
    page.keyboard.press("/")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("n")  # typed into the search: not a shortcut there
    expect(page.locator("#search")).to_have_value("n")
    assert page.url.endswith("/")

    page.goto(f"/experiments/{seeded.experiment_id}")
    page.locator("#curvature-panel").scroll_into_view_if_needed()
    heatmaps = page.locator("#heatmaps")
    expect(heatmaps).to_have_attribute("data-step", str(STEPS))
    page.keyboard.press("ArrowLeft")
    expect(heatmaps).to_have_attribute("data-step", str(STEPS // 2))
    expect(page.locator("#snapshot-step")).to_have_text(f"step {STEPS // 2}")
    page.keyboard.press("ArrowRight")
    expect(heatmaps).to_have_attribute("data-step", str(STEPS))
    page.keyboard.press("n")
    page.wait_for_url("**/new")


BACKGROUND_JS = "selector => getComputedStyle(document.querySelector(selector)).backgroundColor"
# The colour a chart is drawn on: its own background, else (transparent) the first behind it.
PLOT_BG_JS = """id => {
  for (let node = document.querySelector(`#${id} .main-svg`); node; node = node.parentElement) {
    const colour = getComputedStyle(node).backgroundColor;
    if (colour !== "rgba(0, 0, 0, 0)" && colour !== "transparent") return colour;
  }
  return getComputedStyle(document.documentElement).backgroundColor;
}"""


def brightness(colour: str) -> float:
    """The mean of a CSS `rgb(...)` / `rgba(...)` colour's red, green and blue (0–255)."""
    channels = colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3]
    return sum(float(c) for c in channels) / 3


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_theme_follows_the_system_setting_plots_included(
    owner_page: tuple[Page, PageWatch], seeded: Seeded, screenshots: Screenshots, scheme: str
) -> None:
    page, _ = owner_page
    page.emulate_media(color_scheme=scheme)
    dark = scheme == "dark"
    page.goto("/")
    expect(page.locator("#experiments tr").first).to_be_visible()
    screenshots.save(f"list-{scheme}", page)
    page.goto("/new")
    expect(page.locator("#preview .network")).to_be_visible()
    screenshots.save(f"new-{scheme}", page)

    page.goto(f"/experiments/{seeded.experiment_id}")
    page.wait_for_function(
        "() => performance.getEntriesByName('kfac:curves-drawn').length > 0", timeout=30_000
    )
    page.locator("#curvature-panel").scroll_into_view_if_needed()
    expect(page.locator("#heatmaps")).to_have_attribute("data-step", str(STEPS))
    expect(page.locator("#spectrum-0 .legend")).to_be_visible()
    page.evaluate("() => window.scrollTo(0, 0)")
    screenshots.save(f"experiment-{scheme}", page)
    for colour in (
        page.evaluate(BACKGROUND_JS, "html"),
        page.evaluate(PLOT_BG_JS, "chart-train_loss"),
    ):
        assert (brightness(colour) < 60) if dark else (brightness(colour) > 200), (scheme, colour)
    tick = page.locator("#chart-train_loss .ytick text").first
    assert (brightness(tick.evaluate("t => getComputedStyle(t).fill")) > 150) == dark


def test_run_again_opens_the_form_filled_with_the_experiment_s_spec(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    spec = ExperimentSpec.model_validate(
        {
            "name": "again",
            "base": {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [8]}, "steps": 7},
            "optimizers": [{"name": "kfac"}, {"name": "adam", "lr": 0.01}],
            "seeds": [3, 4],
        }
    )
    runs = [
        {
            "label": r.display_label(),
            "optimizer": {"name": r.optimizer.name},
            "seed": r.seed,
            "spec": r.model_dump(mode="json"),
        }
        for r in spec.runs
    ]
    with session_scope(server.database_url) as session:
        experiment = create_experiment(
            session, name="again", spec=spec.model_dump(mode="json"), runs=runs
        )
        experiment_id = experiment.id
        for run in experiment.runs:
            set_status(session, run.id, "cancelled", step=0)
    page, _ = owner_page
    page.goto(f"/experiments/{experiment_id}")
    page.click("#clone")
    page.wait_for_url(f"**/new?from={experiment_id}")
    expect(page.locator('[name="name"]')).to_have_value("again")
    expect(page.locator('[name="base.steps"]')).to_have_value("7")
    expect(page.locator('[name="seeds"]')).to_have_value("3, 4")
    expect(page.locator(".optimizer-card header strong")).to_have_text(["kfac", "adam"])
    expect(page.locator('[name="optimizers.1.lr"]')).to_have_value("0.01")
    expect(page.locator("#run-count")).to_contain_text("4 runs in all")
    expect(page.locator("#preview .network")).to_contain_text("→ 8 →")


def test_a_queued_run_shows_its_place_and_a_running_run_its_time_left(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    runs = [
        {"label": label, "optimizer": {"name": "sgd"}, "seed": 0, "spec": {}, "total_steps": 200}
        for label in ("running run", "queued run")
    ]
    with session_scope(server.database_url) as session:
        experiment = create_experiment(session, name="waiting", spec={}, runs=runs)
        experiment_id, (running, queued) = experiment.id, [run.id for run in experiment.runs]
        claim_run(session, running, "queue-test")
        heartbeat(session, running, 50, "queue-test")
    page, _ = owner_page
    try:
        page.goto(f"/experiments/{experiment_id}")
        queued_row = page.locator(f'#runs tr[data-run-id="{queued}"]')
        expect(queued_row.locator(".queue-place")).to_have_text(
            re.compile(r"next in its queue|\d+ runs? ahead in its queue")
        )
        running_row = page.locator(f'#runs tr[data-run-id="{running}"]')
        expect(running_row).to_contain_text("left")
    finally:
        with session_scope(server.database_url) as session:
            set_status(session, running, "cancelled", step=50)
            set_status(session, queued, "cancelled", step=0)


def test_rename_and_delete_from_the_page_delete_asking_first(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    runs = [{"label": "sgd", "optimizer": {"name": "sgd"}, "seed": 0, "spec": {}}]
    with session_scope(server.database_url) as session:
        experiment = create_experiment(session, name="old name", spec={}, runs=runs)
        experiment_id = experiment.id
        set_status(session, experiment.runs[0].id, "cancelled", step=0)
    page, watch = owner_page
    page.goto(f"/experiments/{experiment_id}")
    expect(page.locator("#experiment-name")).to_have_text("old name")
    page.click("#rename")
    page.fill("#rename-input", "new <b>name</b>")
    page.keyboard.press("Enter")
    expect(page.locator("#experiment-name")).to_have_text("new <b>name</b>")
    page.reload()
    expect(page.locator("#experiment-name")).to_have_text("new <b>name</b>")

    page.click("#delete")
    expect(page.locator("#delete-box")).to_be_visible()
    page.click("#delete-keep")  # asked first: keeping it keeps it
    expect(page.locator("#delete-box")).to_be_hidden()
    page.reload()
    expect(page.locator("#experiment-name")).to_have_text("new <b>name</b>")
    page.click("#delete")
    page.click("#delete-confirm")
    page.wait_for_url(
        lambda url: url.rstrip("/").endswith(server.url.rstrip("/")) or url.endswith("/")
    )
    expect(page.locator(f'#experiments tr[data-id="{experiment_id}"]')).to_have_count(0)
    status = page.evaluate(
        """id => fetch(`/api/experiments/${id}`, { headers: { Authorization:
             `Bearer ${localStorage.getItem("kfac-lab.token")}` } }).then((r) => r.status)""",
        experiment_id,
    )
    assert status == 404
    expected_refusals(watch, 404)
