"""K-FAC against SGD with momentum and Adam on the paper's MNIST autoencoder (§13).

Two parts, both measured side by side in this one process so that machine noise hits every
optimizer alike:

1. step time: the amortised per-step time of each optimizer divided by SGD-momentum's, at batch
   256 and 1000, measured round-robin; plus the cost of one inverse update and what the exact
   quadratic model (α, μ) and the Levenberg–Marquardt ρ add per step;
2. convergence over a wall-clock budget at batch 256 on the offline MNIST digits: each method at
   its best learning rate from a small grid, training loss (nats per image, the whole training
   set, evaluated outside the timed budget) against wall time.

    python -m bench.kfac_vs_sgd [--budget SECONDS] [--quick]

Writes docs/bench/kfac_vs_sgd.json and docs/bench/kfac_vs_sgd.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from backend.spec import AutoencoderSpec, RunSpec
from kfac import KFAC
from kfac.losses import negative_log_likelihood
from worker.zoo.datasets import load_dataset
from worker.zoo.models import build_model

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"


def autoencoder(scale: float = 1.0, seed: int = 0) -> torch.nn.Module:
    """784-1000-500-250-30-250-500-1000-784, sigmoid units, Bernoulli output, sparse init."""
    return build_model(RunSpec(model=AutoencoderSpec(width_scale=scale), seed=seed))


class TorchStep:
    """One step of a torch.optim optimizer on the same NLL that K-FAC minimises."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def __call__(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        loss = negative_log_likelihood(self.model(x), y, "bce").mean()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def make_step(method: str, model, lr: float | None = None):
    if method == "sgd_momentum":
        return TorchStep(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    if method == "adam":
        return TorchStep(model, torch.optim.Adam(model.parameters(), lr=lr))
    structure = "block_tridiagonal" if "tridiag" in method else "block_diagonal"
    if method.endswith("fixed"):  # preconditioning only: fixed lr and momentum, fixed λ
        optimizer = KFAC(
            model, "bce", structure=structure, lr=lr or 0.01, damping=1.0, adapt_damping=False
        )
    else:
        optimizer = KFAC(model, "bce", structure=structure)
    return optimizer.step


# ------------------------------------------------------------------------------ step time

STEP_METHODS = ["sgd_momentum", "adam", "kfac_fixed", "kfac_tridiag_fixed", "kfac", "kfac_tridiag"]


def step_times(batch: int, rounds: int, steps_per_round: int) -> dict[str, float]:
    """Median seconds per step of each method, measured round-robin over `rounds`."""
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(0))
    steps = {m: make_step(m, autoencoder(), lr=1e-3) for m in STEP_METHODS}
    for step in steps.values():  # warm-up: first inverses, allocator
        for _ in range(3):
            step(x, x)
    samples = {m: [] for m in STEP_METHODS}
    for _ in range(rounds):
        for method, step in steps.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step(x, x)
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


# ------------------------------------------------------------------------------ convergence

GRIDS = {"sgd_momentum": [0.003, 0.01, 0.03], "adam": [3e-4, 1e-3, 3e-3, 1e-2], "kfac": [None]}


def full_loss(model, data) -> float:
    with torch.no_grad():
        return float(negative_log_likelihood(model(data), data, "bce").mean())


def train_for(method: str, lr, data, budget: float, batch: int = 256, seed: int = 0):
    """Train until `budget` seconds of optimizer time; returns [(seconds, steps, loss)]."""
    model = autoencoder(seed=seed)
    step = make_step(method, model, lr)
    generator = torch.Generator().manual_seed(seed)
    curve = [(0.0, 0, full_loss(model, data))]
    elapsed, steps, next_eval = 0.0, 0, 1.0
    while elapsed < budget:
        idx = torch.randint(0, data.shape[0], (batch,), generator=generator)
        start = time.perf_counter()
        loss = step(data[idx], data[idx])
        elapsed += time.perf_counter() - start
        steps += 1
        if not torch.isfinite(loss):
            curve.append((elapsed, steps, float("nan")))
            break
        if elapsed >= next_eval or elapsed >= budget:
            curve.append((elapsed, steps, full_loss(model, data)))
            next_eval = elapsed + max(1.0, budget / 60)
    return curve


