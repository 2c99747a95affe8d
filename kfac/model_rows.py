"""Which examples of the mini-batch estimate the quadratic model's Fisher, and how many
(paper §7; issue 16).

Which examples (docs/benchmarks.md "16, third pass: the digits MLP"):
on a softmax classifier near convergence the curvature sits on the few examples the model is
not yet sure of, and a plain quarter of the batch often misses them, making α several times
too large.  `stratified_rows` keeps the m/2 examples of largest output curvature tr F_R(zᵢ)
with weight 1 and draws m/2 of the other B − m/2 uniformly with weight (B − m/2)/(m/2): the
weights sum to B and Σᵢ wᵢ (Jᵢv)ᵀF_R(Jᵢw)/B is unbiased for the batch's mean vᵀFw.  By default
(AUTO) only for the categorical, where the curvature is concentrated: with the Bernoulli on the
sigmoid autoencoder of tests/kfac/test_defaults.py (batch 64, rows 8 + 8 × weight 7) the
unequal weights' extra variance made 2 of 5 flat starts diverge; the Gaussian's curvature is
the same for every example, so there it only adds variance.

How many (docs/benchmarks.md "16, seventh pass"): at most
`quadratic_fraction` of the batch, and fewer when this run's rows vary little.  The minimiser c
of the model from m rows' Fisher F̂ = (1/m) Σ fᵢ (fᵢ one row's [(Jvⱼ)ᵀF_R(Jvₖ)]) errs by
Δc ≈ −(Q + D)⁻¹(F̂ − F)c to first order, and a minimiser off by Δc gives up ½Δcᵀ(Q + D)Δc of
the model's decrease ½cᵀ(Q + D)c: in expectation the share s²/m, with
s² = E[uᵢᵀ(Q + D)⁻¹uᵢ] / cᵀ(Q + D)c and uᵢ = (fᵢ − F)c (`row_variance`).  Stratified rows
estimate only the others' mean, from their k = m − t drawn rows, and scale it by n/B (n = B − t
others, t the most curved): F̂ − F = (n/B)(mean of the drawn − mean of the others), a share
(n/B)²σ²/k lost, σ² the spread of the others' rows; as s²/m, s² = (n/B)²(m/k)σ²
(`stratified_variance_scale`; the draw's finite-population factor is left out, as it is for
the first rows).
A step whose other work costs as much as R rows of the model (`kfac.step_cost`, counted from the
layers' shapes at this batch) makes the most progress per unit of time, (1 − s²/m)/(R + m), at
m* = s² + √(s⁴ + s²R) (`economical_rows`), with s² a running average over the steps, observed
on each step's drawn rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kfac.distributed import Communicator
from kfac.enums import LossFamily, QuadraticSampling

# Below this many rows a row variance is too rough to decide by (its relative error ~√(2/m)).
# Stratified rows estimate it from their drawn half, 16 rows at this floor (~35% a step); the
# running average of ROW_VARIANCE_DECAY spans ~5 steps, and on the digits MLP the race per step
# was no worse at 32 such rows than at 64 (docs/benchmarks.md "16, eighth pass").
MIN_MODEL_ROWS = 32

# The running average of the row variance: a step's own estimate, from ≥ 32 rows, is noisy.
ROW_VARIANCE_DECAY = 0.8


def curvature_weights(outputs: torch.Tensor, family: LossFamily) -> torch.Tensor:
    """tr F_R(zᵢ) per example: 1 − Σp² (categorical), Σp(1 − p) (Bernoulli), 1 (Gaussian)."""
    if family is LossFamily.CROSS_ENTROPY:
        p = torch.softmax(outputs, dim=1)
        return 1 - (p * p).sum(1)
    if family is LossFamily.BCE:
        p = torch.sigmoid(outputs)
        return (p * (1 - p)).flatten(1).sum(1)
    return outputs.new_ones(outputs.shape[0])


def most_curved(count: int) -> int:
    """How many of `stratified_rows`' `count` rows are the most curved (the rest are drawn)."""
    return count // 2


