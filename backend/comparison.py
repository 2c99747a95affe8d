"""The comparison of an experiment's optimizers: the one place that decides groups, labels,
colours and the statistics over seeds that the page, the report, the exports and the CLI show.

Groups. Runs whose specs differ only in `seed` and `label` form a group (one optimizer
configuration), with its label and colour (`backend.comparison_groups`).

Direction. A metric is better when lower unless its name says accuracy (`higher_is_better`).

Per run, of the chosen metric:
- final: the last recorded value; best: the lowest (highest, if higher is better) recorded;
- time to target, by *first crossing with linear interpolation*: the first recorded point
  (s₁, v₁) at or beyond the target V; if a recorded point (s₀, v₀) precedes it, the crossing
  is at s₀ + (V − v₀)/(v₁ − v₀)·(s₁ − s₀) and its seconds (training time, from the points'
  wall times) and examples seen (from the `examples_seen` series) are interpolated with the
  same fraction; if the first point already meets V, the crossing is that point.

Runs and their status:
- diverged and failed runs are left out of final and best (counted in `excluded`) and never
  reach the target (even if they crossed it before diverging: they did not deliver it);
- queued, running and cancelled runs contribute their latest values (`seeds.finished` says how
  many runs of the group have ended); a run without a point of the metric is `excluded`;
- runs that have not reached the target are counted in `never`, not dropped.

Statistics over the runs of a group: `mean`, sample standard deviation `sd` (n − 1), and the
95% confidence half-width `ci95` = t₀.₉₇₅,ₙ₋₁ · sd / √n with Student's t (both None for n < 2;
everything None for n = 0). `step_time_ms`: the median of the runs' median training step.

Winner (`best_of_optimizer`): per optimizer name, the group with the best mean of the
criterion (final or best); ties go to fewer mean steps to the target (none counts as
infinitely many), then to the earlier group; groups without a value never win.

Default target: the best final mean of the baseline groups (optimizers that are not K-FAC),
i.e. "how long does K-FAC take to reach the tuned baseline's result".
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from backend.comparison_groups import Group as Group
from backend.comparison_groups import group_runs as group_runs
from backend.optimizer_specs import is_kfac

Criterion = Literal["final", "best"]
Points = tuple[list[int], list[float], list[float]]  # steps, seconds, values of one series
ENDED = ("succeeded", "failed", "diverged", "cancelled")
BROKEN = ("failed", "diverged")  # left out of final / best, never reach the target


def higher_is_better(metric: str) -> bool:
    """The one rule for a metric's direction: accuracies grow, everything else (losses,
    errors, times) should shrink."""
    return "accuracy" in metric


# --- statistics ------------------------------------------------------------------------------


def statistic(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """mean, sample sd, Student-t 95% half-width and n of the finite `values` (plain floats:
    a group has a few seeds, for which numpy's per-call cost would dominate)."""
    data = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(data)
    if n == 0:
        return {"mean": None, "sd": None, "ci95": None, "n": 0}
    mean = math.fsum(data) / n
    if n == 1:
        return {"mean": mean, "sd": None, "ci95": None, "n": 1}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in data) / (n - 1))
    return {"mean": mean, "sd": sd, "ci95": t_quantile(0.975, n - 1) * sd / math.sqrt(n), "n": n}


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 1/2) of Student's t with integer `df`, by bisection on the exact
    CDF of Abramowitz & Stegun 26.7.3–26.7.4 (0.3 ms; kept, as a comparison asks for the same
    few degrees of freedom over and over)."""
    lo, hi = 0.0, 1.0
    while _t_central(hi, df) < 2 * p - 1:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, df) < 2 * p - 1 else (lo, mid)
    return (lo + hi) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for T ~ Student's t with `df` degrees of freedom (A&S 26.7.3–4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/π)(θ + sinθ cosθ (1 + 2/3 c² + 2·4/(3·5) c⁴ + ... up to c^{ν−3}))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sinθ (1 + 1/2 c² + 1·3/(2·4) c⁴ + ... up to c^{ν−2})
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


# --- per run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossing:
    step: float
    seconds: float | None
    examples: float | None


def first_crossing(
    steps: Sequence[float],
    times: Sequence[float],
    values: Sequence[float],
    target: float,
    higher: bool,
    examples: Sequence[float | None] | None = None,
) -> Crossing | None:
    """Where a series first reaches `target` (see the module docstring), or None. `examples`
    are the examples seen at `steps` (None where unknown)."""
    sign = -1.0 if higher else 1.0
    for i, value in enumerate(values):
        if sign * value <= sign * target:
            if i == 0:
                return Crossing(float(steps[0]), times[0], examples[0] if examples else None)
            fraction = (target - values[i - 1]) / (value - values[i - 1])
            return Crossing(
                steps[i - 1] + fraction * (steps[i] - steps[i - 1]),
                _between(times[i - 1], times[i], fraction),
                _between(examples[i - 1], examples[i], fraction) if examples else None,
            )
    return None


def _between(a: float | None, b: float | None, fraction: float) -> float | None:
    return None if a is None or b is None else a + fraction * (b - a)


@dataclass(frozen=True)
class RunOutcome:
    """What the store says of one run's metric (None: not recorded)."""

    final: float | None = None
    best: float | None = None
    crossing: Crossing | None = None
    step_time: float | None = None  # median seconds per training step


# --- the comparison --------------------------------------------------------------------------


