"""Why K-FAC with its defaults loses on the digits MLP: controlled runs and per-step traces
(issue 16, docs/benchmarks.md "16, third pass").

Each variant is `name=JSON`, the JSON being `kfac.KFAC` keyword options on top of the defaults
(e.g. `lam01='{"damping": 0.1, "adapt_damping": false}'`); "sgd" is SGD with momentum 0.9 at
`--sgd-lr` for reference.  Every run trains the race's digits classifier MLP (bench.kfac_vs_sgd
task `mlp_digits`: 784-256-128-10, tanh, Glorot, cross-entropy, 4,000 offline digits, batch 256
unless `--batch`) with the race's seeding (model, batch order and sampled targets from the
seed), so the "defaults" variant repeats the race's K-FAC runs step for step.  `--min-damping`
changes the λ floor (kfac.damping.MIN_DAMPING) for all K-FAC variants of the invocation.

The summary gives the training loss on all 4,000 examples at a few steps, per seed, and the
run's medians of α, |μ| = 1 (the bound of kfac.quadratic) and λ, plus "gap": the median over
steps of the training set's actual change of h divided by the quadratic model's predicted
change M(δ) − M(0) (ρ as the whole training set sees it, where the optimizer's ρ is measured
on the mini-batch that chose δ).  `--trace` prints every step of seed 0 instead.
The quadratic model's share of the batch is chosen by `quadratic_sampling` (the defaults: by
curvature for this classifier; `first='{"quadratic_sampling": "first"}'` for the batch's first
quarter).  The section's `--stratify TOP` runs used a prototype of the curvature rows that
reordered the batch outside kfac/; kfac.quadratic.stratified_rows replaced it.

    python -m bench.kfac_diagnose --steps 150 --seeds 3 --workers 2 defaults='{}' \
        eta0='{"weight_decay": 0}' [--min-damping 1e-4] [--batch 256] \
        [--shares | --trace]
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
from bench.kfac_vs_sgd import task_data, task_model
from kfac import KFAC
from kfac.losses import negative_log_likelihood, output_fisher_bilinear
from kfac.quadratic import solve_step_coefficients
from kfac.vectors import squared_norm

TASK = "mlp_digits"

def run(job) -> dict:
    """One seeded run of `steps` steps; per step the diagnostics and the training set's h."""
    name, options, seed, steps, floor, sgd_lr, shares, batch = job
    torch.set_num_threads(1)
    kfac.damping.MIN_DAMPING = floor  # read at call time by levenberg_marquardt
    x, y = task_data(TASK)
    model, family = task_model(TASK, 1.0, seed)
    if name == "sgd":
        sgd = torch.optim.SGD(model.parameters(), lr=sgd_lr, momentum=0.9)
    else:
        optimizer = KFAC(model, family, seed=seed, **options)
        if shares:
            probe_shares(optimizer)
    generator = torch.Generator().manual_seed(seed)

    def training_set() -> tuple[float, float]:
        """(mean NLL on all training examples, ‖θ‖²): h = NLL + ½η‖θ‖² for any η."""
        with torch.no_grad():
            nll = float(negative_log_likelihood(model(x), y, family).mean())
            return nll, squared_norm(list(model.parameters()))

    rows = []
    nll_before, norm_before = training_set()
    for k in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (batch,), generator=generator)
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
        nll, norm = training_set()
        change = nll - nll_before + 0.5 * eta * (norm - norm_before)
        predicted = diagnostics.get("quadratic_model", math.nan)
        rows.append(
            {
                "step": k,
                "batch_loss": float(loss),
                "nll": nll,
                "gap": change / predicted if predicted < 0 else math.nan,
                **diagnostics,
            }
        )
        nll_before, norm_before = nll, norm
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
        group = optimizer.param_groups[0]
        directions = [preconditioned] if previous[0] is None else [preconditioned, previous]
        size = inputs.shape[0]
        whole = optimizer.quadratic.matrices(
            inputs, size, gradient, directions, group["weight_decay"], group["damping"]
        )
        outputs, (along,) = optimizer.quadratic._output_directions(inputs, size, [preconditioned])
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
            "alpha_share_over_whole": result[0] / solve_step_coefficients(*whole).alpha,
            "top_tenth": float(top / per_example.sum()),
        }
        return result

    optimizer._adaptive_coefficients = probing


def median(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else math.nan


def summarise(results: list[dict], marks: list[int]) -> None:
    print(
        "| variant | training NLL at steps "
        + ", ".join(map(str, marks))
        + " (mean over seeds) | final, per seed | α | share of |μ| = 1 | λ | gap |"
    )
    print("|---|---|---|---|---|---|---|")
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
        print(
            f"| {name} | {' → '.join(at)} | {finals} | {alpha:.3g} | {share:.2f} "
            f"| {damping:.2g} | {gap:.2f} |"
        )
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


def trace(result: dict) -> None:
    for w in result["rows"]:
        print(
            f"{w['step']:4d} batch {w.get('batch_loss', math.nan):.4f} train {w['nll']:.4f} "
            f"λ {w.get('damping', math.nan):.2e} γ {w.get('gamma', math.nan):.2e} "
            f"α {w.get('alpha', math.nan):.3g} μ {w.get('mu', math.nan):+.3f} "
            f"ρ {w.get('rho', math.nan):.2f} M {w.get('quadratic_model', math.nan):.3g} "
            f"gap {w.get('gap', math.nan):.2f} |δ| {w.get('update_norm', math.nan):.3g}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="name=JSON of KFAC options, or sgd")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-damping", type=float, default=kfac.damping.MIN_DAMPING)
    parser.add_argument("--sgd-lr", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--trace", action="store_true", help="every step of seed 0")
    parser.add_argument("--shares", action="store_true", help="α of the share vs whole batch")
    args = parser.parse_args()
    variants = [v.split("=", 1) if "=" in v else (v, "{}") for v in args.variants]
    seeds = 1 if args.trace else args.seeds
    jobs = [
        (
            name,
            json.loads(options),
            seed,
            args.steps,
            args.min_damping,
            args.sgd_lr,
            args.shares,
            args.batch,
        )
        for name, options in variants
        for seed in range(seeds)
    ]
    print(
        f"load average {os.getloadavg()[0]:.1f}; λ floor {args.min_damping:g}; "
        f"batch {args.batch}"
    )
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run, jobs, chunksize=1)
    if args.trace:
        for result in results:
            print(f"\n{result['name']}")
            trace(result)
        return
    marks = sorted({m for m in (25, 50, 100, args.steps) if m <= args.steps})
    summarise(results, marks)


if __name__ == "__main__":
    main()
