"""The experiment page with a big experiment: 10 runs × 10,000 points each (5 optimizers × 2
seeds, so the chart draws means and bands), seeded straight into the server's store, and a
curvature snapshot of the size a 4096-parameter probe gives (five 512 × 512 matrices).

The page records its own timings with the User Timing API: `kfac:data-ready` (the curves'
data arrived), `kfac:plotly-ready` (plotly.js ran), `kfac:curves-drawn` (the curves are on
screen and the page responds), one `kfac:live-update` measure per frame of live events and
`kfac:snapshot-drawn` (a snapshot's matrices fetched, decoded and drawn as heatmaps). The
figures, with the first visit's resource waterfall and the snapshot's bytes in both of the
API's encodings, are written to `<--output>/performance.json`; `bench/bench_page.py` turns them
into docs/benchmarks.md's section (targets on an idle machine: 1.5 s to interactive, 50 ms
per live update). Tests never assert wall-clock times: this one checks that the big page draws
every run, applies live updates, loads the module graph at once and draws the snapshot, and
records how long that took.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page

from backend.store.db import session_scope
from backend.store.results import write_metrics, write_snapshot
from backend.store.writes import claim_run, create_experiment, set_status
from tests.browser.support import PageWatch, Server, write_then_await_live_update

pytestmark = pytest.mark.browser

RUNS_PER_OPTIMIZER = 2
OPTIMIZERS = [
    {"name": "kfac"},
    {"name": "kfac_tridiag"},
    {"name": "sgd_momentum", "lr": 0.01, "momentum": 0.9},
    {"name": "adam", "lr": 0.001},
    {"name": "sgd", "lr": 0.1},
]
POINTS = 10_000
LIVE_BATCHES = 15
SNAPSHOT_SIDE = 512  # a 4096-parameter probe, pooled 8 × 8 into one cell
SNAPSHOT_MATRICES = (
    "exact",
    "kronecker",
    "kronecker_inverse",
    "block_diagonal_inverse",
    "block_tridiagonal_inverse",
)

RESOURCES_JS = """() => performance.getEntriesByType('resource').map((e) => ({
  name: e.name.replace(location.origin, ''), start: e.startTime, end: e.responseEnd,
  transfer_bytes: e.transferSize, body_bytes: e.decodedBodySize}))"""
MARKS_JS = """() => Object.fromEntries(
  performance.getEntriesByType('mark').map((e) => [e.name, e.startTime]))"""
PRELOADED_JS = """() => [...document.querySelectorAll('link[rel=modulepreload]')]
  .map((link) => new URL(link.href).pathname)"""
# Fetch one snapshot in an encoding, past the browser's cache, and make the rows a heatmap
# takes, as the page does.
FETCH_SNAPSHOT_JS = """async ([id, encoding]) => {
  const { decodeMatrix } = await import('/static/js/curvature.js');
  const headers = { Authorization: `Bearer ${localStorage.getItem('kfac-lab.token')}` };
  const start = performance.now();
  const url = `/api/snapshots/${id}?encoding=${encoding}`;
  const snapshot = await (await fetch(url, { headers, cache: 'no-store' })).json();
  const rows = Object.values(snapshot.matrices)
    .map((m) => (encoding === 'base64' ? decodeMatrix(m) : m));
  const ms = performance.now() - start;
  const entry = performance.getEntriesByType('resource').filter((e) => e.name.endsWith(url)).at(-1);
  return { ms, matrices: rows.length, side: rows[0].length,
           transfer_bytes: entry.transferSize, body_bytes: entry.decodedBodySize };
}"""


def loss(step: int, run: int) -> float:
    return 100 * math.exp(-step / (1500 + 200 * run)) + 1 + 0.05 * math.sin(step * (run + 1))


def curvature_like(rng: np.random.Generator) -> np.ndarray:
    """A symmetric matrix whose entries span many decades, as a Fisher's or its inverse's do."""
    half = rng.standard_normal((SNAPSHOT_SIDE, SNAPSHOT_SIDE)) * 10.0 ** rng.uniform(-6, 1)
    return (half + half.T) * np.exp(rng.standard_normal((SNAPSHOT_SIDE, SNAPSHOT_SIDE)))


@pytest.fixture
def big_experiment(server: Server) -> Iterator[tuple[str, list[str]]]:
    """10 running runs with 10,000 training-loss points each; finished again afterwards, so
    the lab's stale-run recovery never hands them to the worker."""
    runs = [
        {"label": f"{o['name']} seed {seed}", "optimizer": o, "seed": seed, "spec": {}}
        for o in OPTIMIZERS
        for seed in range(RUNS_PER_OPTIMIZER)
    ]
    with session_scope(server.database_url) as session:
        experiment = create_experiment(session, name="performance", spec={}, runs=runs)
        experiment_id, run_ids = experiment.id, [run.id for run in experiment.runs]
    for index, run_id in enumerate(run_ids):
        with session_scope(server.database_url) as session:
            claim_run(session, run_id, "performance-test")
            write_metrics(
                session,
                run_id,
                [("train_loss", s, s * 0.01, loss(s, index)) for s in range(1, POINTS + 1)],
            )
    try:
        yield experiment_id, run_ids
    finally:
        with session_scope(server.database_url) as session:
            for run_id in run_ids:
                set_status(session, run_id, "succeeded", step=POINTS)