def default_target(
    groups: Sequence[Group], outcomes: Mapping[str, RunOutcome], metric: str
) -> float | None:
    """The best final mean of the baseline groups (not K-FAC), or None without baselines."""
    means = [
        final["mean"]
        for group in groups
        if not is_kfac(group.optimizer)
        and (final := statistic([_usable(r, outcomes).final for r in _kept(group)]))["n"]
    ]
    if not means:
        return None
    return max(means) if higher_is_better(metric) else min(means)


def compare(
    groups: Sequence[Group],
    outcomes: Mapping[str, RunOutcome],
    metric: str,
    criterion: Criterion,
    target: float | None,
) -> dict[str, Any]:
    """The comparison answer: `{"metric", "target", "criterion", "groups": [...]}`."""
    rows = [_group_row(group, outcomes) for group in groups]
    _mark_winners(rows, criterion, higher_is_better(metric))
    return {"metric": metric, "target": target, "criterion": criterion, "groups": rows}


def _kept(group: Group) -> list[Any]:
    return [run for run in group.runs if run.status not in BROKEN]


def _usable(run: Any, outcomes: Mapping[str, RunOutcome]) -> RunOutcome:
    return outcomes.get(run.id) or RunOutcome()


def _group_row(group: Group, outcomes: Mapping[str, RunOutcome]) -> dict[str, Any]:
    kept = [_usable(run, outcomes) for run in _kept(group)]
    excluded = len(group.runs) - sum(o.final is not None for o in kept)
    crossings = [o.crossing for o in kept if o.crossing is not None]
    never = len(group.runs) - len(crossings)
    running = sum(
        run.status not in ENDED and _usable(run, outcomes).crossing is None for run in group.runs
    )

    def reached(values: list[float | None]) -> dict[str, Any]:
        return {**statistic(values), "never": never, "running": running}

    step_times = [o.step_time for o in (_usable(r, outcomes) for r in group.runs) if o.step_time]
    return {
        "key": group.key,
        "experiment_id": group.runs[0].experiment_id,
        "optimizer": group.optimizer,
        "config": group.config,
        "label": group.label,
        "colour": group.colour,
        "runs": [run.id for run in group.runs],
        "seeds": {
            "count": len(group.runs),
            "finished": sum(run.status in ENDED for run in group.runs),
        },
        "final": {**statistic([o.final for o in kept]), "excluded": excluded},
        "best": {**statistic([o.best for o in kept]), "excluded": excluded},
        "steps_to_target": reached([c.step for c in crossings]),
        "seconds_to_target": reached([c.seconds for c in crossings]),
        "examples_to_target": reached([c.examples for c in crossings]),
        "step_time_ms": 1000 * statistics.median(step_times) if step_times else None,
        "best_of_optimizer": False,
    }


def _mark_winners(rows: list[dict[str, Any]], criterion: Criterion, higher: bool) -> None:
    sign = -1.0 if higher else 1.0
    winners: dict[str, tuple[tuple[float, float, int], dict[str, Any]]] = {}
    for order, row in enumerate(rows):
        mean = row[criterion]["mean"]
        if mean is None:
            continue
        steps = row["steps_to_target"]["mean"]
        rank = (sign * mean, math.inf if steps is None else steps, order)
        if row["optimizer"] not in winners or rank < winners[row["optimizer"]][0]:
            winners[row["optimizer"]] = (rank, row)
    for _, row in winners.values():
        row["best_of_optimizer"] = True


# --- the flow, over any source of the runs' data ----------------------------------------------


class Source(Protocol):
    """Where a comparison reads the runs' metrics: the store (`StoreSource`) or the series a
    process holds (`SeriesSource`, the CLI's). Run ids without data are left out."""

    def extremes(self, run_ids: list[str], metric: str) -> dict[str, tuple[float, float, float]]:
        """`{run_id: (last, lowest, highest)}` of the metric."""

    def step_times(self, run_ids: list[str]) -> dict[str, float]:
        """`{run_id: median seconds of a training step}`."""

    def around_crossing(
        self, run_ids: list[str], metric: str, target: float, higher: bool
    ) -> dict[str, Points]:
        """Points of each run's metric that hold its first crossing of `target` and the point
        before it (the whole series will do)."""

    def examples_at(self, steps: dict[str, list[int]]) -> dict[str, dict[int, float]]:
        """`examples_seen` of each run at the given steps."""


def comparison(
    source: Source,
    groups: Sequence[Group],
    metric: str,
    criterion: Criterion = "final",
    target: float | None = None,
) -> dict[str, Any]:
    """The comparison of `groups` on `metric`; the target is given, or the default one."""
    runs = [run for group in groups for run in group.runs]
    run_ids, higher = [run.id for run in runs], higher_is_better(metric)
    step_times = source.step_times(run_ids)
    outcomes = {
        run_id: RunOutcome(
            final=last, best=high if higher else low, step_time=step_times.get(run_id)
        )
        for run_id, (last, low, high) in source.extremes(run_ids, metric).items()
    }
    if target is None:
        target = default_target(groups, outcomes, metric)
    if target is not None:
        healthy = [run.id for run in runs if run.status not in BROKEN]
        points = source.around_crossing(healthy, metric, target, higher)
        examples = source.examples_at({run: steps for run, (steps, _, _) in points.items()})
        for run_id, (steps, times, values) in points.items():
            seen = examples.get(run_id, {})
            crossing = first_crossing(
                steps, times, values, target, higher, [seen.get(step) for step in steps]
            )
            outcomes[run_id] = replace(outcomes[run_id], crossing=crossing)
    return compare(groups, outcomes, metric, criterion, target)
