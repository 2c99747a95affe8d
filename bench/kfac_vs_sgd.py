"""K-FAC against SGD with momentum and Adam: step time and a race over seeds (paper §13).

1. step time on the MNIST autoencoder: the amortised per-step time of each optimizer divided by
   SGD-momentum's, at batch 256 and 1000, measured round-robin in this one process so that
   machine noise hits every optimizer alike; plus the cost of one inverse update;
2. the race, on three tasks — the autoencoder with the paper's sparse initialisation, the same
   autoencoder with PyTorch's default nn.Linear initialisation, and the digits classifier MLP
   that no default was tuned on — each method `--seeds` times (initialisation, batch order and
   K-FAC's sampled targets), SGD-m and Adam over 4 learning rates each, K-FAC with its
   defaults. Budgets are counted in steps, not seconds: every run gets `--budget` SGD-m steps'
   worth of time, i.e. budget / r steps where r is the method's step time over SGD-m's measured
   side by side on the task, so that the runs can go in parallel (`--workers`) on a loaded
   machine without the load moving any result.

    python -m bench.kfac_vs_sgd [--budget STEPS] [--seeds N] [--workers N] [--scale S] [--quick]

Writes docs/bench/kfac_vs_sgd.json and .png (kfac_vs_sgd_scale<S>.* when --scale S is not 1,
with _quick when --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from backend.spec import AutoencoderSpec, MLPSpec, RunSpec
from kfac import KFAC
from kfac.losses import negative_log_likelihood
from worker.zoo.datasets import load_dataset
from worker.zoo.models import build_model, linear_layers

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"
BATCH = 256  # the race's batch (K-FAC's too unless --kfac-batch)


def autoencoder(scale: float = 1.0, seed: int = 0) -> torch.nn.Module:
    """784-1000-500-250-30-250-500-1000-784, sigmoid units, Bernoulli output, sparse init."""
    return build_model(RunSpec(model=AutoencoderSpec(width_scale=scale), seed=seed))


class TorchStep:
    """One step of a torch.optim optimizer on the same NLL that K-FAC minimises."""

    def __init__(self, model, optimizer, family: str):
        self.model, self.optimizer, self.family = model, optimizer, family

    def __call__(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        loss = negative_log_likelihood(self.model(x), y, self.family).mean()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def make_step(
    method: str, model, lr: float | None = None, family: str = "bce", seed: int = 0, **options
):
    """One training step of `method` on `model`; `options` change K-FAC's defaults."""
    if options and (method in ("sgd_momentum", "adam") or method.endswith("fixed")):
        raise ValueError(f"options are for K-FAC with its defaults, not {method}")
    if method == "sgd_momentum":
        sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        return TorchStep(model, sgd, family)
    if method == "adam":
        return TorchStep(model, torch.optim.Adam(model.parameters(), lr=lr), family)
    structure = "block_tridiagonal" if "tridiag" in method else "block_diagonal"
    if method.endswith("fixed"):  # preconditioning only: fixed lr and momentum, fixed λ
        optimizer = KFAC(
            model,
            family,
            structure=structure,
            lr=lr or 0.01,
            damping=1.0,
            adapt_damping=False,
            seed=seed,
        )
    else:  # the defaults
        optimizer = KFAC(model, family, structure=structure, seed=seed, **options)
    return optimizer.step


# ------------------------------------------------------------------------------ step time

STEP_METHODS = ["sgd_momentum", "adam", "kfac_fixed", "kfac_tridiag_fixed", "kfac", "kfac_tridiag"]


def step_times(batch: int, rounds: int, steps_per_round: int) -> dict[str, float]:
    """Median seconds per step of each method on the autoencoder, measured round-robin."""
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(0))
    steps = {m: make_step(m, autoencoder(), lr=1e-3) for m in STEP_METHODS}
    return interleaved_times(steps, x, x, rounds, steps_per_round)


