"""The exact quadratic model of the objective along the update directions (paper §6.4, §7).

M(δ) = h(θ) + ∇hᵀδ + ½ δᵀ(F + (λ + η)I)δ, with F the exact Fisher (= Gauss–Newton) of the
mini-batch.  For δ = αΔ + μδ₀ only the 2×2 matrix of products vᵀ C w between Δ and δ₀ matters;
the Fisher part vᵀFw = E[(Jv)ᵀ F_R (Jw)] needs one forward-mode Jacobian–vector product per
direction, never the matrix itself, on the rows of the mini-batch that `kfac.model_rows`
chooses (which examples, and how many: issue 16).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn
from torch.func import functional_call

from kfac.enums import LossFamily
from kfac.linearisation import LinearisedChain, LowRankFactors
from kfac.losses import output_fisher_product
from kfac.model_rows import ChosenRows, RowMoments, choose_rows, running_row_variance
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


def fisher_rows(
    outputs: torch.Tensor, products: list[torch.Tensor], family: LossFamily
) -> torch.Tensor:
    """[(Jᵢvⱼ)ᵀ F_R(zᵢ) (Jᵢvₖ)] for each row i, shape (rows, k, k), exactly symmetric, from the
    output products J·vⱼ of the k directions (F_R(zᵢ) formed once for all of them)."""
    stacked = torch.stack([p.flatten(1) for p in products], dim=1)  # (rows, k, outputs)
    curved = output_fisher_product(outputs.flatten(1).unsqueeze(1), stacked, family)
    gram = stacked @ curved.transpose(1, 2)  # symmetric up to rounding
    return gram.triu() + gram.triu(1).transpose(1, 2)


class QuadraticModel:
    """The matrices of the quadratic model over given directions for `kfac.KFAC` (§7).

    The Fisher part comes from J·v on the rows that `choose_rows` picked from this step's
    training pass: read off that pass, which the capture kept, when the model is a chain of
    K-FAC layers (`kfac.linearisation`), from dual forward passes otherwise.
    """

    def __init__(
        self,
        model: nn.Module,
        family: LossFamily,
        blocks,
        params,
        capture,
        communicator,
        low_rank: LowRankFactors,
    ):
        self.model, self.family, self.low_rank = model, family, low_rank
        self.params, self.capture, self.communicator = params, capture, communicator
        self.names = {p: name for name, p in model.named_parameters()}
        self.chain = LinearisedChain.of(model, blocks, params)
        self.chosen = ChosenRows(slice(0, 0), torch.zeros(0), 0)
        self.moments: RowMoments | None = None
        self.euclidean = torch.zeros(0, 0)  # [vᵢᵀvⱼ] of the last `matrices`' directions

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
        step_cost: float | None = None,
    ) -> None:
        """This step's rows among this rank's examples (`kfac.model_rows.choose_rows`)."""
        family, communicator = self.family, self.communicator
        self.chosen = choose_rows(
            outputs, share, sampling, generator, batch, family, communicator, variance, step_cost
        )

    def matrices(self, inputs, gradient, directions, weight_decay, damping):
        """[vᵢᵀ(F + ηI)vⱼ], [λvᵢᵀvⱼ] and [∇hᵀvᵢ], F the exact Fisher estimated on the chosen
        rows: Σᵢ wᵢ(Jᵢvⱼ)ᵀF_R(Jᵢvₖ)/count on each rank, averaged over the ranks weighted by
        their counts (`choose_rows`); when the rows adapt, also the drawn rows' `RowMoments`."""
        count, chosen = len(directions), self.chosen
        fisher = gradient[0].new_zeros(count, count)  # a rank with none of the subset
        moments = []  # the drawn rows' E[fᵢ], E[fᵢ ⊗ fᵢ], all-reduced only when the rows adapt
        if chosen.adapted:
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
        fisher, *moments = self.communicator.average([fisher, *moments], chosen.count)[0]
        upper = [(i, j) for i in range(count) for j in range(i, count)]  # symmetric
        inner = dots(
            [(directions[i], directions[j]) for i, j in upper] + [(gradient, d) for d in directions]
        )
        euclidean = fisher.new_zeros(count, count)
        for (i, j), value in zip(upper, inner[: len(upper)], strict=True):
            euclidean[i, j] = euclidean[j, i] = float(value)
        linear = fisher.new_tensor([float(value) for value in inner[len(upper) :]])
        curvature, damped = fisher + weight_decay * euclidean, damping * euclidean
        self.euclidean = euclidean
        self.moments = RowMoments(*moments, curvature, damped) if chosen.adapted else None
        return curvature, damped, linear

    def combination_norm(self, coefficients: list[float]) -> float:
        """‖Σ cᵢvᵢ‖ over the directions of the last `matrices`, from their Gram [vᵢᵀvⱼ]: no
        pass over the vectors (coefficients beyond the directions' count are ignored)."""
        gram = self.euclidean.double()
        c = gram.new_tensor(coefficients[: gram.shape[0]])
        return math.sqrt(max(float(c @ gram @ c), 0.0))

    def updated_row_variance(self, previous: float | None, solved: StepCoefficients):
        """The running average of s² with this step's, observed on the drawn rows of the last
        `matrices` at their minimiser `solved` (`kfac.model_rows.running_row_variance`);
        `previous` when the rows did not adapt."""
        if self.moments is None:
            return previous
        coefficients = [solved.alpha, solved.mu]
        scale = self.chosen.variance_scale
        return running_row_variance(previous, self.moments, coefficients, scale)

    def _output_directions(self, inputs, directions):
        if self.chain is not None and self.capture.inputs:  # this step's pass was kept
            keyed = [dict(zip(map(id, self.params), d, strict=True)) for d in directions]
            return self.chain.output_directions(self.capture, self.rows, keyed, self.low_rank)
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
