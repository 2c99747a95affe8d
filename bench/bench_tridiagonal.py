"""The fixed-lr block-tridiagonal K-FAC step against the block-diagonal one (issue 16).

On the MNIST autoencoder at batch 256 (and 1000), in this one process with one thread:

1. the amortised step time of SGD-m, fixed-lr block-diagonal K-FAC and fixed-lr
   block-tridiagonal K-FAC, medians of interleaved rounds of 20 steps (each round spans one
   inverse period, so the inverse update is amortised as in training);
2. the profile of the two K-FAC steps: F⁻¹ applied to the gradient alone, the inverse update
   alone (interleaved repetitions, medians), and the multiply-adds of the preconditioning
   products counted by torch's FlopCounterMode, so that the time ratio can be read against
   the work ratio;
3. three floors: the block-diagonal step, the difference of the amortised inverse updates and
   what an exact F̂⁻¹ adds that no reordering removes at this batch — the dense two-sided
   products (timed alone on the step's own bases); then also Ψ applied to each successor's
   gradient (M_G Vᵢ₊₁ M_Aᵀ, through its rows where it comes as rows); then also, for the
   layers that take rows and a split form, the projection of their rows onto the coupled
   block (see `floor_products`).

Times are process CPU time (time.process_time), which a loaded machine disturbs less than
wall time; every ratio is of medians taken side by side in interleaved rounds.

Both at the ℓ2 coefficient η = 0 and at the default η = 1e-5: with η > 0 the gradient of h is
∇NLL + ηθ, not ĝᵀā, so K-FAC takes no per-example rows (kfac.optimizer) and every layer's
product is the dense one; with η = 0 the layers narrower than the batch take the rows.

    python -m bench.bench_tridiagonal [--rounds N] [--batches 256 1000] [--weight-decays 0 1e-5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.kfac_vs_sgd import autoencoder, make_step
from kfac import KFAC
from kfac.inverses import Notes
from kfac.preconditioner import homogeneous_rows
from kfac.tridiagonal import FULL, SPLIT_OUTPUT, conditional_form, sandwich
from kfac.vectors import objective_gradient

METHODS = ("sgd_momentum", "kfac_fixed", "kfac_tridiag_fixed")
STRUCTURES = {"kfac_fixed": "block_diagonal", "kfac_tridiag_fixed": "block_tridiagonal"}


def _addmm_inplace_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """FlopCounterMode leaves the in-place addmm_ (an accumulating gemm) uncounted."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


COUNTED = {torch.ops.aten.addmm_: _addmm_inplace_flops}


def fixed_kfac(structure: str, model, weight_decay: float) -> KFAC:
    """The fixed-lr K-FAC of bench.kfac_vs_sgd.make_step (lr 1e-3, λ = 1 fixed) at the ℓ2
    coefficient η (make_step keeps the default η)."""
    return KFAC(
        model,
        "bce",
        structure=structure,
        lr=1e-3,
        damping=1.0,
        adapt_damping=False,
        weight_decay=weight_decay,
    )