def timing(page: Page, name: str) -> list[float]:
    return page.evaluate(
        "name => performance.getEntriesByName(name).map((e) => e.duration || e.startTime)", name
    )


def visit(page: Page, experiment_id: str) -> dict:
    """Open the page, wait for its curves; its marks and resource waterfall."""
    page.goto(f"/experiments/{experiment_id}")
    page.wait_for_function(
        "() => performance.getEntriesByName('kfac:curves-drawn').length > 0", timeout=30_000
    )
    return {"marks_ms": page.evaluate(MARKS_JS), "resources": page.evaluate(RESOURCES_JS)}


def seed_snapshot(server: Server, run_id: str) -> int:
    rng = np.random.default_rng(0)
    matrices = {name: curvature_like(rng) for name in SNAPSHOT_MATRICES}
    blocks = [[0, 128], [128, 256], [256, 384], [384, SNAPSHOT_SIDE]]
    averages = rng.uniform(0, 1, (4, 4))
    with session_scope(server.database_url) as session:
        return write_snapshot(
            session,
            run_id,
            POINTS,
            matrices,
            blocks,
            spectra={"layer": {"A": rng.uniform(0, 1, 64), "G": rng.uniform(0, 1, 64)}},
            relative_errors={"kronecker_vs_exact": averages},
            block_averages={name: averages for name in SNAPSHOT_MATRICES},
            extras={"layer_names": ["1", "2", "3", "4"]},
        )


def test_big_experiment_loads_fast_and_updates_cheaply(
    owner_page: tuple[Page, PageWatch],
    big_experiment: tuple[str, list[str]],
    server: Server,
    pytestconfig: pytest.Config,
) -> None:
    page, _ = owner_page
    experiment_id, run_ids = big_experiment
    first = visit(page, experiment_id)
    modules = {r["name"] for r in first["resources"] if "/js/" in r["name"]}
    assert modules and all(name.startswith("/assets/") for name in modules), modules
    assert modules <= set(page.evaluate(PRELOADED_JS)), "modules missing from modulepreload"
    cached = visit(page, experiment_id)  # plotly.js in the browser's cache now
    page.wait_for_function("() => document.getElementById('live-text').textContent === 'live'")
    points_js = (
        "document.getElementById('chart-train_loss').data.reduce((n, t) => n + t.x.length, 0)"
    )
    drawn = page.evaluate(points_js)

    def write_batch(step: int) -> None:  # one new point per run, as a worker's flush would send
        with session_scope(server.database_url) as session:
            for index, run_id in enumerate(run_ids):
                write_metrics(
                    session, run_id, [("train_loss", step, step * 0.01, loss(step, index))]
                )

    for batch in range(LIVE_BATCHES):
        write_then_await_live_update(page, lambda step=POINTS + 1 + batch: write_batch(step))
    page.wait_for_function(f"() => ({points_js}) > {drawn}")
    updates = timing(page, "kfac:live-update")

    snapshot_id = seed_snapshot(server, run_ids[0])
    page.locator("#curvature-panel").scroll_into_view_if_needed()  # it loads once seen
    page.wait_for_function(
        "() => performance.getEntriesByName('kfac:snapshot-drawn').length > 0", timeout=60_000
    )
    encodings = {
        encoding: page.evaluate(FETCH_SNAPSHOT_JS, [snapshot_id, encoding])
        for encoding in ("json", "base64")
    }

    figures = {
        "runs": len(run_ids),
        "points_per_run": POINTS,
        "points_drawn": drawn,
        "load_ms": {
            "first_visit": first["marks_ms"]["kfac:curves-drawn"],
            "cached": cached["marks_ms"]["kfac:curves-drawn"],
        },
        "first_visit": first,
        "live_update_ms": {
            "count": len(updates),
            "median": statistics.median(updates),
            "max": max(updates),
            "all": updates,
        },
        "snapshot": {
            "matrices": len(SNAPSHOT_MATRICES),
            "side": SNAPSHOT_SIDE,
            "drawn_ms": timing(page, "kfac:snapshot-drawn")[0],
            "encodings": encodings,
        },
    }
    output = Path(pytestconfig.getoption("--output")).absolute()
    output.mkdir(parents=True, exist_ok=True)
    (output / "performance.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "first_visit"}))

    assert len(updates) >= 3, figures
    assert drawn >= len(run_ids), figures
    for encoding in encodings.values():
        assert (encoding["matrices"], encoding["side"]) == (5, SNAPSHOT_SIDE), encodings
    assert page.evaluate("document.getElementById('heatmaps').dataset.step") == str(POINTS)
