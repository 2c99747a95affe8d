"""The fixed-lr block-tridiagonal K-FAC step against the block-diagonal one (issue 16).

On the MNIST autoencoder at batch 256 (and 1000), in this one process with one thread:

1. the amortised step time of SGD-m, fixed-lr block-diagonal K-FAC and fixed-lr
   block-tridiagonal K-FAC, medians of interleaved rounds of 20 steps (each round spans one
   inverse period, so the inverse update is amortised as in training);
2. the profile of the two K-FAC steps: F⁻¹ applied to the gradient alone, the inverse update
   alone (interleaved repetitions, medians), and the multiply-adds of the preconditioning
   products counted by torch's FlopCounterMode, so that the time ratio can be read against
   the work ratio;
3. the floor: the block-diagonal step plus what an exact F̂⁻¹ adds that no reordering removes
   at this batch — the dense two-sided products (timed alone on the step's own bases) and
   the difference of the amortised inverse updates.

    python -m bench.bench_tridiagonal [--rounds N] [--batches 256 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.kfac_vs_sgd import autoencoder, interleaved_times, make_step
from kfac.inverses import Notes
from kfac.tridiagonal import FULL, SPLIT_OUTPUT, conditional_form, sandwich

METHODS = ("sgd_momentum", "kfac_fixed", "kfac_tridiag_fixed")
STRUCTURES = ("kfac_fixed", "kfac_tridiag_fixed")


def _addmm_inplace_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """FlopCounterMode leaves the in-place addmm_ (an accumulating gemm) uncounted."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


COUNTED = {torch.ops.aten.addmm_: _addmm_inplace_flops}


def step_times(batch: int, rounds: int) -> dict[str, float]:
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(0))
    steps = {m: make_step(m, autoencoder(), lr=1e-3) for m in METHODS}
    return interleaved_times(steps, x, x, rounds, 20)


def profile(batch: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per K-FAC structure: seconds to precondition (as in a step, per-example rows where the
    optimizer takes them), seconds of one inverse update, and the preconditioning's
    multiply-adds; repetitions interleaved between the structures."""
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(0))
    cases = {}
    for method in STRUCTURES:
        optimizer = make_step(method, autoencoder(), lr=1e-3).__self__
        for _ in range(3):
            optimizer.step(x, x)
        _, per_example = optimizer._forward_backward(x, x, 2)
        gradient = [p.grad.clone() for p in optimizer.param_groups[0]["params"]]
        rows = optimizer._per_example_rows(per_example)
        optimizer.capture.clear()
        with FlopCounterMode(display=False, custom_mapping=COUNTED) as counter:
            optimizer._precondition(gradient, rows)
        cases[method] = {
            "precondition": lambda o=optimizer, g=gradient, r=rows: o._precondition(g, r),
            "inverse": lambda o=optimizer: o.preconditioner.update_inverses(1.0, Notes()),
            "multiply_adds": counter.get_total_flops() / 2,
            "inverse_interval": optimizer.param_groups[0]["inverse_interval"],
        }
    cases["kfac_tridiag_fixed"]["dense"] = dense_products(optimizer, rows)
    samples = {m: {part: [] for part, f in cases[m].items() if callable(f)} for m in cases}
    for _ in range(rounds):
        for method, case in cases.items():
            for part in samples[method]:
                start = time.perf_counter()
                case[part]()
                samples[method][part].append(time.perf_counter() - start)
    return {
        m: {
            **{f"{part}_s": statistics.median(v) for part, v in samples[m].items()},
            "multiply_adds": cases[m]["multiply_adds"],
            "inverse_interval": cases[m]["inverse_interval"],
        }
        for m in cases
    }


def dense_products(optimizer, rows: dict):
    """The products of F̂⁻¹ v whose cost does not fall with the batch: per layer with a
    successor, its two-sided back-transform (in the form the step takes) and its coupling
    into the next layer, on random matrices of the shapes they meet.  Everything else in the
    step is a rank-N product through the rows, as in the block-diagonal step."""
    pieces = optimizer.preconditioner._tridiagonal_pieces()
    products = []
    for block, piece in zip(optimizer.blocks, pieces[:-1], strict=False):
        basis_g, basis_a = piece.conditional.basis_g, piece.conditional.basis_a
        rank_g, rank_a = piece.conditional.scale.shape
        batch = rows[block.name][0].shape[0] if block.name in rows else None
        form = conditional_form(batch, len(basis_g), len(basis_a), rank_g, rank_a)
        if form == FULL:
            left, right = basis_g, basis_a.T
        elif form == SPLIT_OUTPUT:
            left, right = basis_g[:, :rank_g], basis_a.T
        else:
            left, right = basis_g, basis_a[:, :rank_a].T
        products.append((left, torch.randn(left.shape[1], right.shape[0]), right))
        coupled = torch.randn(rank_g, rank_a)
        products.append((piece.coupling_g.T, coupled, piece.coupling_a))
    return lambda: [sandwich(*product) for product in products]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="*", default=[256, 1000])
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"# Block-tridiagonal vs block-diagonal K-FAC, fixed lr — 1 thread, load {load:.1f}\n")
    print(
        "| batch | SGD-m step | block-diag | block-tridiag | tridiag ÷ diag "
        "| F⁻¹∇ diag | F⁻¹∇ tridiag | ratio | GMAC diag | GMAC tridiag | ratio "
        "| inverse diag | inverse tridiag | dense products | floor ÷ diag |"
    )
    print("|---" * 15 + "|")
    for batch in args.batches:
        times = step_times(batch, args.rounds)
        parts = profile(batch, args.rounds)
        diag, tri = parts["kfac_fixed"], parts["kfac_tridiag_fixed"]
        sgd, diag_step, tri_step = (times[m] for m in METHODS)
        # The tridiagonal step needs the block-diagonal one's rank-N products (the same count
        # through K instead of F⁻¹), the dense products and its costlier inverse update.
        extra_inverse = (tri["inverse_s"] - diag["inverse_s"]) / tri["inverse_interval"]
        floor = diag_step + tri["dense_s"] + extra_inverse
        cells = [
            f"{sgd * 1e3:.0f} ms",
            f"{diag_step / sgd:.2f}× ({diag_step * 1e3:.0f} ms)",
            f"{tri_step / sgd:.2f}× ({tri_step * 1e3:.0f} ms)",
            f"**{tri_step / diag_step:.2f}×**",
            f"{diag['precondition_s'] * 1e3:.0f} ms",
            f"{tri['precondition_s'] * 1e3:.0f} ms",
            f"{tri['precondition_s'] / diag['precondition_s']:.2f}×",
            f"{diag['multiply_adds'] / 1e9:.2f}",
            f"{tri['multiply_adds'] / 1e9:.2f}",
            f"{tri['multiply_adds'] / diag['multiply_adds']:.2f}×",
            f"{diag['inverse_s'] * 1e3:.0f} ms",
            f"{tri['inverse_s'] * 1e3:.0f} ms",
            f"{tri['dense_s'] * 1e3:.0f} ms",
            f"{floor / diag_step:.2f}×",
        ]
        print(f"| {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
