"""The exact quadratic model of the objective along the update directions (paper §6.4, §7).

M(δ) = h(θ) + ∇hᵀδ + ½ δᵀ(F + (λ + η)I)δ, with F the exact Fisher (= Gauss–Newton) of the
mini-batch.  For δ = αΔ + μδ₀ only the 2×2 matrix of products vᵀ C w between Δ and δ₀ matters;
the Fisher part vᵀFw = E[(Jv)ᵀ F_R (Jw)] needs one forward-mode Jacobian–vector product per
direction, never the matrix itself.

Which examples estimate it (issue 16, docs/benchmarks.md "16, third pass: the digits MLP"):
on a softmax classifier near convergence the curvature sits on the few examples the model is
not yet sure of, and a plain quarter of the batch often misses them, making α several times
too large.  `stratified_rows` keeps the m/2 examples of largest output curvature tr F_R(zᵢ)
with weight 1 and draws m/2 of the other B − m/2 uniformly with weight (B − m/2)/(m/2): the
weights sum to B and Σᵢ wᵢ (Jᵢv)ᵀF_R(Jᵢw)/B is unbiased for the batch's mean vᵀFw.  By default
(AUTO) only for the categorical, where the curvature is concentrated: with the Bernoulli on the
sigmoid autoencoder of tests/kfac/test_defaults.py (batch 64, rows 8 + 8 × weight 7) the
unequal weights' extra variance made 2 of 5 flat starts diverge; the Gaussian's curvature is
the same for every example, so there it only adds variance.

How many examples (issue 16, docs/benchmarks.md "16, seventh pass"): at most
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
A step whose other work costs as much as R rows of the model makes the most progress per unit of
time, (1 − s²/m)/(R + m), at m* = s² + √(s⁴ + s²R) (`economical_rows`), with s² a running
average over the steps, observed on each step's drawn rows.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn
from torch.func import functional_call

from kfac.enums import LossFamily, QuadraticSampling
from kfac.linearisation import LinearisedChain
from kfac.losses import output_fisher_rows
from kfac.vectors import dots

# 1 − cos²∠(Δ, δ₀) in the damped metric below which the 2×2 solve is not trusted: the entries
# come from float32 sums (relative error ~1e-6 each), so det/(Q₀₀Q₁₁) below ~√ε₃₂ ≈ 3e-4
# amplifies their rounding by more than 1/√ε₃₂ into α and μ.
SINGULAR_2X2 = torch.finfo(torch.float32).eps ** 0.5

# |μ| above which the model's momentum is not taken: with μ > 1 each step is a larger copy of
# the last, growing geometrically between the Levenberg–Marquardt checks of ρ (every T₁
# steps).  Measured on the default-initialised autoencoder (width 1/4, seed 0): on the flat
# region α fell to ~1e-5 and the model chose μ = 9.2, |δ| = 164, the loss jumped from 191 to
# 258 and the run went back onto the plateau, later μ ≈ 1000; with |μ| <= 1 it reached 118.
MAX_MOMENTUM = 1.0

# R / B of `economical_rows`: the default step without the quadratic model costs 2.5 SGD-m steps
# on the MNIST autoencoder at batch 256 and 1.8 at 1,000 (bench.kfac_step_cost --profile), an
# SGD-m step ~3P multiply-adds per example and a row of the model 4P (V ā and W ȧ for Δ and δ₀,
# P the weights): 1.9B and 1.3B rows.  Timed directly (the model's own rows run slower per
# multiply-add), 1.0–1.25B on an EPYC; R = 1.1B was no faster there within the run-to-run
# spread (docs/benchmarks.md "16, eighth pass").
STEP_COST_IN_MODEL_ROWS = 1.5

# Below this many rows a row variance is too rough to decide by (its relative error ~√(2/m)).
# Stratified rows estimate it from their drawn half, 16 rows at this floor (~35% a step); the
# running average of ROW_VARIANCE_DECAY spans ~5 steps, and on the digits MLP the race per step
# was no worse at 32 such rows than at 64 (docs/benchmarks.md "16, eighth pass").
MIN_MODEL_ROWS = 32

# The running average of the row variance: a step's own estimate, from ≥ 32 rows, is noisy.
ROW_VARIANCE_DECAY = 0.8


def output_directions(
    model: nn.Module, inputs: torch.Tensor, directions: list[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The outputs z and J·v for each parameter-space direction v (a dict name → tensor).

    One forward pass with dual numbers per direction (forward-mode AD): measured here it is
    cheaper than torch.func.jvp, sequential or vectorised with vmap.
    """
    params = {name: p.detach() for name, p in model.named_parameters() if name in directions[0]}
    products = []
    with running_statistics_frozen(model), torch.enable_grad():
        for direction in directions:
            with forward_ad.dual_level():
                dual = {
                    name: forward_ad.make_dual(p, direction[name]) for name, p in params.items()
                }
                primal, tangent = forward_ad.unpack_dual(functional_call(model, dual, (inputs,)))
                products.append(tangent.detach())
    return primal.detach(), products


