"""A self-contained HTML report of one experiment, made with the `plotly` Python package.

The report embeds plotly.js itself, so it opens offline and can be mailed or archived: the
comparison table (`backend.comparison`, on the training loss), the loss curves of every run,
each run's latest curvature snapshot as the paper's heatmaps (Fig. 2 and 3: |F|, |F̃|, |F − F̃|
and the three inverses, with layer boundaries), and the runs table. Groups, labels and colours
are the comparison's, as on the page. Every string from the store is HTML-escaped. Plotly's
Python package needs no torch.
"""

from __future__ import annotations

import html
from datetime import datetime

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sqlalchemy.orm import Session

from backend.comparison import Group, comparison, group_runs
from backend.comparison_sources import StoreSource
from backend.store.models import Experiment
from backend.store.queries import latest_snapshot, list_runs, read_metrics
from backend.store.snapshots import block_pool, decode_matrices

HEATMAPS = [
    ("|F|", "exact"),
    ("|F̃|", "kronecker"),
    ("|F − F̃|", None),
    ("|F̃⁻¹|", "kronecker_inverse"),
    ("|F̌⁻¹|", "block_diagonal_inverse"),
    ("|F̂⁻¹|", "block_tridiagonal_inverse"),
]
REPORT_SIDE = 160  # heatmap cells per side in the report, to keep the file small


def experiment_report(session: Session, experiment: Experiment) -> str:
    runs = list_runs(session, experiment.id)
    groups = group_runs(runs)
    table = comparison(StoreSource(session), groups, "train_loss")
    figures = [_curves(session, groups)]
    for run in runs:
        figure = _latest_heatmaps(session, run)
        if figure is not None:
            figures.append(figure)
    parts = [
        figure.to_html(full_html=False, include_plotlyjs=(i == 0), default_height="420px")
        for i, figure in enumerate(figures)
    ]
    title = html.escape(experiment.name)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title} · kfac-lab report</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left}</style></head><body>"
        f"<h1>{title}</h1><p>{html.escape(str(experiment.spec.get('description') or ''))}</p>"
        f"<p>Report made {datetime.now().isoformat(timespec='seconds')} by kfac-lab.</p>"
        f"{_comparison_table(table)}{_runs_table(groups)}{''.join(parts)}</body></html>"
    )


def _curves(session: Session, groups: list[Group]) -> go.Figure:
    names = ["train_loss", "test_loss"]
    runs = [(group, run) for group in groups for run in group.runs]
    series = read_metrics(session, [run.id for _, run in runs], names, max_points=2000)
    figure = make_subplots(rows=1, cols=2, subplot_titles=["training loss", "test loss"])
    for group, run in runs:
        for col, name in enumerate(names, start=1):
            points = series.get(run.id, {}).get(name)
            if not points or not points["x"]:
                continue
            figure.add_trace(
                go.Scatter(
                    x=points["x"],
                    y=points["y"],
                    mode="lines",
                    name=run.label,
                    legendgroup=run.id,
                    showlegend=col == 1,
                    line={"color": group.colour},
                ),
                row=1,
                col=col,
            )
    figure.update_xaxes(title_text="step")
    figure.update_yaxes(type="log")
    figure.update_layout(title="Loss curves", template="plotly_white")
    return figure


def _latest_heatmaps(session: Session, run) -> go.Figure | None:
    snapshot = latest_snapshot(session, run.id)
    if snapshot is None:
        return None
    matrices = decode_matrices(snapshot.payload)
    if "exact" in matrices and "kronecker" in matrices:
        matrices["difference"] = matrices["exact"] - matrices["kronecker"]
    panels = [(t, matrices.get(key or "difference")) for t, key in HEATMAPS]
    panels = [(t, m) for t, m in panels if m is not None]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels])
    size = max((stop for _, stop in snapshot.blocks), default=0)
    for col, (_, matrix) in enumerate(panels, start=1):
        pooled = block_pool(np.abs(matrix), REPORT_SIDE)
        scale = pooled.shape[0] / max(size, 1)
        figure.add_trace(
            go.Heatmap(
                z=np.log10(pooled + 1e-12),
                showscale=col == len(panels),
                colorscale="Viridis",
                colorbar={"title": "log₁₀"},
            ),
            row=1,
            col=col,
        )
        for start, _ in snapshot.blocks[1:]:
            for axis in ("x", "y"):
                position = start * scale - 0.5
                figure.add_shape(
                    type="line",
                    row=1,
                    col=col,
                    line={"color": "white", "width": 1},
                    **_boundary(axis, position, pooled.shape[0]),
                )
    figure.update_yaxes(autorange="reversed", showticklabels=False)
    figure.update_xaxes(showticklabels=False)
    figure.update_layout(
        title=f"Curvature of {run.label} at step {snapshot.step}", template="plotly_white"
    )
    return figure


def _boundary(axis: str, position: float, size: int) -> dict:
    if axis == "x":
        return {"x0": position, "x1": position, "y0": -0.5, "y1": size - 0.5}
    return {"y0": position, "y1": position, "x0": -0.5, "x1": size - 0.5}


def _comparison_table(comparison: dict) -> str:
    """One row per group: final and best training loss over seeds, time to the target."""
    target = comparison["target"]
    header = (
        "<tr><th>configuration</th><th>seeds (ended)</th><th>final (mean ± sd)</th>"
        "<th>best (mean ± sd)</th><th>steps to target</th><th>seconds to target</th>"
        "<th>median step (ms)</th></tr>"
    )
    rows = []
    for group in comparison["groups"]:
        winner = " ★" if group["best_of_optimizer"] else ""
        seeds = group["seeds"]
        cells = [
            f"{group['label']}{winner}",
            f"{seeds['count']} ({seeds['finished']})",
            _mean_sd(group["final"]),
            _mean_sd(group["best"]),
            _reached(group["steps_to_target"]),
            _reached(group["seconds_to_target"]),
            "" if group["step_time_ms"] is None else f"{group['step_time_ms']:.3g}",
        ]
        swatch = f"<span style='color:{group['colour']}'>■</span> "
        rows.append(
            f"<tr><td>{swatch}{html.escape(cells[0])}</td>"
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells[1:])
            + "</tr>"
        )
    aim = "none" if target is None else f"{target:.4g}"
    return (
        f"<h2>Comparison (training loss; target {aim}, ★ best of its optimizer)</h2>"
        f"<table>{header}{''.join(rows)}</table>"
    )


def _mean_sd(stat: dict) -> str:
    if stat["mean"] is None:
        return "–"
    sd = "" if stat["sd"] is None else f" ± {stat['sd']:.3g}"
    return f"{stat['mean']:.4g}{sd} (n={stat['n']})"


def _reached(stat: dict) -> str:
    never = f", {stat['never']} never" if stat["never"] else ""
    return f"{_mean_sd(stat)}{never}"


def _runs_table(groups: list[Group]) -> str:
    header = (
        "<tr><th>run</th><th>configuration</th><th>seed</th><th>status</th><th>step</th>"
        "<th>final metrics</th><th>reason</th></tr>"
    )
    rows = []
    for group, run in ((g, run) for g in groups for run in g.runs):
        final = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in (run.final_metrics or {}).items()
        )
        cells = [
            run.label,
            group.label,
            run.seed,
            run.status,
            run.step,
            final,
            run.error or "",
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<h2>Runs</h2><table>{header}{''.join(rows)}</table>"
