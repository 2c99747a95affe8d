"""K-FAC's defaults under control: seeded runs over variants and per-step traces on the race's
tasks (issue 16, docs/benchmarks.md "16, third pass" and "16, fourth pass").

Each variant is `name=JSON`, the JSON being `kfac.KFAC` keyword options on top of the defaults
(e.g. `lam01='{"damping": 0.1, "adapt_damping": false}'`); "sgd" is SGD with momentum 0.9 at
`--sgd-lr` for reference.  Every run trains a task of bench.kfac_vs_sgd (`--task`: the digits
classifier MLP `mlp_digits` by default, or the autoencoder `autoencoder_default` /
`autoencoder_sparse` at width `--scale`) at batch 256 unless `--batch`, with the race's seeding
(model, batch order and sampled targets from the seed), so the "defaults" variant repeats the
race's K-FAC runs step for step.  `--min-damping` changes the λ floor (kfac.damping.MIN_DAMPING)
for all K-FAC variants of the invocation.

The summary gives the training loss on all training examples (every `--every` steps) at a few
steps, per seed, and the run's medians of α, |μ| = 1 (the bound of kfac.quadratic) and λ, plus
"gap" (with `--every 1`): the median over steps of the training set's actual change of h
divided by the quadratic model's predicted change M(δ) − M(0) (ρ as the whole training set sees
it, where the optimizer's ρ is measured on the mini-batch that chose δ).  On an autoencoder it
also says when each seed left the mean-image plateau (the first evaluated step below 0.95 of
the loss of predicting the training set's mean image).  `--trace` prints every step of seed 0
instead.  `--shares` probes α of the model's share of the batch against the whole batch's;
`--layers` probes, at the evaluated steps, how far K-FAC's curvature along its own step is from
the exact Fisher's, layer by layer: ΔₗᵀFΔₗ / ∇ₗᵀΔₗ for Δₗ = F̆ₗ⁻¹∇ₗh alone (1 where F̆ is exact
and undamped along Δ, < 1 where damping dominates, ≫ 1 where F̆ underestimates the curvature).

    python -m bench.kfac_diagnose --steps 150 --seeds 3 --workers 2 defaults='{}' \
        eta0='{"weight_decay": 0}' [--task mlp_digits] [--scale 1] [--every 1] \
        [--min-damping 1e-4] [--batch 256] [--shares | --trace | --layers]
    python -m bench.kfac_diagnose --task autoencoder_default --scale 0.25 --steps 300 \
        --every 25 --seeds 12 defaults='{}'
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics

import torch

import kfac.damping
from bench.kfac_step_cost import first_rows
from bench.kfac_vs_sgd import TASKS, task_data, task_model
from kfac import KFAC
from kfac.losses import negative_log_likelihood, output_fisher_bilinear
from kfac.vectors import squared_norm

PLATEAU_SHARE = 0.95
"""An autoencoder has left the mean-image plateau below this share of the plateau's loss."""


def run(job) -> dict:
    """One seeded run of `steps` steps; per step the diagnostics and the training set's h."""
    name, options, seed, args = job
    torch.set_num_threads(1)
    kfac.damping.MIN_DAMPING = args.min_damping  # read at call time by levenberg_marquardt
    x, y = task_data(args.task)
    model, family = task_model(args.task, args.scale, seed)
    if name == "sgd":
        sgd = torch.optim.SGD(model.parameters(), lr=args.sgd_lr, momentum=0.9)
    else:
        optimizer = KFAC(model, family, seed=seed, **options)
        if args.shares:
            probe_shares(optimizer)
        if args.layers:
            probe_layers(optimizer, args.every)
    generator = torch.Generator().manual_seed(seed)

    def training_set() -> tuple[float, float]:
        """(mean NLL on all training examples, ‖θ‖²): h = NLL + ½η‖θ‖² for any η."""
        with torch.no_grad():
            nll = float(negative_log_likelihood(model(x), y, family).mean())
            return nll, squared_norm(list(model.parameters()))

    rows = []
    nll_before, norm_before = training_set()
    for k in range(1, args.steps + 1):
        idx = torch.randint(0, x.shape[0], (args.batch,), generator=generator)
        eta = 0.0 if name == "sgd" else optimizer.weight_decay(k)  # the η of this step's h
        if name == "sgd":
            sgd.zero_grad(set_to_none=True)
            loss = negative_log_likelihood(model(x[idx]), y[idx], family).mean()
            loss.backward()
            sgd.step()
            loss = loss.detach()
            diagnostics = {}
        else:
            loss = optimizer.step(x[idx], y[idx])
            diagnostics = {**optimizer.diagnostics, **getattr(optimizer, "probed", {})}
        if not torch.isfinite(loss):
            rows.append({"step": k, "nll": math.nan})
            break
        row = {"step": k, "batch_loss": float(loss), "nll": math.nan, **diagnostics}
        if k % args.every == 0 or k == args.steps:
            nll, norm = training_set()
            change = nll - nll_before + 0.5 * eta * (norm - norm_before)
            predicted = diagnostics.get("quadratic_model", math.nan)
            consecutive = args.every == 1 and predicted < 0
            row.update(nll=nll, gap=change / predicted if consecutive else math.nan)
            nll_before, norm_before = nll, norm
        rows.append(row)
    return {"name": name, "seed": seed, "rows": rows}


