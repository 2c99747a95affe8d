"""The experiment page of a 100-run sweep, first and second visit: this checkout against an
earlier revision, side by side in one run.

On a machine shared with other jobs a page's wall time says more about the load than about
the page; two versions measured in turn under the same load give a ratio that carries over.
Both revisions' APIs serve one PostgreSQL database holding `bench_comparison`'s experiment (5
optimizers × 5 learning rates × 4 seeds = 100 runs × --points steps of three series); headless
Chromium opens the experiment page on each in turn, `--rounds` times, alternating which goes
first, each time in a fresh browser context (an empty cache: a first visit) and then again in
the same context (a second visit), after one visit of each that is not counted (the APIs'
first answers: imports, connections, the comparison computed before it is cached). Measured
in the page (User Timing marks of frontend/js/experiment.js): navigation → comparison table
drawn (`kfac:table-drawn`) and → curves drawn (`kfac:curves-drawn`). Reported: the medians
of each, and this checkout's over the other revision's.

    python -m bench.bench_first_visit [--against REV] [--rounds 5] [--points 10000]
        [--server URL] [--database URL-OF-A-DATABASE-FILLED-BEFORE]

The other revision is exported with `git archive` into a temporary folder. Exits with status 1
if this checkout's first visit misses the goal (curves drawn within 1.5 s).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from bench.bench_comparison import NAME, fill
from bench.support import (
    ROOT,
    TOKEN,
    LoadAverage,
    add_database_options,
    filled_database,
    running_api,
)

CHROMIUM = "/usr/bin/chromium"
GOAL_MS = 1500.0
MARKS = {"table": "kfac:table-drawn", "curves": "kfac:curves-drawn"}
MARKS_JS = """() => Object.fromEntries(
  performance.getEntriesByType('mark').map((e) => [e.name, e.startTime]))"""


def export(revision: str, folder: Path) -> Path:
    """The tree of `revision` of this repository, written under `folder`."""
    archive = subprocess.run(
        ["git", "archive", revision], cwd=ROOT, capture_output=True, check=True
    ).stdout
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def visits(browser: Browser, base: str, experiment_id: str) -> dict[str, float]:
    """A first and a second visit of the experiment page in a new browser context."""
    context = browser.new_context(base_url=base, viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        # Signed in as the start-up URL leaves a browser, without loading a page (and its
        # files) before the measured visit.
        page.goto("/healthz")
        page.evaluate("token => localStorage.setItem('kfac-lab.token', token)", TOKEN)
        out = {}
        for visit in ("first", "second"):
            page.goto(f"/experiments/{experiment_id}")
            page.wait_for_function(
                f"() => performance.getEntriesByName('{MARKS['curves']}').length > 0",
                timeout=120_000,
            )
            marks = page.evaluate(MARKS_JS)
            out.update({f"{visit}_{key}": marks[mark] for key, mark in MARKS.items()})
        return out
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD~1", help="the other revision (git)")
    parser.add_argument("--rounds", type=int, default=5)
    add_database_options(parser, points=10_000)
    args = parser.parse_args(argv)
    filled = filled_database(args, NAME, fill)
    samples: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    with (
        filled as (url, experiment_id),
        tempfile.TemporaryDirectory(prefix="kfac-bench-visit-") as folder,
    ):
        other = export(args.against, Path(folder) / "other")
        homes = Path(folder) / "this-home", Path(folder) / "other-home"
        with (
            running_api(url, homes[0]) as (_, this_base),
            running_api(url, homes[1], root=other) as (_, other_base),
            sync_playwright() as playwright,
            LoadAverage() as load,
        ):
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            bases = {"this": this_base, "other": other_base}
            for base in bases.values():  # not measured: each API's first answers (imports,
                visits(browser, base, experiment_id)  # connections, its response cache)
            for round_ in range(args.rounds):
                order = ("this", "other") if round_ % 2 == 0 else ("other", "this")
                for name in order:
                    samples[name].append(visits(browser, bases[name], experiment_id))
            browser.close()
    return report(samples, args, str(load))


def report(samples: dict[str, list[dict[str, float]]], args: argparse.Namespace, load: str) -> int:
    medians = {
        name: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
        for name, runs in samples.items()
    }
    this, other = medians["this"], medians["other"]
    print(
        f"The experiment page of a 100-run sweep ({args.points:,} steps a run), headless "
        f"Chromium, median of {args.rounds} visits each, this checkout and {args.against} "
        "alternating.\n"
    )
    print(
        f"| navigation → | this checkout | {args.against} | ratio |\n| --- | ---: | ---: | ---: |"
    )
    for visit in ("first", "second"):
        for key, what in (("table", "comparison table drawn"), ("curves", "curves drawn")):
            name = f"{visit}_{key}"
            print(
                f"| {visit} visit: {what} | {this[name]:.0f} ms | {other[name]:.0f} ms | "
                f"{this[name] / other[name]:.2f} |"
            )
    met = this["first_curves"] <= GOAL_MS
    print(f"\n{load}")
    print(
        f"goal (first visit, curves drawn <= {GOAL_MS / 1000:.1f} s): {'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
