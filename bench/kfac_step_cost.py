"""What one step of K-FAC with its defaults costs, against SGD-momentum (issue 16).

Per-step time of SGD-m, Adam, K-FAC with a fixed learning rate and K-FAC with its defaults
(adaptive α, μ from the quadratic model of §7, λ by Levenberg–Marquardt), on the MNIST
autoencoder at batch 256 and 1000, on batches of the offline digits, as ratios to SGD-m's step
measured side by side in this one process: round-robin rounds of `--steps` steps each
(amortised over the statistics and inverse periods), the median over `--rounds` rounds, K-FAC's
after `--warmup` steps of training (by then past the ℓ2 phase of the first 100 steps, and the
quadratic model reads as many rows as this stage of training asks, kfac.quadratic).
`--cpu-time` times the process's CPU time instead of the wall clock: with one thread on a
machine loaded by others it counts this process's work alone. The default step is also run
with one option changed: the ℓ2 phase made to last (η = 1e-5 throughout: the wide layers cannot
take the per-example product), `precision="bfloat16"` (kfac.enums.ProductPrecision), the
quadratic model on the whole quarter (`adapt_quadratic_rows=False`), and "dual passes"
(`--methods ... kfac_dual`: J·Δ and J·δ₀ from forward passes with dual numbers, as before the
quadratic model read them off the training pass, kfac.linearisation).

`--repeats R` measures each batch R times over (fresh models, warm-up, rounds) and prints
each method's median ratio over the repetitions with their range: on a shared VM a whole
measurement's ratio moves by about ±0.1 from one run to the next (docs/benchmarks.md "16, tenth
pass"), more than the rounds' median inside one run shows.

`--profile` breaks each default step down into its parts, each summed over the steps of the
rounds and divided by the SGD-m step of the same rounds. `--work` counts each method's
multiply-adds per step (matrix products only, `work_per_step`): the work ratio, which the time
ratio exceeds by what K-FAC's products lose in speed (gemms of a few dozen rows, LAPACK) and
by what is not a product.

`--fractions` trains the sparse-initialised autoencoder with the defaults on the offline digits
(batch 256) and, at a few steps, solves the quadratic model over the step's own Δ and δ₀ with
the Fisher of a share of the batch, from 1/16 to all of it: how far the α, μ of the default
quarter lie from the whole batch's. `--bfloat16-error` measures the opt-in bfloat16 products
against the exact ones on the same task (see `precision_quality`).

`--task mlp_digits` times the digits classifier instead (its rows are the stratified ones of
the categorical; the rows variant `kfac_fixed_rows` shows what adapting them saves).

    python -m bench.kfac_step_cost [--rounds 5] [--steps 20] [--warmup 200] [--threads N]
        [--repeats 1] [--profile] [--work] [--cpu-time] [--batches 256 1000]
        [--methods sgd_momentum kfac ...]
        [--task autoencoder_sparse | autoencoder_default | mlp_digits]
    python -m bench.kfac_step_cost --fractions
    python -m bench.kfac_step_cost --threads 1 --bfloat16-error
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from bench.bench_tridiagonal import multiply_adds
from bench.kfac_vs_sgd import TASKS, autoencoder, make_step, task_data, task_model
from kfac import KFAC
from kfac.enums import ProductPrecision, QuadraticSampling
from kfac.losses import negative_log_likelihood
from kfac.vectors import dot

METHODS = {
    "sgd_momentum": "SGD-m",
    "adam": "Adam",
    "kfac_fixed": "K-FAC fixed lr",
    "kfac_l2": "K-FAC defaults in the ℓ2 phase (η = 1e-5)",
    "kfac": "K-FAC defaults (past the ℓ2 phase: η = 0)",
    "kfac_bf16": "K-FAC defaults, bfloat16 products",
    "kfac_fixed_rows": "K-FAC defaults, the model on the whole quarter",
    "kfac_dual": "K-FAC defaults (dual passes)",
    "kfac_curvature": "K-FAC defaults, the model's quarter by curvature",
}
DEFAULT_METHODS = ["sgd_momentum", "adam", "kfac_fixed", "kfac_l2", "kfac", "kfac_bf16"]
# The default step with one option changed (kfac.KFAC's keywords). The rounds time the steps
# after `--warmup` steps on the digits, past the default ℓ2 phase (`weight_decay_steps` = 100):
# the ℓ2 phase's step is timed with the phase made to last.
VARIANTS = {
    "kfac_l2": {"weight_decay_steps": None},
    "kfac_bf16": {"precision": "bfloat16"},
    "kfac_fixed_rows": {"adapt_quadratic_rows": False},
    "kfac_curvature": {"quadratic_sampling": "curvature"},  # "auto" takes the first here
}

AUTOENCODER = "autoencoder_sparse"

# The parts of the default step, as the optimizer's methods that do them.
PARTS = {
    "_forward_backward": "forward, backward (+ statistics every 10)",
    "_precondition": "F̆⁻¹∇h",
    "_update_inverses": "inverses (every 20)",
    "_adaptive_coefficients": "quadratic model: α, μ (§7)",
    "_output_directions": "… of which J·Δ, J·δ₀",
    "_adapt_damping": "ρ: forward at θ + δ (every 5)",
}


def stepper(method: str, timings: dict | None, task: str = AUTOENCODER):
    """A step function on a fresh model of the task; K-FAC's parts are timed into `timings`."""
    model, family = task_model(task, 1.0, 0)
    if method == "kfac_dual":
        step = make_step("kfac", model, family=family)
        step.__self__.quadratic.chain = None  # the dual passes of kfac.quadratic
    elif method in VARIANTS:
        step = KFAC(model, family, **VARIANTS[method]).step
    else:
        step = make_step(method, model, lr=1e-3, family=family)
    if timings is not None and method.startswith("kfac") and method != "kfac_fixed":
        optimizer = step.__self__
        for name in PARTS:
            owner = optimizer.quadratic if name == "_output_directions" else optimizer
            setattr(owner, name, timed(getattr(owner, name), timings[method], name))
    return step


