"""Aggregates over seeds: the runs of an experiment that differ only in their seed, summarised
step by step (mean, standard deviation, min and max), one group per optimizer setting. The
groups, their labels and colours are the comparison's (`backend.comparison.group_runs`).

Runs rarely record the same steps (another metric interval, a run still going, downsampling),
so each group's runs are put on one step grid first: the union of their recorded steps (or,
when that is longer than `max_points`, evenly spaced steps from it), each run interpolated
linearly inside its own step range and left out outside it. `n` says how many runs contributed
at each step and `seeds` how many runs the group has, so a mean over fewer seeds than the group
holds (past the slower seed's last step) is recognisable as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from backend.comparison import group_runs
from backend.store.models import Run


def aggregate(
    runs: Sequence[Run],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    max_points: int,
) -> list[dict[str, Any]]:
    """One summary per group of runs; `curves` maps run id to `{"x": steps, "y": values}`
    (runs without the metric are left out of their group)."""
    out = []
    for group in group_runs(runs):
        members = [run for run in group.runs if curves.get(run.id, {}).get("x")]
        summary = _summarise([curves[run.id] for run in members], max_points)
        out.append(
            {
                "key": group.key,
                "label": group.label,
                "colour": group.colour,
                "config": group.config,
                "optimizer": group.runs[0].optimizer,
                "seeds": len(group.runs),
                "run_ids": [run.id for run in members],
                **summary,
            }
        )
    return out


def _summarise(curves: list[Mapping[str, Sequence[float]]], max_points: int) -> dict[str, list]:
    if not curves:
        return {key: [] for key in ("step", "mean", "std", "min", "max", "n")}
    grid = np.unique(np.concatenate([np.asarray(c["x"], dtype=np.float64) for c in curves]))
    if len(grid) > max_points:
        grid = np.unique(grid[np.linspace(0, len(grid) - 1, max_points).round().astype(int)])
    values = np.full((len(curves), len(grid)), np.nan)
    for row, curve in zip(values, curves, strict=True):
        x, y = np.asarray(curve["x"], dtype=np.float64), np.asarray(curve["y"], dtype=np.float64)
        inside = (grid >= x[0]) & (grid <= x[-1])
        row[inside] = np.interp(grid[inside], x, y)
    # Every grid step lies in some run's range (the grid is made of recorded steps), so no
    # column is all-NaN and the nan-reductions never warn.
    return {
        "step": grid.astype(np.int64).tolist(),
        "mean": np.nanmean(values, axis=0).tolist(),
        "std": np.nanstd(values, axis=0).tolist(),
        "min": np.nanmin(values, axis=0).tolist(),
        "max": np.nanmax(values, axis=0).tolist(),
        "n": np.isfinite(values).sum(axis=0).tolist(),
    }