def stratified_variance_scale(batch: int, count: int) -> float:
    """s² / σ² for `stratified_rows`' `count` rows of `batch`: (n/B)²(m/k) with n = B − t the
    others, k = m − t the drawn, t the most curved (the module docstring)."""
    top = most_curved(count)
    return ((batch - top) / batch) ** 2 * count / (count - top)


def stratified_rows(
    curvature: torch.Tensor, count: int, keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` rows and their weights: the count // 2 of largest `curvature` (weight 1, ties to
    the earlier row) and the rest drawn uniformly without replacement from the other rows, the
    ones of smallest `keys` (uniform random, one per row), weight (B − top)/drawn each."""
    batch = curvature.shape[0]
    order = torch.sort(curvature, descending=True, stable=True).indices
    top = most_curved(count)
    others = order[top:]
    drawn = others[keys[others].argsort()[: count - top]]
    weights = torch.cat(
        [curvature.new_ones(top), curvature.new_full((count - top,), (batch - top) / (count - top))]
    )
    return torch.cat([order[:top], drawn]), weights


def row_variance(
    fisher: torch.Tensor,
    second_moment: torch.Tensor,
    curvature: torch.Tensor,
    damping: torch.Tensor,
    coefficients: torch.Tensor,
) -> float | None:
    """s² = E[uᵢᵀ(Q + D)⁻¹uᵢ] / cᵀ(Q + D)c with uᵢ = (fᵢ − F)c (the module docstring), from the
    rows' mean F = E[fᵢ] and second moment E[fᵢ ⊗ fᵢ] (k×k×k×k); None when the model
    predicts no decrease to lose or Q + D is singular (a zero δ₀ with λ = η = 0)."""
    fisher, second_moment = fisher.double(), second_moment.double()
    damped, c = (curvature + damping).double(), coefficients.double()
    scale = float(c @ damped @ c)
    inverse, singular = torch.linalg.inv_ex(damped)
    finite = torch.isfinite(second_moment).all() and torch.isfinite(inverse).all()
    if not scale > 0 or singular.item() or not finite:
        return None
    mean_c = fisher @ c
    spread = torch.einsum("jklm,k,m,jl->", second_moment, c, c, inverse) - mean_c @ inverse @ mean_c
    return max(float(spread), 0.0) / scale


def economical_rows(variance: float, cost: float, cap: int) -> int:
    """The whole number of rows in [min(MIN_MODEL_ROWS, cap), cap] that makes the most progress
    per unit of time, (1 − s²/m)/(R + m) with R = `cost`, the rest of the step in rows: the
    floor or the ceiling of m* = s² + √(s⁴ + s²R) (module docstring), clipped."""
    best = variance + math.sqrt(variance * variance + variance * cost)
    lowest = min(MIN_MODEL_ROWS, cap)
    candidates = {min(cap, max(lowest, whole)) for whole in (math.floor(best), math.ceil(best))}
    return max(sorted(candidates), key=lambda rows: (1 - variance / rows) / (cost + rows))


@dataclass
class ChosenRows:
    """One step's rows of the quadratic model on this rank (`choose_rows`).

    The Fisher estimate is Σ over `rows` of wᵢ(…)/`count`, averaged over the ranks weighted by
    their counts.  The row variance is observed on the rows drawn uniformly, `drawn` (None: all
    of them), which are `drawn_share` of the global count; `variance_scale` turns their spread
    σ² into s² (the module docstring): 1 for the first rows, (n/B)²(m/k) for stratified ones."""

    rows: slice | torch.Tensor
    weights: torch.Tensor
    count: int
    adapted: bool = False  # chosen by the row variance: observe it on this step's rows
    drawn: torch.Tensor | None = None
    drawn_share: float = 1.0
    variance_scale: float = 1.0


@dataclass
class RowMoments:
    """What `running_row_variance` needs of the quadratic model's last matrices: the drawn
    rows' mean E[fᵢ] and second moment E[fᵢ ⊗ fᵢ] (k×k×k×k), and the model's Q and D."""

    mean: torch.Tensor
    second_moment: torch.Tensor
    curvature: torch.Tensor
    damped: torch.Tensor


def choose_rows(
    outputs: torch.Tensor,
    share: int,
    sampling: QuadraticSampling | str,
    generator: torch.Generator,
    batch: int,
    family: LossFamily,
    communicator: Communicator,
    variance: float | None = None,
    step_cost: float | None = None,
) -> ChosenRows:
    """This step's rows of the model among this rank's examples, their weights and the
    count their weighted sum is divided by; `share` of the global `batch` in all, or, when the
    rows adapt (a `step_cost` R, `kfac.step_cost`) and a row `variance` s² is known, only
    `economical_rows` of it.

    FIRST: the global batch's first rows, weight 1, count their number on this rank.
    CURVATURE: `stratified_rows` over the global batch, the same on every rank: the ranks'
    tr F_R are put together (one all-reduce of B numbers) and the draw's keys are U[0, 1)
    noise over the batch from the generator, which every rank advances alike; each rank
    keeps the chosen rows that are its own, count its shard's size, so the model's average
    over the ranks (`kfac.quadratic.QuadraticModel.matrices`) is Σ over the chosen rows of
    wᵢ(…)/B, what one process holding the batch computes.
    AUTO: CURVATURE for the categorical, FIRST otherwise (the module docstring says why).
    """
    sampling = QuadraticSampling(sampling)
    if sampling is QuadraticSampling.AUTO:
        categorical = family is LossFamily.CROSS_ENTROPY
        sampling = QuadraticSampling.CURVATURE if categorical else QuadraticSampling.FIRST
    adapt = step_cost is not None
    if adapt and variance is not None:
        share = economical_rows(variance, step_cost, share)
    if sampling is QuadraticSampling.FIRST:
        used = communicator.prefix(share)
        return ChosenRows(slice(0, used), outputs.new_ones(used), used, adapted=adapt)
    keys = torch.rand(batch, generator=generator, device=generator.device)
    local, world = outputs.shape[0], communicator.world_size
    curvature = outputs.new_zeros(batch, dtype=torch.float64)
    positions = communicator.positions(local, outputs.device)
    curvature[positions] = curvature_weights(outputs.detach(), family).double()
    # Each example lives on one rank: the mean over ranks is every tr F_R divided by N.
    (curvature,), _ = communicator.average([curvature], 1)
    chosen, weights = stratified_rows(curvature, share, keys.to(outputs.device))
    mine = chosen % world == communicator.rank
    top = most_curved(share)  # `chosen` lists them first, then the drawn
    return ChosenRows(
        chosen[mine] // world,
        weights[mine].to(outputs.dtype),
        local,
        adapted=adapt,
        drawn=(torch.arange(share, device=chosen.device) >= top)[mine],
        drawn_share=(share - top) / batch,
        variance_scale=stratified_variance_scale(batch, share),
    )


def running_row_variance(
    previous: float | None, moments: RowMoments, coefficients: list[float], scale: float
) -> float | None:
    """The running average of s² (`row_variance` of the drawn rows' `moments` at the model's
    minimiser `coefficients` (α, μ), times the rows' `ChosenRows.variance_scale`) with
    `previous`; `previous` when the model predicts no decrease to lose."""
    count = moments.mean.shape[0]
    observed = row_variance(
        moments.mean,
        moments.second_moment,
        moments.curvature,
        moments.damped,
        moments.mean.new_tensor(coefficients[:count]),
    )
    if observed is None:
        return previous
    observed *= scale
    if previous is None:
        return observed
    return ROW_VARIANCE_DECAY * previous + (1 - ROW_VARIANCE_DECAY) * observed
