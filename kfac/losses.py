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
    outputs: torch.Tensor, family: LossFamily | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw y ~ p(y|x) for each example: the targets of the true Fisher (paper §5)."""
    family = LossFamily(family)
    outputs = outputs.detach()
    if family is LossFamily.CROSS_ENTROPY:
        probs = torch.softmax(outputs, dim=1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    if family is LossFamily.BCE:
        return torch.bernoulli(torch.sigmoid(outputs), generator=generator)
    noise = torch.randn(outputs.shape, generator=generator, device=outputs.device)
    return outputs + noise.to(outputs.dtype)


def output_fisher_bilinear(
    outputs: torch.Tensor, u: torch.Tensor, v: torch.Tensor, family: LossFamily | str
) -> torch.Tensor:
    """Batch mean of uᵀ F_R(z) v, where u, v are output-space directions (e.g. J·δ).

    F_R is diag(p) − ppᵀ for the categorical, diag(p(1 − p)) for Bernoulli, I for the Gaussian.
    """
    family = LossFamily(family)
    batch = outputs.shape[0]
    if family is LossFamily.CROSS_ENTROPY:
        p = torch.softmax(outputs, dim=1)
        value = (p * u * v).sum() - ((p * u).sum(1) * (p * v).sum(1)).sum()
    elif family is LossFamily.BCE:
        p = torch.sigmoid(outputs)
        value = (p * (1 - p) * u * v).sum()
    else:
        value = (u * v).sum()
    return value / batch