def probe_shares(optimizer: KFAC) -> None:
    """Record at every adaptive step, beside the step the optimizer takes: α of the model
    solved with the Fisher of the optimizer's share of the batch over α solved with the whole
    batch's (same Δ, δ₀, ∇h, λ), and the share of the batch's ΔᵀFΔ that its top tenth of
    examples carry (how concentrated the curvature along Δ is)."""
    chosen = optimizer._adaptive_coefficients
    optimizer.probed = {}

    def probing(inputs, gradient, preconditioned, previous):
        result = chosen(inputs, gradient, preconditioned, previous)
        size = inputs.shape[0]
        with first_rows(optimizer, inputs, size) as model:
            whole = optimizer._solve_step(inputs, gradient, preconditioned, previous)
            outputs, (along,) = model._output_directions(inputs, [preconditioned])
        per_example = torch.stack(
            [
                output_fisher_bilinear(
                    outputs[i : i + 1], along[i : i + 1], along[i : i + 1], optimizer.family
                )
                for i in range(size)
            ]
        )
        top = per_example.sort(descending=True).values[: size // 10].sum()
        optimizer.probed = {
            "alpha_share_over_whole": result[0] / whole.alpha,
            "top_tenth": float(top / per_example.sum()),
        }
        return result

    optimizer._adaptive_coefficients = probing


def probe_layers(optimizer: KFAC, every: int) -> None:
    """Record at every `every`-th adaptive step, per K-FAC layer l, ΔₗᵀFΔₗ / ∇ₗᵀΔₗ for the
    step's F̆⁻¹∇h restricted to layer l (F the exact Fisher on the quadratic model's rows): the
    exact curvature along the layer's part of the step over K-FAC's damped estimate of it."""
    chosen = optimizer._adaptive_coefficients
    optimizer.probed = {}
    params = optimizer.param_groups[0]["params"]

    def probing(inputs, gradient, preconditioned, previous):
        optimizer.probed = {}  # `--shares`, when on, replaces it inside `chosen`
        result = chosen(inputs, gradient, preconditioned, previous)
        if optimizer.counters["step"] % every == 0:
            for block in optimizer.blocks:
                own = {id(p) for p in block.parameters()}
                alone = [
                    d if id(p) in own else torch.zeros_like(d)
                    for p, d in zip(params, preconditioned, strict=True)
                ]
                fisher, _, linear = optimizer.quadratic.matrices(inputs, gradient, [alone], 0, 0)
                optimizer.probed[f"layer {block.name}"] = float(fisher[0, 0] / linear[0])
        return result

    optimizer._adaptive_coefficients = probing


def median(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else math.nan


def left_plateau_at(rows: list[dict], plateau: float) -> int | None:
    """The first evaluated step whose training loss is below PLATEAU_SHARE of the plateau's."""
    return next((w["step"] for w in rows if w["nll"] < PLATEAU_SHARE * plateau), None)


def summarise(results: list[dict], marks: list[int], plateau: float | None) -> None:
    left = " | left the plateau at (per seed) |" if plateau else " |"
    print(
        "| variant | training NLL at steps "
        + ", ".join(map(str, marks))
        + " (mean over seeds) | final, per seed | α | share of |μ| = 1 | λ | gap"
        + left
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if plateau else ""))
    names = list(dict.fromkeys(r["name"] for r in results))
    for name in names:
        runs = [r for r in results if r["name"] == name]
        at = []
        for mark in marks:
            values = [
                next((w["nll"] for w in r["rows"] if w["step"] == mark), math.nan) for r in runs
            ]
            at.append(f"{statistics.fmean(values):.4g}")
        finals = ", ".join(f"{r['rows'][-1]['nll']:.3g}" for r in runs)
        rows = [w for r in runs for w in r["rows"]]
        alpha = median(w.get("alpha", math.nan) for w in rows)
        bound = [abs(w["mu"]) >= 0.999 for w in rows if "mu" in w]
        share = sum(bound) / len(bound) if bound else math.nan
        damping = median(w.get("damping", math.nan) for w in rows)
        gap = median(w["gap"] for w in rows if "gap" in w)
        cells = f"| {name} | {' → '.join(at)} | {finals} | {alpha:.3g} | {share:.2f} "
        cells += f"| {damping:.2g} | {gap:.2f} |"
        if plateau:
            steps = [left_plateau_at(r["rows"], plateau) for r in runs]
            count = sum(s is not None for s in steps)
            cells += f" {count} of {len(runs)}: " + ", ".join(str(s or "—") for s in steps) + " |"
        print(cells)
    probed = [r for r in results if any("top_tenth" in w for w in r["rows"])]
    if probed:
        print(
            "\n| variant | steps | α (share) ÷ α (whole batch): 10%, 50%, 90% quantiles "
            "| top tenth's share of ΔᵀFΔ, median |"
        )
        print("|---|---|---|---|")
    for name in dict.fromkeys(r["name"] for r in probed):
        for first, last in ((1, 20), (21, 40), (41, 10**9)):
            rows = [
                w
                for r in probed
                if r["name"] == name
                for w in r["rows"]
                if first <= w["step"] <= last and "top_tenth" in w
            ]
            ratios = sorted(w["alpha_share_over_whole"] for w in rows)
            if not ratios:
                continue
            q = [ratios[int(f * (len(ratios) - 1))] for f in (0.1, 0.5, 0.9)]
            top = median(w["top_tenth"] for w in rows)
            print(
                f"| {name} | {first}–{min(last, rows[-1]['step'])} | "
                + ", ".join(f"{v:.2f}" for v in q)
                + f" | {top:.2f} |"
            )


def summarise_layers(results: list[dict]) -> None:
    """Per variant and layer, the median over seeds and steps of ΔₗᵀFΔₗ / ∇ₗᵀΔₗ in windows."""
    windows = ((1, 40), (41, 100), (101, 10**9))
    probed = [r for r in results if any(k.startswith("layer ") for w in r["rows"] for k in w)]
    for name in dict.fromkeys(r["name"] for r in probed):
        rows = [w for r in probed if r["name"] == name for w in r["rows"]]
        layers = list(dict.fromkeys(k for w in rows for k in w if k.startswith("layer ")))
        print(f"\n{name}: exact curvature along the layer's step over K-FAC's, ΔₗᵀFΔₗ / ∇ₗᵀΔₗ")
        print("| steps | " + " | ".join(layers) + " |")
        print("|---|" + "---|" * len(layers))
        for first, last in windows:
            window = [w for w in rows if first <= w["step"] <= last]
            if any(layers[0] in w for w in window):
                cells = [f"{median(w.get(k, math.nan) for w in window):.3g}" for k in layers]
                print(f"| {first}–{min(last, window[-1]['step'])} | " + " | ".join(cells) + " |")


def trace(result: dict) -> None:
    for w in result["rows"]:
        print(
            f"{w['step']:4d} batch {w.get('batch_loss', math.nan):.4f} train {w['nll']:.4f} "
            f"λ {w.get('damping', math.nan):.2e} γ {w.get('gamma', math.nan):.2e} "
            f"α {w.get('alpha', math.nan):.3g} μ {w.get('mu', math.nan):+.3f} "
            f"ρ {w.get('rho', math.nan):.2f} M {w.get('quadratic_model', math.nan):.3g} "
            f"gap {w.get('gap', math.nan):.2f} |δ| {w.get('update_norm', math.nan):.3g}"
        )


def mean_image_loss(task: str) -> float | None:
    """An autoencoder's plateau: the NLL of predicting the training set's mean image."""
    if not task.startswith("autoencoder"):
        return None
    x, _ = task_data(task)
    mean = x.mean(0).clamp(1e-6, 1 - 1e-6)
    return float(-(x * mean.log() + (1 - x) * (1 - mean).log()).sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="name=JSON of KFAC options, or sgd")
    parser.add_argument("--task", choices=list(TASKS), default="mlp_digits")
    parser.add_argument("--scale", type=float, default=1.0, help="the autoencoder's width")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=1, help="evaluate every N steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-damping", type=float, default=kfac.damping.MIN_DAMPING)
    parser.add_argument("--sgd-lr", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--trace", action="store_true", help="every step of seed 0")
    parser.add_argument("--shares", action="store_true", help="α of the share vs whole batch")
    parser.add_argument("--layers", action="store_true", help="curvature along Δ per layer")
    args = parser.parse_args()
    variants = [v.split("=", 1) if "=" in v else (v, "{}") for v in args.variants]
    seeds = 1 if args.trace else args.seeds
    jobs = [
        (name, json.loads(options), seed, args)
        for name, options in variants
        for seed in range(seeds)
    ]
    print(
        f"load average {os.getloadavg()[0]:.1f}; task {args.task} (width {args.scale:g}); "
        f"λ floor {args.min_damping:g}; batch {args.batch}"
    )
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run, jobs, chunksize=1)
    if args.trace:
        for result in results:
            print(f"\n{result['name']}")
            trace(result)
        return
    evaluated = {m for m in (25, 50, 100) if m % args.every == 0} | {args.steps}
    marks = sorted(m for m in evaluated if m <= args.steps)
    summarise(results, marks, mean_image_loss(args.task))
    summarise_layers(results)


if __name__ == "__main__":
    main()