def interleaved_times(steps: dict, x, y, rounds: int, steps_per_round: int) -> dict[str, float]:
    """Median seconds per step of each stepper, run round-robin over `rounds` in this process,
    so that the machine's load hits them alike (amortised: each round spans the statistics
    and inverse periods when steps_per_round >= 20)."""
    for step in steps.values():  # warm-up: first inverses, allocator
        for _ in range(3):
            step(x, y)
    samples = {m: [] for m in steps}
    for _ in range(rounds):
        for method, step in steps.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step(x, y)
            samples[method].append((time.perf_counter() - start) / steps_per_round)
    return {m: statistics.median(v) for m, v in samples.items()}


def inverse_update_time(batch: int) -> float:
    model = autoencoder()
    optimizer = KFAC(model, "bce", lr=0.01, damping=1.0, adapt_damping=False)
    x = torch.rand(batch, 784)
    optimizer.step(x, x)
    from kfac.inverses import Notes

    times = []
    for _ in range(3):
        start = time.perf_counter()
        optimizer.preconditioner.update_inverses(1.0, Notes())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------ the race

TASKS = {
    "autoencoder_sparse": "the paper's autoencoder, sparse initialisation (§13)",
    "autoencoder_default": "the same autoencoder with PyTorch's default nn.Linear initialisation",
    "mlp_digits": "the digits classifier MLP (784-256-128-10, tanh, Glorot): nothing tuned on it",
}
# Five learning rates each: with four, the best of Adam (both tasks) and of SGD-m (digits, the
# default-initialised autoencoder) sat on the grid's top edge, so a better one may lie past it.
GRIDS = {
    "autoencoder": {
        "sgd_momentum": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
        "adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    },
    "mlp": {"sgd_momentum": [0.01, 0.03, 0.1, 0.3, 1.0], "adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]},
}


def task_model(task: str, scale: float, seed: int) -> tuple[torch.nn.Module, str]:
    """The task's model (seeded) and its loss family."""
    if task == "mlp_digits":
        return build_model(RunSpec(model=MLPSpec(), seed=seed)), "cross_entropy"
    model = autoencoder(scale, seed)
    if task == "autoencoder_default":  # what a user's own nn.Linear layers get
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for layer in linear_layers(model):
                layer.reset_parameters()
    return model, "bce"


def race_step_times(
    task: str, scale: float, rounds: int, per_round: int, kfac_batch: int = BATCH
) -> dict[str, float]:
    """Seconds per step of SGD-m and Adam at batch 256 and of K-FAC (defaults) at
    `kfac_batch`, on the task. K-FAC's step is timed at its dearest: the quadratic model on the
    whole `quadratic_fraction`, which the defaults shrink where the rows' Fisher varies little
    (kfac.quadratic), and which these few steps on one batch would not show."""
    x, y = task_data(task)
    steps = {}
    for method in ("sgd_momentum", "adam", "kfac"):
        model, family = task_model(task, scale, 0)
        dearest = {"adapt_quadratic_rows": False} if method == "kfac" else {}
        steps[method] = make_step(method, model, 1e-3, family, **dearest)
    kfac = steps["kfac"]
    steps["kfac"] = lambda _x, _y: kfac(x[:kfac_batch], y[:kfac_batch])
    return interleaved_times(steps, x[:BATCH], y[:BATCH], rounds, per_round)


def task_data(task: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset(RunSpec().dataset)
    x = data.train_x.reshape(-1, 784)
    return (x, data.train_y) if task == "mlp_digits" else (x, x)


def run_curve(job) -> list[tuple[int, float]]:
    """[(step, training loss)] of one run of `steps` steps, the loss on the whole training set
    every `every` steps; a diverged run stops with NaN. Deterministic given the seed."""
    task, scale, method, lr, seed, steps, every, batch = job
    torch.set_num_threads(1)
    x, y = task_data(task)
    model, family = task_model(task, scale, seed)
    step = make_step(method, model, lr, family, seed)
    generator = torch.Generator().manual_seed(seed)

    def evaluate() -> float:
        with torch.no_grad():
            return float(negative_log_likelihood(model(x), y, family).mean())

    curve = [(0, evaluate())]
    for k in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (batch,), generator=generator)
        if not torch.isfinite(step(x[idx], y[idx])):
            curve.append((k, math.nan))
            break
        if k % every == 0 or k == steps:
            curve.append((k, evaluate()))
    return curve


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The mean over seeds at each evaluated step (step-based, so the seeds' points align); a
    seed that diverged makes every later mean NaN."""
    length = max(len(c) for c in curves)
    points = []
    for i in range(length):
        losses = [c[i][1] if i < len(c) else math.nan for c in curves]
        step = next(c[i][0] for c in curves if i < len(c))
        points.append((step, statistics.fmean(losses)))
    return points


def lowest(curve) -> float:
    return min((loss for _, loss in curve if loss == loss), default=math.inf)


def first_at(curve, target: float) -> int | None:
    """The first evaluated step whose loss is <= target."""
    return next((step for step, loss in curve if loss <= target), None)


def race(
    task: str,
    scale: float,
    budget: int,
    seeds: int,
    workers: int,
    ratios: dict,
    reused: dict | None = None,
    kfac_batch: int = BATCH,
) -> dict:
    """Every method for `budget` SGD-m steps' worth of time (steps = budget / step-time ratio),
    `seeds` seeds each; see the module docstring for how the best lr and the times are chosen.
    `reused`: an earlier run's result for this task, whose baseline rows stand in for running
    the baselines again (only K-FAC runs). K-FAC trains at `kfac_batch`, the baselines at 256
    (`ratios` then holds K-FAC's step at its batch over SGD-m's at 256)."""
    baselines = baseline_grid(reused["table"]) if reused else GRIDS[task.split("_")[0]]
    grid = {**baselines, "kfac": [None]}
    run_grid = {"kfac": [None]} if reused else grid
    jobs = {}
    for method, lrs in run_grid.items():
        steps = max(1, round(budget / ratios[method]))
        for lr in lrs:
            for seed in range(seeds):
                jobs[method, lr, seed] = (
                    task,
                    scale,
                    method,
                    lr,
                    seed,
                    steps,
                    max(1, steps // 40),
                    kfac_batch if method == "kfac" else BATCH,
                )
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        curves = dict(zip(jobs, pool.map(run_curve, jobs.values(), chunksize=1), strict=True))
    runs = {
        (method, lr): [curves[method, lr, seed] for seed in range(seeds)]
        for method, lrs in run_grid.items()
        for lr in lrs
    }
    reused_rows = (reused or {}).get("table", {}).items()
    table = {key: row for key, row in reused_rows if split_row_key(key)[0] != "kfac"}
    table.update(
        {
            row_key(method, lr): {
                "best_losses": [lowest(c) for c in per_seed],
                "mean_curve": mean_curve(per_seed),
            }
            for (method, lr), per_seed in runs.items()
        }
    )
    return {"table": table, "summary": summarise(table, runs["kfac", None], grid, ratios)}


def row_key(method: str, lr: float | None) -> str:
    """A race table row's key (also in the JSON): "adam lr=0.003", "kfac lr=None"."""
    return f"{method} lr={lr}"


def split_row_key(key: str) -> tuple[str, str]:
    """(method, lr as written) of a `row_key`."""
    method, lr = key.split(" lr=")
    return method, lr


def baseline_grid(table: dict) -> dict[str, list[float]]:
    """The learning rates each baseline ran at, read off a race table's rows."""
    grid: dict[str, list[float]] = {}
    for key in table:
        method, lr = split_row_key(key)
        if method != "kfac":
            grid.setdefault(method, []).append(float(lr))
    return grid


def summarise(table: dict, kfac: list, grid: dict, ratios: dict) -> dict:
    """K-FAC's time to each baseline's best mean loss (its best lr by mean), as a ratio of the
    baseline's own time to it: on the mean-over-seeds curve and per seed."""
    summary = {}
    for rival in ("adam", "sgd_momentum"):
        lr = min(grid[rival], key=lambda r: lowest(table[row_key(rival, r)]["mean_curve"]))
        rival_curve = table[row_key(rival, lr)]["mean_curve"]
        target = lowest(rival_curve)
        rival_cost = first_at(rival_curve, target) * ratios[rival]
        kfac_step = first_at(mean_curve(kfac), target)
        per_seed = [first_at(c, target) for c in kfac]
        summary[rival] = {
            "lr": lr,
            "lr_at_grid_edge": lr in (grid[rival][0], grid[rival][-1]),
            "target": target,
            "rival_steps": first_at(rival_curve, target),
            "kfac_steps": kfac_step,
            "kfac_steps_per_seed": per_seed,
            "time_ratio": kfac_step * ratios["kfac"] / rival_cost if kfac_step else None,
            "time_ratio_per_seed": [
                s * ratios["kfac"] / rival_cost if s else None for s in per_seed
            ],
        }
    return summary


def print_race(task: str, result: dict, ratios: dict, sgd_seconds: float, budget: int) -> None:
    print(f"\n### {task}: {TASKS[task]}\n")
    print(
        f"Budget {budget} SGD-m steps' worth of time ({budget * sgd_seconds:.0f} s at the "
        f"measured {sgd_seconds * 1e3:.0f} ms per SGD-m step); step-time ratios used: "
        + ", ".join(f"{m} {r:.2f}×" for m, r in ratios.items())
        + ".\n"
    )
    print("| method | lr | best loss in budget, mean ± sd over seeds | per seed |")
    print("|---|---|---|---|")
    for key, row in result["table"].items():
        method, lr = split_row_key(key)
        losses = row["best_losses"]
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        cells = ", ".join(f"{v:.4g}" for v in losses)
        print(
            f"| {method} | {lr if lr != 'None' else 'adaptive (§7)'} "
            f"| {statistics.fmean(losses):.4g} ± {spread:.2g} | {cells} |"
        )
    for rival, s in result["summary"].items():
        seeds = ", ".join("—" if r is None else f"{r:.2f}" for r in s["time_ratio_per_seed"])
        reached = (
            f"step {s['kfac_steps']} → time ratio **{s['time_ratio']:.2f}**"
            if s["time_ratio"]
            else "**not reached**"
        )
        print(
            f"\nK-FAC (mean over seeds) to {rival}'s best mean loss {s['target']:.4g} "
            f"(lr {s['lr']}, step {s['rival_steps']}): {reached}; per seed: {seeds}"
        )
        if s["lr_at_grid_edge"]:
            print(f"\n**{rival}'s best lr is at its grid's edge: widen the grid.**")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=None, help="SGD-m steps' worth per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--scale", type=float, default=1.0, help="the autoencoder's width scale")
    parser.add_argument("--tasks", nargs="*", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--no-step-time", action="store_true", help="skip part 1")
    parser.add_argument("--quick", action="store_true", help="short budget, one seed")
    parser.add_argument(
        "--reuse-baselines",
        type=Path,
        metavar="JSON",
        help="an earlier run's output: keep its SGD-m and Adam runs and their step-time ratios "
        "(same budget, seeds and scale), run and time only K-FAC",
    )
    parser.add_argument(
        "--kfac-batch",
        type=int,
        default=BATCH,
        help="K-FAC's batch in the race (the baselines keep 256; its step time is measured at it)",
    )
    args = parser.parse_args(argv)
    budget = args.budget or (60 if args.quick else 3000)
    seeds = 1 if args.quick else args.seeds
    earlier = json.loads(args.reuse_baselines.read_text()) if args.reuse_baselines else {}
    for setting, value in {"scale": args.scale, "budget": budget, "seeds": seeds}.items():
        if earlier and setting not in earlier:
            parser.error(f"--reuse-baselines does not say which {setting} it ran with")
        if earlier.get(setting, value) != value:
            parser.error(f"--reuse-baselines ran with {setting} {earlier[setting]}, not {value}")
    earlier = earlier.get("race", {})
    torch.manual_seed(0)
    torch.set_num_threads(1)
    machine = f"{platform.processor() or platform.machine()}, 1 thread per process"
    load = os.getloadavg()[0]
    results: dict = {"machine": machine, "torch": torch.__version__, "load_at_start": load}
    results.update(kfac_batch=args.kfac_batch, scale=args.scale, budget=budget, seeds=seeds)

    print(f"# K-FAC vs SGD-momentum and Adam — {machine}, load average {load:.1f}\n")
    if not args.no_step_time:
        print_step_times(results, args.quick)
    print(
        f"\n## The race: {seeds} seed(s), autoencoder width scale {args.scale}, batch {BATCH}"
        f" (K-FAC's {args.kfac_batch})\n\n"
        "Each run gets the same budget in units of SGD-m's step time: a method runs "
        "budget / (its step time ÷ SGD-m's) steps, the ratios measured side by side in this "
        "process. Losses are on the whole training set; the best lr of a baseline is the one "
        "with the lowest mean (over seeds) loss in budget; times to a target are read off the "
        "mean-over-seeds curves, in SGD-m steps' worth, so that machine load cannot move them."
    )
    if earlier:
        print(f"\nThe SGD-m and Adam rows are reused from {args.reuse_baselines.name}.")
    results["race"] = {}
    for task in args.tasks:
        rounds, per_round = (2, 4) if args.quick else (3, 20)
        seconds = race_step_times(task, args.scale, rounds, per_round, args.kfac_batch)
        ratios = {m: t / seconds["sgd_momentum"] for m, t in seconds.items()}
        reused = earlier.get(task)
        if reused:  # the baselines' budgets in steps came from their own ratios
            ratios = {**reused["ratios"], "kfac": ratios["kfac"]}
        result = race(
            task, args.scale, budget, seeds, args.workers, ratios, reused, args.kfac_batch
        )
        print_race(task, result, ratios, seconds["sgd_momentum"], budget)
        results["race"][task] = {"ratios": ratios, "seconds": seconds, **result}
    OUT.mkdir(parents=True, exist_ok=True)
    name = "kfac_vs_sgd" + ("" if args.scale == 1 else f"_scale{args.scale:g}")
    name += "_quick" if args.quick else ""  # a smoke run leaves the recorded race alone
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results["race"], OUT / f"{name}.png")


def print_step_times(results: dict, quick: bool) -> None:
    print(
        "## Per-step time, ratio to SGD-momentum (amortised: stats every 10, inverses every 20)\n"
    )
    print("| batch | " + " | ".join(STEP_METHODS) + " | inverse update |")
    print("|---" * (len(STEP_METHODS) + 2) + "|")
    results["step_time"] = {}
    for batch in (256, 1000):
        rounds, per_round = (3, 4) if quick else (5, 20)
        times = step_times(batch, rounds, per_round)
        inverse = inverse_update_time(batch)
        ratios = {m: t / times["sgd_momentum"] for m, t in times.items()}
        results["step_time"][batch] = {"seconds": times, "ratio": ratios, "inverse_s": inverse}
        cells = " | ".join(f"{ratios[m]:.2f}× ({times[m] * 1e3:.0f} ms)" for m in STEP_METHODS)
        print(f"| {batch} | {cells} | {inverse * 1e3:.0f} ms |")


def plot(race_results: dict, path: Path) -> None:
    """The mean-over-seeds curves of K-FAC and of each baseline's best lr, per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(race_results)
    fig, axes = plt.subplots(1, count, figsize=(5 * count, 4), squeeze=False)
    for ax, (task, result) in zip(axes[0], race_results.items(), strict=True):
        keys = [row_key("kfac", None)]
        keys += [row_key(rival, s["lr"]) for rival, s in result["summary"].items()]
        for key in keys:
            method, _ = split_row_key(key)
            steps, loss = zip(*result["table"][key]["mean_curve"], strict=True)
            ax.plot([k * result["ratios"][method] for k in steps], loss, label=key)
        # Log: the classifier's curves part ways only below 1e-3 nats.
        ax.set(xlabel="SGD-m steps' worth of time", ylabel="training loss", title=task)
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