@contextmanager
def running_statistics_frozen(model: nn.Module):
    """Batch norm keeps normalising by batch statistics but stops updating its running ones,
    so the extra forward passes of the quadratic model neither count twice nor write buffers
    (which forward-mode transforms forbid)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, value in zip(norms, tracking, strict=True):
            m.track_running_stats = value


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


def fisher_rows(
    outputs: torch.Tensor, products: list[torch.Tensor], family: LossFamily
) -> torch.Tensor:
    """[(Jᵢvⱼ)ᵀ F_R(zᵢ) (Jᵢvₖ)] for each row i, shape (rows, k, k), from the output products
    J·vⱼ of the k directions."""
    count = len(products)
    rows = outputs.new_zeros(outputs.shape[0], count, count)
    for i in range(count):
        for j in range(i, count):
            rows[:, i, j] = rows[:, j, i] = output_fisher_rows(
                outputs, products[i], products[j], family
            )
    return rows


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


def economical_rows(variance: float, batch: int, cap: int) -> int:
    """The whole number of rows in [min(MIN_MODEL_ROWS, cap), cap] that makes the most progress
    per unit of time, (1 − s²/m)/(R + m) with R = STEP_COST_IN_MODEL_ROWS·B: the floor or the
    ceiling of m* = s² + √(s⁴ + s²R) (module docstring), clipped."""
    cost = STEP_COST_IN_MODEL_ROWS * batch
    best = variance + math.sqrt(variance * variance + variance * cost)
    lowest = min(MIN_MODEL_ROWS, cap)
    candidates = {min(cap, max(lowest, whole)) for whole in (math.floor(best), math.ceil(best))}
    return max(sorted(candidates), key=lambda rows: (1 - variance / rows) / (cost + rows))


@dataclass
class ChosenRows:
    """One step's rows of the quadratic model on this rank (`QuadraticModel.choose_rows`).

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
    """What `updated_row_variance` needs of the last `matrices`: the drawn rows' mean E[fᵢ] and
    second moment E[fᵢ ⊗ fᵢ] (k×k×k×k), and the model's Q and D."""

    mean: torch.Tensor
    second_moment: torch.Tensor
    curvature: torch.Tensor
    damped: torch.Tensor