def best(curve) -> float:
    return min((loss for _, _, loss in curve if loss == loss), default=float("inf"))


def time_to(curve, target: float):
    return next(((t, s) for t, s, loss in curve if loss <= target), (None, None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=None, help="seconds per training run")
    parser.add_argument("--quick", action="store_true", help="short budget, one lr per method")
    args = parser.parse_args()
    budget = args.budget or (8.0 if args.quick else 80.0)
    torch.manual_seed(0)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    results: dict = {"machine": machine, "torch": torch.__version__, "budget_s": budget}

    print(f"# K-FAC vs SGD-momentum on the MNIST autoencoder — {machine}\n")
    print(
        "## Per-step time, ratio to SGD-momentum (amortised: stats every 10, inverses every 20)\n"
    )
    print("| batch | " + " | ".join(STEP_METHODS) + " | inverse update |")
    print("|---" * (len(STEP_METHODS) + 2) + "|")
    results["step_time"] = {}
    for batch in (256, 1000):
        rounds, per_round = (3, 4) if args.quick else (5, 20)
        times = step_times(batch, rounds, per_round)
        inverse = inverse_update_time(batch)
        ratios = {m: t / times["sgd_momentum"] for m, t in times.items()}
        results["step_time"][batch] = {"seconds": times, "ratio": ratios, "inverse_s": inverse}
        cells = " | ".join(f"{ratios[m]:.2f}× ({times[m] * 1e3:.0f} ms)" for m in STEP_METHODS)
        print(f"| {batch} | {cells} | {inverse * 1e3:.0f} ms |")

    data = load_dataset(RunSpec().dataset).train_x.reshape(-1, 784)
    grids = {m: g[len(g) // 2 :][:1] for m, g in GRIDS.items()} if args.quick else GRIDS
    print(f"\n## Training loss within {budget:.0f} s (batch 256, {data.shape[0]} offline digits)\n")
    print("| method | lr | steps | best loss |")
    print("|---|---|---|---|")
    curves = {}
    for method, grid in grids.items():
        for lr in grid:
            curve = train_for(method, lr, data, budget)
            curves[f"{method} lr={lr}"] = curve
            print(
                f"| {method} | {lr if lr is not None else 'adaptive (§7)'} | {curve[-1][1]} "
                f"| {best(curve):.1f} |"
            )
    best_of = {
        m: min((k for k in curves if k.startswith(m + " ")), key=lambda k: best(curves[k]))
        for m in grids
    }
    kfac_curve = curves[best_of["kfac"]]
    summary = {}
    for rival in ("adam", "sgd_momentum"):
        target = best(curves[best_of[rival]])
        rival_time, rival_steps = time_to(curves[best_of[rival]], target)
        kfac_time, kfac_steps = time_to(kfac_curve, target)
        summary[rival] = {
            "target": target,
            "rival_s": rival_time,
            "rival_steps": rival_steps,
            "kfac_s": kfac_time,
            "kfac_steps": kfac_steps,
            "time_ratio": kfac_time / rival_time if kfac_time else None,
        }
        shown = f"{kfac_time:.1f} s, {kfac_steps} steps" if kfac_time else "not reached"
        print(
            f"\nK-FAC to {rival}'s best ({target:.1f}): {shown}; "
            f"{rival}: {rival_time:.1f} s, {rival_steps} steps"
            + (f" → ratio {kfac_time / rival_time:.2f}" if kfac_time else "")
        )
    results.update(curves=curves, best=best_of, summary=summary)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "kfac_vs_sgd.json").write_text(json.dumps(results, indent=1, default=str))
    plot(curves, best_of, OUT / "kfac_vs_sgd.png")


def plot(curves, best_of, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key in best_of.values():
        t, _, loss = zip(*curves[key], strict=True)
        ax.plot(t, loss, label=key)
    ax.set(
        xlabel="optimizer wall time (s)",
        ylabel="training loss (nats / image)",
        title="MNIST autoencoder, batch 256",
        ylim=(None, 250),
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
