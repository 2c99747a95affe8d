"""Pages of issue 14 in a real browser: a tracked run's System panel (its script's CPU and
memory, drawn and growing live), the provenance tooltip of the runs table (git commit, host
and versions, a hostile value shown as text), and the new-comparison form's datasets marked
with whether the lab has their files, a launch without them explained."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import PageWatch, Screenshots, Server, wait_until_held
from tests.browser.test_comparison import FINAL_CELLS_JS, wait_until

pytestmark = pytest.mark.browser

HOSTILE = "<img src=x onerror=alert(1)><script>window.injected = 1</script>"
TRACES_JS = """id => (document.getElementById(id)?.data ?? []).map((trace) => [trace.x, trace.y])"""


def tracked_run(server: Server, **fields) -> dict:
    body = {"id": uuid.uuid4().hex, "experiment": f"byo {uuid.uuid4().hex[:6]}", **fields}
    return server.post("/api/tracking/runs", body)


def system_points(steps: range) -> list[list]:
    """What a script's sampler sends: CPU % and resident MB at the latest logged step."""
    return [
        point
        for step in steps
        for point in (
            ["cpu_percent", step, step * 5.0, 90.0 + step],
            ["rss_mb", step, step * 5.0, 500.0 + 10 * step],
        )
    ]


def drawn(page: Page, metric: str) -> list[list]:
    """The (x, y) of every trace of the chart of `metric`."""
    return page.evaluate(TRACES_JS, f"chart-{metric}")


def run_three_steps_and_end(server: Server, run: dict) -> None:
    """What a short tracked script does: train_loss 1, 1/2, 1/3 at steps 1–3, then its end."""
    metrics = f"/api/tracking/runs/{run['run_id']}/metrics"
    server.post(metrics, {"points": [["train_loss", s, s * 5.0, 1.0 / s] for s in range(1, 4)]})
    server.post(f"/api/tracking/runs/{run['run_id']}/end", {"status": "succeeded", "step": 3})