class QuadraticModel:
    """The matrices of the quadratic model over given directions for `kfac.KFAC` (§7).

    The Fisher part comes from J·v on the rows that `choose_rows` picked from this step's
    training pass: read off that pass, which the capture kept, when the model is a chain of
    K-FAC layers (`kfac.linearisation`), from dual forward passes otherwise.
    """

    def __init__(self, model: nn.Module, family: LossFamily, blocks, params, capture, communicator):
        self.model, self.family = model, family
        self.params, self.capture, self.communicator = params, capture, communicator
        self.names = {p: name for name, p in model.named_parameters()}
        self.chain = LinearisedChain.of(model, blocks, params)
        self.chosen = ChosenRows(slice(0, 0), torch.zeros(0), 0)
        self.moments: RowMoments | None = None

    @property
    def rows(self) -> slice | torch.Tensor:
        """This step's rows: the batch's first (a slice) or stratified ones (an index tensor)."""
        return self.chosen.rows

    @property
    def weights(self) -> torch.Tensor:
        return self.chosen.weights

    @property
    def count(self) -> int:
        return self.chosen.count

    @property
    def reads_training_pass(self) -> bool:
        """Whether the training pass must keep the layers' activations for the model."""
        return self.chain is not None

    def choose_rows(
        self,
        outputs,
        share: int,
        sampling,
        generator,
        batch: int,
        variance: float | None = None,
        adapt: bool = False,
    ) -> None:
        """This step's rows of the model among this rank's examples, their weights and the
        count their weighted sum is divided by; `share` of the global `batch` in all, or with
        `adapt` and a row `variance` s², only `economical_rows` of it.

        FIRST: the global batch's first rows, weight 1, count their number on this rank.
        CURVATURE: `stratified_rows` over the global batch, the same on every rank: the ranks'
        tr F_R are put together (one all-reduce of B numbers) and the draw's keys are U[0, 1)
        noise over the batch from the generator, which every rank advances alike; each rank
        keeps the chosen rows that are its own, count its shard's size, so the average below is
        Σ over the chosen rows of wᵢ(…)/B, what one process holding the batch computes.
        AUTO: CURVATURE for the categorical, FIRST otherwise (the module docstring says why).
        """
        sampling = QuadraticSampling(sampling)
        if sampling is QuadraticSampling.AUTO:
            categorical = self.family is LossFamily.CROSS_ENTROPY
            sampling = QuadraticSampling.CURVATURE if categorical else QuadraticSampling.FIRST
        if adapt and variance is not None:
            share = economical_rows(variance, batch, share)
        if sampling is QuadraticSampling.FIRST:
            used = self.communicator.prefix(share)
            self.chosen = ChosenRows(slice(0, used), outputs.new_ones(used), used, adapted=adapt)
            return
        keys = torch.rand(batch, generator=generator, device=generator.device)
        local, world = outputs.shape[0], self.communicator.world_size
        curvature = outputs.new_zeros(batch, dtype=torch.float64)
        positions = self.communicator.positions(local, outputs.device)
        curvature[positions] = curvature_weights(outputs.detach(), self.family).double()
        # Each example lives on one rank: the mean over ranks is every tr F_R divided by N.
        (curvature,), _ = self.communicator.average([curvature], 1)
        chosen, weights = stratified_rows(curvature, share, keys.to(outputs.device))
        mine = chosen % world == self.communicator.rank
        top = most_curved(share)  # `chosen` lists them first, then the drawn
        self.chosen = ChosenRows(
            chosen[mine] // world,
            weights[mine].to(outputs.dtype),
            local,
            adapted=adapt,
            drawn=(torch.arange(share, device=chosen.device) >= top)[mine],
            drawn_share=(share - top) / batch,
            variance_scale=stratified_variance_scale(batch, share),
        )

    def matrices(self, inputs, gradient, directions, weight_decay, damping):
        """[vᵢᵀ(F + ηI)vⱼ], [λvᵢᵀvⱼ] and [∇hᵀvᵢ], F the exact Fisher estimated on the chosen
        rows: Σᵢ wᵢ(Jᵢvⱼ)ᵀF_R(Jᵢvₖ)/count on each rank, averaged over the ranks weighted by
        their counts (`choose_rows`); when the rows adapt, also the drawn rows' `RowMoments`."""
        count, chosen = len(directions), self.chosen
        fisher = gradient[0].new_zeros(count, count)  # a rank with none of the subset
        moments = [gradient[0].new_zeros(count, count), gradient[0].new_zeros((count,) * 4)]
        if chosen.weights.numel():
            outputs, products = self._output_directions(inputs, directions)
            rows = fisher_rows(outputs, products, self.family)
            fisher = (rows * chosen.weights.view(-1, 1, 1)).sum(0) / chosen.count
            if chosen.adapted:  # sums over the drawn rows, so that the average is their mean
                drawn = rows if chosen.drawn is None else rows[chosen.drawn]
                scale = 1.0 / (chosen.count * chosen.drawn_share)
                second_moment = torch.einsum("ijk,ilm->jklm", drawn, drawn)
                moments = [drawn.sum(0) * scale, second_moment * scale]
        averaged = [fisher, *moments] if chosen.adapted else [fisher]
        fisher, *moments = self.communicator.average(averaged, chosen.count)[0]
        upper = [(i, j) for i in range(count) for j in range(i, count)]  # symmetric
        inner = dots(
            [(directions[i], directions[j]) for i, j in upper] + [(gradient, d) for d in directions]
        )
        euclidean = fisher.new_zeros(count, count)
        for (i, j), value in zip(upper, inner[: len(upper)], strict=True):
            euclidean[i, j] = euclidean[j, i] = float(value)
        linear = fisher.new_tensor([float(value) for value in inner[len(upper) :]])
        curvature, damped = fisher + weight_decay * euclidean, damping * euclidean
        self.moments = RowMoments(*moments, curvature, damped) if chosen.adapted else None
        return curvature, damped, linear

    def updated_row_variance(self, previous: float | None, solved: StepCoefficients):
        """The running average of s² (`row_variance` of the drawn rows, times the rows'
        `variance_scale`) with this step's, observed at the minimiser `solved` of the last
        `matrices`; `previous` when the rows did not adapt or the model predicts no decrease."""
        if self.moments is None:
            return previous
        coefficients = self.moments.mean.new_tensor([solved.alpha, solved.mu])
        observed = row_variance(
            self.moments.mean,
            self.moments.second_moment,
            self.moments.curvature,
            self.moments.damped,
            coefficients[: self.moments.mean.shape[0]],
        )
        if observed is None:
            return previous
        observed *= self.chosen.variance_scale
        if previous is None:
            return observed
        return ROW_VARIANCE_DECAY * previous + (1 - ROW_VARIANCE_DECAY) * observed

    def _output_directions(self, inputs, directions):
        if self.chain is not None and self.capture.inputs:  # this step's pass was kept
            keyed = [dict(zip(map(id, self.params), d, strict=True)) for d in directions]
            return self.chain.output_directions(self.capture, self.rows, keyed)
        named = [
            {self.names[p]: d for p, d in zip(self.params, direction, strict=True)}
            for direction in directions
        ]
        with torch.enable_grad():
            return output_directions(self.model, inputs[self.rows], named)