def multiply_adds(run) -> float:
    """Multiply-adds of the products `run()` computes, counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False, custom_mapping=COUNTED) as counter:
        run()
    return counter.get_total_flops() / 2


def interleaved(cases: dict, rounds: int) -> dict[str, float]:
    """Median process CPU seconds of each callable, run round-robin `rounds` times."""
    samples = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.process_time()
            run()
            samples[name].append(time.process_time() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def step_times(batch: int, rounds: int, weight_decay: float, steps: int = 20) -> dict:
    """Seconds per step of each method, medians of interleaved rounds of `steps` steps."""
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(0))
    steppers = {"sgd_momentum": make_step("sgd_momentum", autoencoder(), lr=1e-3)}
    for method, structure in STRUCTURES.items():
        steppers[method] = fixed_kfac(structure, autoencoder(), weight_decay).step
    for step in steppers.values():  # warm-up: first inverses, allocator
        for _ in range(3):
            step(x, x)
    rounds_of = {
        m: lambda step=step: [step(x, x) for _ in range(steps)] for m, step in steppers.items()
    }
    return {m: t / steps for m, t in interleaved(rounds_of, rounds).items()}


def profile(
    batch: int, rounds: int, weight_decay: float, model=autoencoder
) -> dict[str, dict[str, float]]:
    """Per K-FAC structure: seconds to precondition (as in a step, per-example rows where the
    optimizer takes them), seconds of one inverse update, the preconditioning's multiply-adds
    and the layers that took rows; for the tridiagonal one also the seconds and multiply-adds
    of the floors' products (`floor_products`).  Repetitions interleaved between the
    structures."""
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(0))
    timed, counts = {}, {}
    for method, structure in STRUCTURES.items():
        optimizer = fixed_kfac(structure, model(), weight_decay)
        for _ in range(3):
            optimizer.step(x, x)
        _, per_example = optimizer._forward_backward(x, x, 2)
        gradient = [
            objective_gradient(p, weight_decay) for p in optimizer.param_groups[0]["params"]
        ]
        rows = optimizer.capture.per_example_rows(per_example)
        optimizer.capture.clear()
        timed[method, "precondition"] = lambda o=optimizer, g=gradient, r=rows: o._precondition(
            g, r
        )
        timed[method, "inverse"] = lambda o=optimizer: o.preconditioner.update_inverses(
            1.0, Notes()
        )
        counts[method] = {
            "multiply_adds": multiply_adds(timed[method, "precondition"]),
            "inverse_interval": optimizer.param_groups[0]["inverse_interval"],
            "rows": len(rows),
            "layers": len(optimizer.blocks),
        }
    for part, run in floor_products(optimizer, gradient, rows).items():
        timed["kfac_tridiag_fixed", part] = run
        counts["kfac_tridiag_fixed"][f"{part}_multiply_adds"] = multiply_adds(run)
    medians = interleaved(timed, rounds)
    for (method, part), seconds in medians.items():
        counts[method][f"{part}_s"] = seconds
    return counts


def floor_products(optimizer, gradient: list[torch.Tensor], rows: dict) -> dict:
    """Runs of products of F̂⁻¹ v on the step's own pieces, the parts of the floors.
    `dense`: those whose cost does not fall with the batch — per layer with a successor, its
    two-sided back-transform (in the form the step takes) and its coupling into the next
    layer, on random matrices of the shapes they meet.  `coupled`: Ψ applied to each
    successor's gradient, M_G Vᵢ₊₁ M_Aᵀ, through its rows where they come
    (N·(d_g'·r_G + d_a'·r_A + r_G·r_A) each).  `projected`: for a layer that takes rows and a
    split form, its coupled block K_G,rᵀ Vᵢ K_A,r through the rows (N·(d_g·r_G + d_a·r_A +
    r_G·r_A)), which the block-diagonal product's N·(d_g² + d_a² + d_g·d_a) does not give."""
    pieces = optimizer.preconditioner._tridiagonal_pieces()
    rows = homogeneous_rows(optimizer.blocks, rows)
    params = optimizer.param_groups[0]["params"]
    weights = {id(p): g for p, g in zip(params, gradient, strict=True)}
    runs = {"dense": [], "coupled": [], "projected": []}
    for block, following, piece in zip(
        optimizer.blocks, optimizer.blocks[1:], pieces, strict=False
    ):
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
        if form != FULL:
            runs["projected"].append((basis_g[:, :rank_g].T, rows[block.name], basis_a[:, :rank_a]))
        runs["dense"].append((left, torch.randn(left.shape[1], right.shape[0]), right))
        runs["dense"].append((piece.coupling_g.T, torch.randn(rank_g, rank_a), piece.coupling_a))
        weight, *bias = following.parameters()
        successor = rows.get(following.name) or following.weight_matrix(
            weights[id(weight)], weights[id(bias[0])] if bias else None
        )
        runs["coupled"].append((piece.coupling_g, successor, piece.coupling_a.T))
    return {
        name: lambda products=products: [sandwich(*product) for product in products]
        for name, products in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="*", default=[256, 1000])
    parser.add_argument("--weight-decays", type=float, nargs="*", default=[0.0, 1e-5])
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"# Block-tridiagonal vs block-diagonal K-FAC, fixed lr — 1 thread, load {load:.1f}\n")
    print(
        "Process CPU time. η = 0: layers narrower than the batch precondition through their "
        "per-example rows; η > 0: no rows (∇h = ĝᵀā + ηθ), every product dense.\n"
    )
    print(
        "| batch | η | layers with rows | SGD-m step | block-diag | block-tridiag "
        "| tridiag ÷ diag | F⁻¹∇ diag | F⁻¹∇ tridiag | ratio | GMAC diag | GMAC tridiag "
        "| ratio | inverse diag | inverse tridiag | dense products | Ψ on successors "
        "| block projections | floor ÷ diag: dense | + Ψ | + projections |"
    )
    print("|---" * 21 + "|")
    for batch in args.batches:
        for weight_decay in args.weight_decays:
            row = table_row(batch, args.rounds, weight_decay)
            print(f"| {batch} | {weight_decay:g} | " + " | ".join(row) + " |", flush=True)
    print(f"\nload at the end {os.getloadavg()[0]:.1f}")


def table_row(batch: int, rounds: int, weight_decay: float) -> list[str]:
    times = step_times(batch, rounds, weight_decay)
    parts = profile(batch, rounds, weight_decay)
    diag, tri = parts["kfac_fixed"], parts["kfac_tridiag_fixed"]
    sgd, diag_step, tri_step = (times[m] for m in METHODS)
    # The tridiagonal step needs the block-diagonal one's rank-N products (the same count
    # through K instead of F⁻¹), the dense products and its costlier inverse update.
    extra_inverse = (tri["inverse_s"] - diag["inverse_s"]) / tri["inverse_interval"]
    floor = diag_step + tri["dense_s"] + extra_inverse
    return [
        f"{tri['rows']} of {tri['layers']}",
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
        *(
            f"{tri[f'{part}_s'] * 1e3:.0f} ms ({tri[f'{part}_multiply_adds'] / 1e9:.2f} G)"
            for part in ("dense", "coupled", "projected")
        ),
        f"{floor / diag_step:.2f}×",
        f"{(floor + tri['coupled_s']) / diag_step:.2f}×",
        f"{(floor + tri['coupled_s'] + tri['projected_s']) / diag_step:.2f}×",
    ]


if __name__ == "__main__":
    main()
