"""Aggregates over seeds: the runs of an experiment that differ only in their seed, summarised
step by step (mean, standard deviation, min and max), one group per optimizer setting.

Runs rarely record the same steps (another metric interval, a run still going, downsampling),
so each group's runs are put on one step grid first: the union of their recorded steps (or,
when that is longer than `max_points`, evenly spaced steps from it), each run interpolated
linearly inside its own step range and left out outside it. `n` says how many runs contributed
at each step, so a band over one run is recognisable as such.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from backend.store.models import Run

_NOT_COMPARED = ("seed", "label")  # run-spec fields that do not make a different setting


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs grouped by their spec without seed and label, in order of first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_setting_key(run), []).append(run)
    return list(groups.values())


def _setting_key(run: Run) -> str:
    setting = {k: v for k, v in (run.spec or {}).items() if k not in _NOT_COMPARED}
    if not setting:  # a run stored without its spec: compare what the row says
        setting = {"optimizer": run.optimizer}
    text = json.dumps(setting, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def aggregate(
    runs: Sequence[Run],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    max_points: int,
) -> list[dict[str, Any]]:
    """One summary per group of runs; `curves` maps run id to `{"x": steps, "y": values}`
    (runs without the metric are left out of their group)."""
    groups = group_runs(runs)
    labels = _labels([group[0] for group in groups])
    out = []
    for group, label in zip(groups, labels, strict=True):
        members = [run for run in group if curves.get(run.id, {}).get("x")]
        summary = _summarise([curves[run.id] for run in members], max_points)
        out.append(
            {
                "key": _setting_key(group[0]),
                "label": label,
                "optimizer": group[0].optimizer,
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


def _labels(representatives: Sequence[Run]) -> list[str]:
    """The optimizer's name, plus the hyper-parameters that tell apart groups sharing it."""
    optimizers = [run.optimizer or {} for run in representatives]
    labels = []
    for mine in optimizers:
        name = mine.get("name", "run")
        rivals = [other for other in optimizers if other.get("name", "run") == name]
        differing = sorted(
            key for key in mine if key != "name" and any(r.get(key) != mine[key] for r in rivals)
        )
        details = ", ".join(f"{key}={mine[key]}" for key in differing)
        labels.append(f"{name} ({details})" if details else name)
    # Groups that differ elsewhere than in the optimizer get a number to stay distinguishable.
    counts = Counter(labels)
    seen: Counter[str] = Counter()
    for i, label in enumerate(labels):
        if counts[label] > 1:
            seen[label] += 1
            labels[i] = f"{label} #{seen[label]}"
    return labels