CLOCK = {"now": time.perf_counter}


def timed(function, totals: dict, name: str):
    def wrapper(*args, **kwargs):
        start = CLOCK["now"]()
        result = function(*args, **kwargs)
        totals[name] += CLOCK["now"]() - start
        return result

    return wrapper


def timing_batches(task: str, batch: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The `steps` batches of the task's offline data that every method steps through, the
    same in every round and for every method (seeded)."""
    data, targets = task_data(task)
    generator = torch.Generator().manual_seed(0)
    indices = [torch.randint(0, data.shape[0], (batch,), generator=generator) for _ in range(steps)]
    return [(data[i], targets[i]) for i in indices]


def warm_up(method: str, step, batches: list, warmup: int) -> None:
    """K-FAC's first `warmup` steps (past the ℓ2 phase, statistics and inverses formed), three
    of any other method's (the allocator), cycling through `batches`."""
    for k in range(warmup if method.startswith("kfac") else 3):
        step(*batches[k % len(batches)])


def measure(
    batch: int,
    rounds: int,
    steps: int,
    warmup: int,
    profile: bool,
    methods: list[str],
    task: str = AUTOENCODER,
):
    """Median seconds per step of each method (round-robin) on batches of the offline digits,
    K-FAC's after `warmup` steps (the quadratic model's rows depend on how far training is);
    the parts' seconds per step, in SGD-m steps; the mean rows of each K-FAC's quadratic model
    over the timed steps."""
    batches = timing_batches(task, batch, steps)
    timings = defaultdict(lambda: defaultdict(float)) if profile else None
    steps_of = {m: stepper(m, timings, task) for m in methods}
    for method, step in steps_of.items():
        warm_up(method, step, batches, warmup)
    for totals in (timings or {}).values():  # the wrappers keep these dicts
        totals.clear()
    samples = {m: [] for m in methods}
    # The defaults' quadratic models (a fixed lr's reads its rows only on λ's steps).
    models = {
        m: step.__self__.quadratic
        for m, step in steps_of.items()
        if m.startswith("kfac") and m != "kfac_fixed"
    }
    rows = defaultdict(list)
    for _ in range(rounds):
        for method, step in steps_of.items():
            start = CLOCK["now"]()
            for x, y in batches:
                step(x, y)
                if method in models:
                    rows[method].append(models[method].weights.numel())
            samples[method].append((CLOCK["now"]() - start) / steps)
    medians = {m: statistics.median(v) for m, v in samples.items()}
    parts = {}
    if timings is not None:
        sgd_total = sum(samples["sgd_momentum"])
        parts = {
            method: {name: total / (sgd_total * steps) for name, total in totals.items()}
            for method, totals in timings.items()
        }
    return medians, parts, {m: statistics.mean(r) for m, r in rows.items()}


def repeated(repeats: int, *args) -> tuple[dict, dict, dict, dict, dict]:
    """`measure(*args)` `repeats` times over: each method's median ratio to SGD-m over the
    repetitions, their (lowest, highest) ratio, its median seconds per step; each part's median
    over the repetitions; the mean rows."""
    medians_of, parts_of, rows_of = zip(*(measure(*args) for _ in range(repeats)), strict=True)
    methods = medians_of[0]
    ratios = {m: [run[m] / run["sgd_momentum"] for run in medians_of] for m in methods}
    ratio = {m: statistics.median(r) for m, r in ratios.items()}
    spread = {m: (min(r), max(r)) for m, r in ratios.items()}
    step = {m: statistics.median(run[m] for run in medians_of) for m in methods}
    parts = {
        method: {
            name: statistics.median(p[method].get(name, 0.0) for p in parts_of) for name in PARTS
        }
        for method in parts_of[0]
    }
    rows = {m: statistics.mean(run[m] for run in rows_of) for m in rows_of[0]}
    return ratio, spread, step, parts, rows


def work_per_step(batch: int, steps: int, warmup: int, methods: list[str], task: str = AUTOENCODER):
    """Multiply-adds per step of each method's products (FlopCounterMode: matrix products and
    convolutions; LAPACK's factorisations and elementwise work are not counted), over the same
    `steps` batches as `measure`, K-FAC's after `warmup` steps: the work ratio that the time
    ratio can be read against."""
    batches = timing_batches(task, batch, steps)
    work = {}
    for method in methods:
        step = stepper(method, None, task)
        warm_up(method, step, batches, warmup)
        work[method] = multiply_adds(lambda s=step: [s(x, y) for x, y in batches]) / steps
    return work


FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


@contextmanager
def first_rows(optimizer: KFAC, inputs: torch.Tensor, share: int):
    """Within the block, the optimizer's quadratic model reads the batch's first `share`
    examples (weight 1); the rows it chose for its own step are put back afterwards."""
    model = optimizer.quadratic
    chosen_rows = model.chosen
    # FIRST reads no outputs but their dtype: the inputs serve
    model.choose_rows(inputs, share, QuadraticSampling.FIRST, None, inputs.shape[0])
    try:
        yield model
    finally:
        model.chosen = chosen_rows


def fraction_quality(probe_steps=(10, 25, 50, 100, 150), batch: int = 256) -> None:
    """α, μ of the quadratic model on shares of the batch, against the whole batch's."""
    x, _ = task_data("autoencoder_sparse")
    model = autoencoder()
    step = make_step("kfac", model)
    optimizer = step.__self__
    chosen = optimizer._adaptive_coefficients
    rows = []

    def probing(inputs, gradient, preconditioned, previous):
        result = chosen(inputs, gradient, preconditioned, previous)
        if optimizer.counters["step"] in probe_steps and previous[0] is not None:
            solved = {}
            for fraction in FRACTIONS:  # the batch's first share of each size, weight 1
                share = round(fraction * inputs.shape[0])
                with first_rows(optimizer, inputs, share):
                    solved[fraction] = optimizer._solve_step(
                        inputs, gradient, preconditioned, previous
                    )
            damping = optimizer.param_groups[0]["damping"]
            rows.append((optimizer.counters["step"], damping, solved))
        return result

    optimizer._adaptive_coefficients = probing
    generator = torch.Generator().manual_seed(0)
    for _ in range(max(probe_steps)):
        batch_x = x[torch.randint(0, x.shape[0], (batch,), generator=generator)]
        step(batch_x, batch_x)
    print("\nα, μ from the Fisher of a share of the batch, relative to the whole batch's")
    print("(sparse autoencoder, defaults, batch 256; −α is the coefficient of F̆⁻¹∇h)\n")
    shares = [f for f in FRACTIONS if f < 1]
    print("| step | λ | α, μ (whole batch) | " + " | ".join(f"{f:g}" for f in shares) + " |")
    print("|---|---|---|" + "---|" * len(shares))
    for step_number, damping, solved in rows:
        whole = solved[1.0]
        cells = [
            f"{solved[f].alpha / whole.alpha - 1:+.1%}, {solved[f].mu - whole.mu:+.3f}"
            for f in shares
        ]
        print(
            f"| {step_number} | {damping:.3g} | {-whole.alpha:.3f}, {whole.mu:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    print("\n(cells: the relative change of α, the absolute change of μ)")


def precision_quality(probe_steps=(10, 25, 50, 100, 150, 200), batch: int = 256) -> None:
    """The opt-in bfloat16 products against the exact ones on the sparse autoencoder (defaults,
    offline digits, batch 256): at each probe step of the exact run, F̆⁻¹∇h and the α, μ solved
    over it again with bfloat16 products on the same state; and a bfloat16 run on the same
    batches, its loss on the whole training set against the exact run's."""
    x, _ = task_data("autoencoder_sparse")
    runs = {name: KFAC(autoencoder(), "bce", precision=name) for name in ("exact", "bfloat16")}
    optimizer = runs["exact"]
    chosen = optimizer._adaptive_coefficients
    rows = {}

    def probing(inputs, gradient, preconditioned, previous):
        result = chosen(inputs, gradient, preconditioned, previous)
        step = optimizer.counters["step"]
        if step in probe_steps and previous[0] is not None:
            optimizer.preconditioner.precision = ProductPrecision.BFLOAT16
            reduced = optimizer._precondition(gradient)
            optimizer.preconditioner.precision = ProductPrecision.EXACT
            difference = [r - p for r, p in zip(reduced, preconditioned, strict=True)]
            error = (
                float(dot(difference, difference)) / float(dot(preconditioned, preconditioned))
            ) ** 0.5
            again = chosen(inputs, gradient, reduced, previous)
            rows[step] = (error, result[0], result[1], again[0], again[1])
        return result

    optimizer._adaptive_coefficients = probing
    generator = torch.Generator().manual_seed(0)
    losses = {name: {} for name in runs}
    for step in range(1, max(probe_steps) + 1):
        batch_x = x[torch.randint(0, x.shape[0], (batch,), generator=generator)]
        for name, run in runs.items():
            run.step(batch_x, batch_x)
            if step in probe_steps:
                with torch.no_grad():
                    loss = negative_log_likelihood(run.model(x), x, "bce").mean()
                losses[name][step] = float(loss)
    print("\nbfloat16 products against exact ones (sparse autoencoder, defaults, batch 256)\n")
    print(
        "| step | ‖F̆⁻¹∇h error‖ / ‖F̆⁻¹∇h‖ | α, μ exact | α, μ bfloat16 (same state) "
        "| training loss, exact run | bfloat16 run |"
    )
    print("|---|---|---|---|---|---|")
    for step in probe_steps:
        if step in rows:
            error, alpha, mu, alpha16, mu16 = rows[step]
            print(
                f"| {step} | {error:.1e} | {-alpha:.4g}, {mu:.4g} | {-alpha16:.4g}, {mu16:.4g} "
                f"| {losses['exact'][step]:.2f} | {losses['bfloat16'][step]:.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="whole measurements per batch")
    parser.add_argument("--steps", type=int, default=20, help="steps per round and method")
    parser.add_argument("--warmup", type=int, default=200, help="K-FAC's steps before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--batches", type=int, nargs="*", default=[256, 1000])
    parser.add_argument("--task", choices=sorted(TASKS), default=AUTOENCODER)
    parser.add_argument("--profile", action="store_true", help="the default step's parts")
    parser.add_argument("--fractions", action="store_true", help="α, μ on shares of the batch")
    parser.add_argument("--bfloat16-error", action="store_true", help="bfloat16 against exact")
    parser.add_argument("--cpu-time", action="store_true", help="time the process's CPU time")
    parser.add_argument("--work", action="store_true", help="multiply-adds per step, counted")
    parser.add_argument(
        "--methods", nargs="*", choices=list(METHODS), default=DEFAULT_METHODS, help="sgd first"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    methods = ["sgd_momentum"] + [m for m in args.methods if m != "sgd_momentum"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK["now"] = time.process_time
    if args.fractions:
        fraction_quality()
        return
    if args.bfloat16_error:
        precision_quality()
        return
    clock = "CPU time" if args.cpu_time else "wall clock"
    print(f"# K-FAC's step cost — {TASKS[args.task]}; {platform.machine()}, ")
    print(f"{torch.get_num_threads()} threads, ", end="")
    print(f"{args.rounds} interleaved rounds of {args.steps} steps, medians, {clock}", end="")
    print(f"; medians of {args.repeats} repetitions [their range]\n" if args.repeats > 1 else "\n")
    print("| batch | " + " | ".join(METHODS[m] for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    profiles, rows = {}, {}
    for batch in args.batches:
        ratio, spread, step, profiles[batch], rows[batch] = repeated(
            args.repeats,
            batch,
            args.rounds,
            args.steps,
            args.warmup,
            args.profile,
            methods,
            args.task,
        )
        low_high = {
            m: f" [{lo:.2f}–{hi:.2f}]" if args.repeats > 1 else "" for m, (lo, hi) in spread.items()
        }
        cells = [f"{ratio[m]:.2f}× ({step[m] * 1e3:.0f} ms){low_high[m]}" for m in methods]
        print(f"| {batch} | " + " | ".join(cells) + " |")
    print("\nRows of the quadratic model, mean over the timed steps\n")
    print("| batch | " + " | ".join(METHODS[m] for m in rows[args.batches[0]]) + " |")
    print("|---|" + "---|" * len(rows[args.batches[0]]))
    for batch in args.batches:
        print(f"| {batch} | " + " | ".join(f"{r:.0f}" for r in rows[batch].values()) + " |")
    if args.work:
        print("\nMultiply-adds per step (matrix products only), ratio to SGD-m's\n")
        print("| batch | " + " | ".join(METHODS[m] for m in methods) + " |")
        print("|---|" + "---|" * len(methods))
        for batch in args.batches:
            work = work_per_step(batch, args.steps, args.warmup, methods, args.task)
            sgd = work["sgd_momentum"]
            cells = [f"{work[m] / sgd:.2f}× ({work[m] / 1e9:.2f} G)" for m in methods]
            print(f"| {batch} | " + " | ".join(cells) + " |")
    if not args.profile:
        return
    same = "the median over the repetitions" if args.repeats > 1 else "same run"
    print(f"\nParts of the default step, in SGD-m steps (summed over the rounds, {same})\n")
    variants = [m for m in methods if m.startswith("kfac") and m != "kfac_fixed"]
    header = " | ".join(f"{METHODS[v]}, batch {b}" for b in args.batches for v in variants)
    print(f"| part | {header} |")
    print("|---|" + "---|" * (len(args.batches) * len(variants)))
    for name, label in PARTS.items():
        cells = [f"{profiles[b][v].get(name, 0.0):.2f}" for b in args.batches for v in variants]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
