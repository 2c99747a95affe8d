"""Benchmark of the experiment page in a real browser (issue 5's page goals, issue 13's sweep).

Runs tests/browser/test_performance.py — Debian's Chromium driven by Playwright against
`kfac-lab serve`, an experiment of 10 runs × 10,000 points and a curvature snapshot of five
512 × 512 matrices (a 4096-parameter probe) — `--repeat` times in fresh pytest processes, reads
the `performance.json` each run writes, and prints a Markdown section:

* load: from navigation to the curves drawn (`kfac:curves-drawn`), on a first visit (empty
  browser cache: plotly.js, 1.5 MB, downloaded and run) and on a second one; goal 1.5 s;
* live update: the browser's cost of one frame of live events (`kfac:live-update`), median,
  p95 and max over all frames of all repeats; goal < 50 ms;
* the curvature snapshot: bytes on the wire (gzip) and in the body, and fetch + decode time, for
  the API's `json` (nested lists) and `base64` (float32) encodings, and the time from the
  page's request to its six heatmaps drawn.

Then the same for tests/browser/test_comparison_performance.py — a sweep of 5 optimizers × 5
learning rates × 4 seeds = 100 running runs × 10,000 points — and a second section:

* table / load: from navigation to the comparison table drawn (`kfac:table-drawn`) and to the
  winners' curves drawn (`kfac:curves-drawn`), first and second visit; goal 1.5 s;
* live update with all 100 runs sending points: median, p95, max per frame; goal < 50 ms.

The figures of every repeat go to docs/bench/page.json (and docs/bench/comparison_page.json).
Medians over the repeats are reported: a first visit is one sample of a noisy quantity, so run
this on an idle machine.

    python -m bench.bench_page [--repeat 3] [--only page|comparison]

Exits with status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.support import ROOT, LoadAverage, percentile

TEST = "tests/browser/test_performance.py"
SWEEP_TEST = "tests/browser/test_comparison_performance.py"
OUTPUT = ROOT / "docs" / "bench" / "page.json"
SWEEP_OUTPUT = ROOT / "docs" / "bench" / "comparison_page.json"
GOALS = {"load_ms": 1500.0, "live_max_ms": 50.0}


def measure_once(test: str = TEST, figures: str = "performance.json") -> dict:
    """One run of a browser test; the figures file it writes."""
    with tempfile.TemporaryDirectory(prefix="bench-page-") as folder:
        command = [sys.executable, "-m", "pytest", "-q", "-x", test, "--output", folder]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{test} failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
        return json.loads((Path(folder) / figures).read_text())


def summarise(runs: list[dict]) -> dict:
    """Medians over the repeats; the live-update distribution over all their frames."""
    updates = [ms for run in runs for ms in run["live_update_ms"]["all"]]

    def median(pick) -> float:
        return statistics.median(pick(run) for run in runs)

    def encoding(name: str, key: str) -> float:
        return median(lambda run: run["snapshot"]["encodings"][name][key])

    return {
        "first_visit_ms": median(lambda run: run["load_ms"]["first_visit"]),
        "cached_ms": median(lambda run: run["load_ms"]["cached"]),
        "plotly_ready_ms": median(lambda run: run["first_visit"]["marks_ms"]["kfac:plotly-ready"]),
        "data_ready_ms": median(lambda run: run["first_visit"]["marks_ms"]["kfac:data-ready"]),
        "live_median_ms": statistics.median(updates),
        "live_p95_ms": percentile(updates, 0.95),
        "live_max_ms": max(updates),
        "live_frames": len(updates),
        "snapshot_drawn_ms": median(lambda run: run["snapshot"]["drawn_ms"]),
        **{
            f"{name}_{key}": encoding(name, key)
            for name in ("json", "base64")
            for key in ("transfer_bytes", "body_bytes", "ms")
        },
    }


def report(s: dict, repeats: int, load: str) -> int:
    load_goal = f"<= {GOALS['load_ms'] / 1000:.1f} s"
    live_goal = f"< {GOALS['live_max_ms']:.0f} ms"
    mb = 1e6
    rows = [
        ("first visit: navigation → curves drawn", f"{s['first_visit_ms']:.0f} ms", load_goal),
        (
            "  of which: data ready / plotly.js run",
            f"{s['data_ready_ms']:.0f} / {s['plotly_ready_ms']:.0f} ms",
            "",
        ),
        ("second visit (plotly.js cached)", f"{s['cached_ms']:.0f} ms", load_goal),
        (
            f"live update, median / p95 / max ({s['live_frames']} frames)",
            f"{s['live_median_ms']:.0f} / {s['live_p95_ms']:.0f} / {s['live_max_ms']:.0f} ms",
            f"max {live_goal}",
        ),
        (
            "snapshot as JSON lists: wire / body / fetch+parse",
            f"{s['json_transfer_bytes'] / mb:.1f} / {s['json_body_bytes'] / mb:.1f} MB / "
            f"{s['json_ms']:.0f} ms",
            "",
        ),
        (
            "snapshot as base64 float32: wire / body / fetch+decode",
            f"{s['base64_transfer_bytes'] / mb:.1f} / {s['base64_body_bytes'] / mb:.1f} MB / "
            f"{s['base64_ms']:.0f} ms",
            "",
        ),
        ("snapshot request → 6 heatmaps drawn (page)", f"{s['snapshot_drawn_ms']:.0f} ms", ""),
    ]
    ok = {
        "first visit": s["first_visit_ms"] <= GOALS["load_ms"],
        "second visit": s["cached_ms"] <= GOALS["load_ms"],
        "live update": s["live_max_ms"] < GOALS["live_max_ms"],
    }
    print(
        "10 runs × 10,000 points (5 optimizers × 2 seeds: means and bands), headless Chromium "
        f"1400 × 1000, median of {repeats} page loads; snapshot of five 512 × 512 matrices.\n"
    )
    print("| measure | value | goal |\n| --- | ---: | --- |")
    for name, value, goal in rows:
        print(f"| {name} | {value} | {goal} |")
    print(f"\n{load}")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in ok.items()))
    return 0 if all(ok.values()) else 1


def summarise_sweep(runs: list[dict]) -> dict:
    """The sweep's medians over the repeats; its live frames over all of them."""
    updates = [ms for run in runs for ms in run["live_update_ms"]["all"]]
    return {
        **{
            f"{key}_{visit}_ms": statistics.median(run[f"{key}_ms"][visit] for run in runs)
            for key in ("table", "load")
            for visit in ("first_visit", "cached")
        },
        "live_median_ms": statistics.median(updates),
        "live_p95_ms": percentile(updates, 0.95),
        "live_max_ms": max(updates),
        "live_frames": len(updates),
        "runs": runs[0]["runs"],
        "groups": runs[0]["groups"],
    }


