"""Output distributions: negative log-likelihood, target sampling and the output Fisher.

Every loss here is −log p(y|x) of an exponential-family distribution over the network's output z,
so the Fisher of the network equals its generalised Gauss–Newton matrix Jᵀ F_R J (paper §2.2),
where F_R is the Fisher of the output distribution with respect to z.
"""

import torch
import torch.nn.functional as F

from kfac.enums import LossFamily


def negative_log_likelihood(
    outputs: torch.Tensor, targets: torch.Tensor, family: LossFamily | str
) -> torch.Tensor:
    """Per-example −log p(y|x) (up to additive constants), shape (B,)."""
    family = LossFamily(family)
    if family is LossFamily.CROSS_ENTROPY:
        return F.cross_entropy(outputs, targets, reduction="none")
    if family is LossFamily.BCE:
        per_unit = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")
        return per_unit.flatten(1).sum(1)
    return 0.5 * (outputs - targets).pow(2).flatten(1).sum(1)


def sample_targets(
    outputs: torch.Tensor,
    family: LossFamily | str,
    generator: torch.Generator | None = None,
    positions: torch.Tensor | None = None,
    total: int | None = None,
) -> torch.Tensor:
    """Draw y ~ p(y|x) for each example: the targets of the true Fisher (paper §5).

    The rows of `outputs` are examples `positions` (default 0, 1, …) of a batch of `total`
    (default: the rows given).  The noise of all `total` examples is drawn and each row keeps
    its example's, so example i's target depends on the generator and i alone: ranks that
    hold parts of one batch (kfac.distributed) together draw what one process holding it all
    draws.  Categorical targets come by inversion, y = #{k : P(y <= k) <= u} with u ~ U[0, 1).
    """
    family = LossFamily(family)
    outputs = outputs.detach()
    if positions is None:
        positions = torch.arange(outputs.shape[0])
    total = outputs.shape[0] if total is None else total
    device = generator.device if generator is not None else outputs.device
    shape = (total, *outputs.shape[1:])

    def noise(draw, size):
        values = draw(size, generator=generator, device=device, dtype=outputs.dtype)
        return values[positions.to(device)].to(outputs.device)

    if family is LossFamily.CROSS_ENTROPY:
        cumulative = torch.softmax(outputs, dim=1).cumsum(1)
        below = (cumulative <= noise(torch.rand, (total, 1))).sum(1)
        return below.clamp_max(outputs.shape[1] - 1)
    if family is LossFamily.BCE:
        return (noise(torch.rand, shape) < torch.sigmoid(outputs)).to(outputs.dtype)
    return outputs + noise(torch.randn, shape)


def output_fisher_product(
    outputs: torch.Tensor, v: torch.Tensor, family: LossFamily | str
) -> torch.Tensor:
    """F_R(zᵢ) vᵢ for each example, `outputs` broadcast against v: (diag(p) − ppᵀ)v over the
    last dimension for the categorical, p(1 − p)∘v for Bernoulli, v for the Gaussian."""
    family = LossFamily(family)
    if family is LossFamily.CROSS_ENTROPY:
        p = torch.softmax(outputs, dim=-1)
        return p * v - p * (p * v).sum(-1, keepdim=True)
    if family is LossFamily.BCE:
        p = torch.sigmoid(outputs)
        return p * (1 - p) * v
    return v


def output_fisher_rows(
    outputs: torch.Tensor, u: torch.Tensor, v: torch.Tensor, family: LossFamily | str
) -> torch.Tensor:
    """uᵢᵀ F_R(zᵢ) vᵢ for each example i (shape (N,)), where u, v are output-space directions
    (e.g. J·δ) (`output_fisher_product`)."""
    return (u * output_fisher_product(outputs, v, family)).flatten(1).sum(1)


def output_fisher_bilinear(
    outputs: torch.Tensor, u: torch.Tensor, v: torch.Tensor, family: LossFamily | str
) -> torch.Tensor:
    """Batch mean of uᵀ F_R(z) v (`output_fisher_rows`)."""
    return output_fisher_rows(outputs, u, v, family).mean()
