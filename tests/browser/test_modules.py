"""The frontend's pure modules, run in the browser as the pages load them (no build, no Node):
the curve arithmetic, the comparison table's sorting and groups, the sensitivity charts' lines
and the escaping rules."""

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
    sd = 200**0.5  # sample sd of {20, 0} and of {30, 10}
    assert band == {
        "x": [1, 2, 3, 4],
        "mean": [10, 10, 20, 40],
        "sd": [0, pytest.approx(sd), pytest.approx(sd), 0],
        "lower": [10, 0, 10, 40],
        "upper": [10, 20, 30, 40],
        "n": [1, 2, 2, 1],
    }


def test_mean_is_drawn_only_where_every_seed_reached(page: Page) -> None:
    full, partial = run_module(
        page,
        "series.js",
        """m => {
          const band = m.meanBand([{x: [1, 3], y: [10, 30]}, {x: [2, 3, 4], y: [0, 10, 40]}]);
          const {full, partial} = m.coverage(band, 2);
          const none = m.coverage(band, 3);  // a third seed not started: no full part at all
          return [[full, none.full], [partial, none.partial]];
        }""",
    )
    # Both seeds only at x = 2 and 3 (indices 1..2): the mean's solid part; the dotted part
    # covers x = 1 and 4, joined to the solid ends.
    assert full == [[1, 3], [0, 0]]
    assert partial == [[10, 10, 20, 40], [10, 10, 20, 40]]


def test_smoothing_is_a_debiased_ema_that_keeps_the_input(page: Page) -> None:
    result = run_module(
        page,
        "series.js",
        "m => { const ys = [4, 4, 4]; return [m.smooth(ys, 0.9), m.smooth(ys, 0), ys]; }",
    )
    smoothed, unsmoothed, original = result
    assert smoothed == pytest.approx([4, 4, 4])  # debiased: a constant stays constant
    assert unsmoothed == original == [4, 4, 4]


GROUPS_JS = """[
  {key: "k", optimizer: "kfac", config: {}, label: "kfac", colour: "#0072B2", runs: ["a", "b"],
   final: {mean: 2.0, sd: 0.1, n: 2}, best_of_optimizer: true, step_time_ms: 30},
  {key: "s1", optimizer: "sgd_momentum", config: {lr: 0.01}, label: "sgd_momentum lr=0.01",
   colour: "#E69F00", runs: ["c"], final: {mean: 5.0, sd: null, n: 1}, best_of_optimizer: true,
   step_time_ms: 10},
  {key: "s2", optimizer: "sgd_momentum", config: {lr: 0.1}, label: "sgd_momentum lr=0.1",
   colour: "#F5C566", runs: ["d"], final: {mean: null, sd: null, n: 0}, best_of_optimizer: false,
   step_time_ms: null},
  {key: "s3", optimizer: "sgd_momentum", config: {lr: 0.001}, label: "sgd_momentum lr=0.001",
   colour: "#8A5F00", runs: ["e"], final: {mean: 7.0, sd: 0.5, n: 3}, best_of_optimizer: false,
   step_time_ms: 12},
]"""


def test_table_sorts_every_way_with_missing_values_last(page: Page) -> None:
    orders = run_module(
        page,
        "comparison.js",
        f"""m => {{
          const groups = {GROUPS_JS};
          const keys = (list) => list.map((g) => g.key);
          return [
            keys(m.sortGroups(groups, "final", "ascending")),
            keys(m.sortGroups(groups, "final", "descending")),
            keys(m.sortGroups(groups, "label", "ascending")),
            keys(m.sortGroups(groups, "cost", "descending", 10)),
          ];
        }}""",
    )
    assert orders == [
        ["k", "s1", "s3", "s2"],
        ["s3", "s1", "k", "s2"],
        ["k", "s3", "s1", "s2"],
        ["k", "s3", "s1", "s2"],
    ]


def test_curves_take_groups_from_the_comparison_winners_only_on_request(page: Page) -> None:
    all_groups, winners = run_module(
        page,
        "comparison.js",
        f"""m => [false, true].map((winners) => m.chartGroups({{groups: {GROUPS_JS}}}, winners)
          .map((g) => [g.label, g.colour, g.runIds]))""",
    )
    assert all_groups == [
        ["kfac", "#0072B2", ["a", "b"]],
        ["sgd_momentum lr=0.01", "#E69F00", ["c"]],
        ["sgd_momentum lr=0.1", "#F5C566", ["d"]],
        ["sgd_momentum lr=0.001", "#8A5F00", ["e"]],
    ]
    assert winners == [all_groups[0], all_groups[1]]


def test_sensitivity_has_a_line_per_optimizer_sorted_by_the_swept_value(page: Page) -> None:
    fields, lines = run_module(
        page,
        "sensitivity.js",
        f"""m => {{
          const groups = {GROUPS_JS};
          return [m.sweptFields(groups), m.sensitivityLines(groups, "lr", "final")];
        }}""",
    )
    assert fields == ["lr"]  # K-FAC sweeps nothing
    # lr=0.1 has no final value yet: left out; the line takes its winner's colour.
    assert lines == [
        {
            "name": "sgd_momentum",
            "colour": "#E69F00",
            "x": [0.001, 0.01],
            "y": [7, 5],
            "sd": [0.5, 0],
        }
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


def test_the_runs_table_names_a_run_s_ranks(page: Page) -> None:
    texts = run_module(
        page,
        "runs.js",
        """m => [{}, {processes: 2}, {nodes: 2, processes: 1}, {nodes: 3, processes: 2}]
          .map(m.worldText)""",
    )
    assert texts == ["", "2 processes", "2 nodes × 1 process", "3 nodes × 2 processes"]