def report_ratios(sweep: dict, page: dict) -> None:
    """The sweep's figures against the 10-run page's of the same run: a ratio does not move
    with the machine's load the way a wall time does."""
    pairs = [
        ("second visit, winners' curves drawn", sweep["load_cached_ms"], page["cached_ms"]),
        ("live update, median", sweep["live_median_ms"], page["live_median_ms"]),
        ("live update, max", sweep["live_max_ms"], page["live_max_ms"]),
    ]
    print("\n| 100-run sweep / 10-run page, same run | ratio |\n| --- | ---: |")
    for name, mine, theirs in pairs:
        print(f"| {name} | {mine / theirs:.2f} |")


def report_sweep(s: dict, repeats: int, load: str) -> int:
    rows = [
        (
            "first visit: navigation → table / winners' curves drawn",
            f"{s['table_first_visit_ms']:.0f} / {s['load_first_visit_ms']:.0f} ms",
        ),
        (
            "second visit (plotly.js cached): table / winners' curves",
            f"{s['table_cached_ms']:.0f} / {s['load_cached_ms']:.0f} ms",
        ),
        (
            f"live update of {s['runs']} running runs, median / p95 / max "
            f"({s['live_frames']} frames)",
            f"{s['live_median_ms']:.0f} / {s['live_p95_ms']:.0f} / {s['live_max_ms']:.0f} ms",
        ),
    ]
    goals = [f"<= {GOALS['load_ms'] / 1000:.1f} s", f"<= {GOALS['load_ms'] / 1000:.1f} s"]
    goals.append(f"max < {GOALS['live_max_ms']:.0f} ms")
    ok = {
        "first visit": s["load_first_visit_ms"] <= GOALS["load_ms"],
        "second visit": s["load_cached_ms"] <= GOALS["load_ms"],
        "live update": s["live_max_ms"] < GOALS["live_max_ms"],
    }
    print(
        f"\nA sweep: 5 optimizers × 5 learning rates × 4 seeds = {s['runs']} running runs × "
        f"10,000 points ({s['groups']} table rows; the curves show each optimizer's winner), "
        f"headless Chromium 1400 × 1000, median of {repeats} page loads.\n"
    )
    print("| measure | value | goal |\n| --- | ---: | --- |")
    for (name, value), goal in zip(rows, goals, strict=True):
        print(f"| {name} | {value} | {goal} |")
    print(f"\n{load}")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in ok.items()))
    return 0 if all(ok.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="page loads to take the median of")
    parser.add_argument("--only", choices=("page", "comparison"), help="just one of the two")
    args = parser.parse_args(argv)
    status, page = 0, None
    if args.only != "comparison":
        with LoadAverage() as load:
            runs = [measure_once() for _ in range(args.repeat)]
        summary = summarise(runs)
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
        status |= report(summary, args.repeat, str(load))
        page = summary
    if args.only != "page":
        figures = "comparison-performance.json"
        with LoadAverage() as load:
            runs = [measure_once(SWEEP_TEST, figures) for _ in range(args.repeat)]
        summary = summarise_sweep(runs)
        SWEEP_OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        SWEEP_OUTPUT.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
        status |= report_sweep(summary, args.repeat, str(load))
        if page is not None:
            report_ratios(summary, page)
    return status


if __name__ == "__main__":
    sys.exit(main())
