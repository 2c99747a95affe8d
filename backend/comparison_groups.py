"""The groups of a comparison (`backend.comparison`): which runs are one optimizer
configuration, and the label and colour each group shows on every page, report and export.

Runs whose specs differ only in `seed` and `label` form a group, in the order of their first
run. A group's `config` is its run spec's `config` (the grid point of a sweep, see
`backend.sweeps`); runs without one (listed by hand, or recorded by a tracking script) get the
optimizer fields that differ between the groups of the same optimizer. The label is the
optimizer with its config ("sgd_momentum lr=0.01"); groups that would still share a label get
" #2", " #3", ... Colours: one base colour per optimizer name (Okabe–Ito, colour-blind safe),
and within an optimizer's groups shades from darker to lighter.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.sweeps import config_label

# The pages' colours per optimizer (Okabe–Ito); other names take the rest in turn.
BASE_COLOURS = {
    "kfac": "#0072B2",
    "kfac_tridiag": "#56B4E9",
    "sgd_momentum": "#E69F00",
    "adam": "#009E73",
    "sgd": "#CC79A7",
    "kfc": "#D55E00",
    "kfc_pre": "#000000",
}
SPARE_COLOURS = ("#F0E442", "#7F7F7F", "#8C564B", "#17BECF")
_NOT_COMPARED = ("seed", "label")  # run-spec fields that do not make another configuration


@dataclass
class Group:
    """Runs that differ only by seed."""

    key: str
    optimizer: str
    config: dict[str, Any]
    runs: list[Any]  # store Run rows (or anything with id, spec, optimizer, status)
    label: str = ""
    colour: str = ""
    experiment: str | None = None  # the experiment's name, when several are compared


def group_runs(
    runs: Sequence[Any], experiment_names: Mapping[str, str] | None = None
) -> list[Group]:
    """The runs' groups with their labels and colours, in order of first appearance. With
    `experiment_names` (experiment id to name) the runs may come from several experiments:
    groups never span two, and labels start with the experiment's name."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = setting_key(run)
        experiment = None
        if experiment_names is not None:
            experiment = experiment_names[run.experiment_id]
            key = f"{run.experiment_id}:{key}"
        if key not in groups:
            name = (run.optimizer or {}).get("name", "run")
            config = dict((run.spec or {}).get("config") or {})
            groups[key] = Group(key, name, config, [], experiment=experiment)
        groups[key].runs.append(run)
    found = list(groups.values())
    _label(found)
    return found


def setting_key(run: Any) -> str:
    setting = {k: v for k, v in (run.spec or {}).items() if k not in _NOT_COMPARED}
    if not setting:  # a run stored without its spec: compare what the row says
        setting = {"optimizer": run.optimizer}
    text = json.dumps(setting, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _label(groups: Sequence[Group]) -> None:
    """Set config (where no sweep gave one), label and colour of every group, together: a
    group's label and shade depend on its optimizer's other groups."""
    settings = [group.runs[0].optimizer or {} for group in groups]
    for group, mine in zip(groups, settings, strict=True):
        if not group.config:
            rivals = [s for s in settings if s.get("name") == mine.get("name")]
            differing = sorted(
                k for k in mine if k != "name" and any(r.get(k) != mine[k] for r in rivals)
            )
            group.config = {k: mine[k] for k in differing}
        label = config_label(group.optimizer, group.config)
        group.label = f"{group.experiment}: {label}" if group.experiment else label
    counts, seen = Counter(g.label for g in groups), Counter[str]()
    for group in groups:
        if counts[group.label] > 1:
            seen[group.label] += 1
            group.label = f"{group.label} #{seen[group.label]}"
    _colour(groups)


def _colour(groups: Sequence[Group]) -> None:
    spare = iter(SPARE_COLOURS * (1 + len(groups)))
    base: dict[str, str] = {}
    for group in groups:
        if group.optimizer not in base:
            base[group.optimizer] = BASE_COLOURS.get(group.optimizer) or next(spare)
    members = Counter(g.optimizer for g in groups)
    index: Counter[str] = Counter()
    for group in groups:
        count = members[group.optimizer]
        # From 40% towards black to 50% towards white: distinct shades of one hue.
        shade = 0.0 if count == 1 else -0.4 + 0.9 * index[group.optimizer] / (count - 1)
        index[group.optimizer] += 1
        group.colour = shade_colour(base[group.optimizer], shade)


def shade_colour(colour: str, shade: float) -> str:
    """`colour` mixed towards white (shade > 0) or black (shade < 0) by |shade|."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    target = 255 if shade > 0 else 0
    mixed = [round(c + (target - c) * abs(shade)) for c in rgb]
    return "#" + "".join(f"{c:02X}" for c in mixed)