@dataclass
class StepCoefficients:
    """The minimiser (α, μ) of the damped model over span{Δ, δ₀}, with two model changes.

    `damped_change` is M̂(δ) − M̂(0) for the damped curvature F + (λ + η)I that α and μ minimise
    (§7); `predicted_change` is M(δ) − M(0) for the model of h itself, F + ηI without λ, which
    the Levenberg–Marquardt ratio ρ compares h's actual change with (§6.5).  λ is a trust-region
    device, not curvature of h: counting ½λ‖δ‖² in the prediction shrinks it, inflates ρ and
    lets λ fall after steps the real model did not predict so well.
    """

    alpha: float
    mu: float
    damped_change: float
    predicted_change: float


def model_change(
    curvature: torch.Tensor, linear: torch.Tensor, coefficients: torch.Tensor
) -> torch.Tensor:
    """½ cᵀQc + bᵀc: the change of the quadratic model at δ = Σ cᵢvᵢ."""
    return 0.5 * coefficients @ curvature @ coefficients + linear @ coefficients


def solve_step_coefficients(
    curvature: torch.Tensor, damping: torch.Tensor, linear: torch.Tensor
) -> StepCoefficients:
    """Minimise ½ cᵀ(Q + D)c + bᵀc over c = (α, μ) with |μ| <= MAX_MOMENTUM, or over α alone
    when Q is 1×1 (§7).

    Q = [vᵢᵀ(F + ηI)vⱼ], D = [λ vᵢᵀvⱼ] and b = [∇hᵀvᵢ].  A 2×2 system too close to singular for
    its float32 entries (δ₀ nearly parallel to Δ in the damped metric, or zero) falls back to
    the α-only solution: there the split between α and μ is rounding noise, and solving it
    anyway gives the huge opposite-signed α, μ pairs whose sum the model never checked.  When
    the free minimum has |μ| > MAX_MOMENTUM, the minimum over the band lies on its edge
    (the model is convex): μ = ±MAX_MOMENTUM and α = −(b₀ + μ(Q + D)₀₁)/(Q + D)₀₀.
    """
    curvature, damping, linear = curvature.double(), damping.double(), linear.double()
    damped = curvature + damping
    coefficients = None
    if damped.shape[0] == 2:
        det = damped[0, 0] * damped[1, 1] - damped[0, 1] ** 2
        if det > SINGULAR_2X2 * damped[0, 0] * damped[1, 1]:
            coefficients = -torch.linalg.solve(damped, linear)
            if abs(coefficients[1]) > MAX_MOMENTUM:
                mu = MAX_MOMENTUM * torch.sign(coefficients[1])
                alpha = -(linear[0] + mu * damped[0, 1]) / damped[0, 0]
                coefficients = torch.stack([alpha, mu])
    if coefficients is None:
        coefficients = linear.new_zeros(damped.shape[0])
        coefficients[0] = -linear[0] / damped[0, 0]
    return StepCoefficients(
        float(coefficients[0]),
        float(coefficients[1]) if len(coefficients) == 2 else 0.0,
        float(model_change(damped, linear, coefficients)),
        float(model_change(curvature, linear, coefficients)),
    )