def test_the_system_panel_draws_a_tracked_run_s_cpu_and_memory_live(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    page, _ = owner_page
    run = tracked_run(server, label="my script")
    metrics = f"/api/tracking/runs/{run['run_id']}/metrics"
    server.post(metrics, {"points": [["train_loss", s, s * 5.0, 1.0 / s] for s in range(1, 4)]})
    server.post(metrics, {"points": system_points(range(1, 4))})

    page.goto(f"/experiments/{run['experiment_id']}")
    panel = page.locator("#system-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("h2")).to_have_text("System")
    page.wait_for_function(
        "() => ['chart-cpu_percent', 'chart-rss_mb']"
        ".every((id) => document.getElementById(id)?.data?.length)",
        polling=250,
        timeout=30_000,
    )
    assert drawn(page, "cpu_percent") == [[[1, 2, 3], [91.0, 92.0, 93.0]]]
    assert drawn(page, "rss_mb") == [[[1, 2, 3], [510.0, 520.0, 530.0]]]
    # No GPU on the script's machine: those charts stay hidden, not drawn empty.
    expect(page.locator("#chart-gpu_memory_mb")).to_be_hidden()
    expect(page.locator("#chart-gpu_percent")).to_be_hidden()

    expect(page.locator("#live-text")).to_have_text("live", timeout=30_000)
    server.post(metrics, {"points": system_points(range(4, 6))})
    page.wait_for_function(
        "() => document.getElementById('chart-cpu_percent').data[0].x.length === 5",
        polling=250,
        timeout=30_000,
    )
    assert drawn(page, "rss_mb")[0] == [[1, 2, 3, 4, 5], [510.0, 520.0, 530.0, 540.0, 550.0]]
    server.post(f"/api/tracking/runs/{run['run_id']}/end", {"status": "succeeded", "step": 5})


def test_the_provenance_tooltip_shows_where_a_run_ran_as_text(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    page, _ = owner_page
    provenance = {
        "kfac_lab": "0.1.0",
        "git_commit": "0123456789abcdef0123+dirty",
        "python": "3.11.7",
        "torch": f"2.13.0 {HOSTILE}",
        "cuda": "12.1",
        "host": HOSTILE,
        "plugins": {"kfac-lab-example-plugin": "0.1.0"},
    }
    run = tracked_run(server, label="remote", provenance=provenance)
    page.goto(f"/experiments/{run['experiment_id']}")
    row = page.locator(f'#runs tr[data-run-id="{run["run_id"]}"]')
    cell = row.locator("td[title]")
    expect(cell).to_have_attribute(
        "title",
        "kfac-lab 0.1.0 (git 0123456789ab)\nPython 3.11.7\n"
        f"torch 2.13.0 {HOSTILE}, CUDA 12.1\nhost {HOSTILE}\n"
        "plugins: kfac-lab-example-plugin 0.1.0",
    )
    expect(cell.locator(".muted")).to_have_text(HOSTILE)  # the host under the device, as text
    cell.hover()
    assert page.locator("#runs img, #runs script").count() == 0
    assert page.evaluate("() => window.injected") is None
    server.post(f"/api/tracking/runs/{run['run_id']}/end", {"status": "succeeded"})


def test_the_form_marks_datasets_without_files_and_explains_the_refusal(
    owner_page: tuple[Page, PageWatch], server: Server, screenshots: Screenshots
) -> None:
    page, watch = owner_page
    page.goto("/new")
    select = page.locator('select[name="base.dataset.name"]')
    synthetic = select.locator('option[value="synthetic"]')
    expect(synthetic).to_have_text("synthetic — built in")
    expect(synthetic).to_have_attribute("data-availability", "built_in")
    # This lab's data directory is empty: MNIST's files are missing.
    expect(select.locator('option[value="mnist"]')).to_have_text("mnist — files missing")
    note = page.locator('.field[data-path="base.dataset.name"] .availability')

    select.select_option("synthetic")
    expect(note).to_have_text("Built in: generated or shipped with the lab, always available.")
    select.select_option("mnist")
    expect(note).to_contain_text("kfac-lab data fetch mnist")
    expect(note).to_contain_text(str(server.home / "data"))
    expect(note).to_have_class("availability error-text")
    screenshots.save("new-dataset-missing", page.locator('fieldset[data-path="base.dataset"]'))
    page.locator('input[name="base.dataset.download"]').check()
    expect(note).to_contain_text("downloads them from the mirror")
    page.locator('input[name="base.dataset.download"]').uncheck()

    page.click("#launch")
    error = page.locator('.field[data-path="base.dataset.name"] .field-error')
    expect(error).to_contain_text("files missing")
    expect(error).to_contain_text("kfac-lab data fetch mnist")
    assert page.url.endswith("/new")
    watch.errors[:] = [e for e in watch.errors if "422" not in e]  # an expected refusal


def test_points_written_between_the_curves_read_and_the_experiment_read_are_drawn(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    """The page asks for the curves and the experiment at once. Here the experiment's answer is
    held back until the run, which had no points when the curves were read, has written them
    all and ended: those points are in neither answer, and no stream opens for a finished run,
    so the page must read the curves again (it opened the stream at the experiment's cursor
    and drew nothing before)."""
    page, watch = owner_page
    run = tracked_run(server, label="a short script")
    experiment = run["experiment_id"]
    held = []
    page.route(re.compile(rf"/api/experiments/{experiment}$"), lambda route: held.append(route))
    with page.expect_response(re.compile(rf"/api/experiments/{experiment}/metrics")):
        page.goto(f"/experiments/{experiment}")
    run_three_steps_and_end(server, run)
    wait_until_held(page, held)
    held[0].continue_()
    page.wait_for_function(
        "() => document.getElementById('chart-train_loss')?.data?.[0]?.x.length === 3",
        polling=250,
        timeout=30_000,
    )
    assert drawn(page, "train_loss") == [[[1, 2, 3], [1.0, 0.5, 1.0 / 3]]]
    expect(page.locator("#live-text")).to_have_text("finished")
    watch.assert_clean()


def test_a_run_that_ends_between_the_experiment_read_and_the_curves_read_is_shown_ended(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    """The mirror case: the curves' answer is held back until the run, active when the
    experiment was read, has written its points and ended. Its end is in neither answer (the
    experiment's says running, the curves' cursor is past the end), so the stream must start
    at the earlier cursor and replay it (the page streamed from the curves' cursor: the run
    stayed "running" and the stream open)."""
    page, watch = owner_page
    run = tracked_run(server, label="a short script")
    experiment = run["experiment_id"]
    held = []
    page.route(
        re.compile(rf"/api/experiments/{experiment}/metrics"), lambda route: held.append(route)
    )
    with page.expect_response(re.compile(rf"/api/experiments/{experiment}$")):
        page.goto(f"/experiments/{experiment}")
    run_three_steps_and_end(server, run)
    wait_until_held(page, held)
    for route in held:
        route.continue_()
    expect(page.locator("#live-text")).to_have_text("finished", timeout=30_000)
    assert drawn(page, "train_loss") == [[[1, 2, 3], [1.0, 0.5, 1.0 / 3]]]
    watch.assert_clean()


def test_a_comparison_read_before_the_run_ended_is_read_again(
    owner_page: tuple[Page, PageWatch], server: Server
) -> None:
    """The comparison answers first; the experiment's and the curves' answers are held back
    until the run has written its points and ended. Both then say it all, and no stream opens
    for a finished run, so the page must see from the comparison's own cursor that its table
    is older and read it again (it compared with the curves' cursor only: the final value
    stayed blank)."""
    page, watch = owner_page
    run = tracked_run(server, label="a short script")
    experiment = run["experiment_id"]
    held = []
    page.route(
        re.compile(rf"/api/experiments/{experiment}(/metrics.*)?$"),
        lambda route: held.append(route),
    )
    with page.expect_response(re.compile(rf"/api/experiments/{experiment}/comparison")):
        page.goto(f"/experiments/{experiment}")
    run_three_steps_and_end(server, run)
    wait_until_held(page, held, count=2)  # the experiment's and the curves'
    for route in held:
        route.continue_()
    expect(page.locator("#live-text")).to_have_text("finished", timeout=30_000)
    final_cells = f"({FINAL_CELLS_JS})()"
    wait_until(page, f"{final_cells}[0]?.includes('0.333')", timeout=30_000, show=final_cells)
    watch.assert_clean()
