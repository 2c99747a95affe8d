"""The optimizer's update with its DEFAULT Fisher, the true one (paper §5), against the formula.

The statistics' targets are drawn from the model's predictive distribution with the optimizer's
generator, seeded by `seed`: the reference draws the same targets from a generator seeded alike,
builds the factors from them by brute force and applies the paper's formula. Targets taken from
the data instead (the empirical Fisher), or drawn from another distribution or generator, change
G and fail these tests. The draws themselves are checked against the distributions they come
from.
"""

import pytest
import torch

from kfac import KFAC
from kfac.losses import sample_targets
from tests.kfac import explicit
from tests.kfac.explicit import batch, tiny_net

FAMILIES = ["cross_entropy", "bce", "mse"]
SEED = 7
LR, DAMPING, ETA = 0.3, 0.05, 1e-3
GAMMA = (DAMPING + ETA) ** 0.5  # γ = sqrt(λ + η) without γ search (§6.6)
INVERSES = {  # F̌⁻¹ (§4.2) and F̂⁻¹ (§4.3)
    "block_diagonal": explicit.block_diagonal_inverse,
    "block_tridiagonal": explicit.block_tridiagonal_inverse,
}


def true_fisher_factors(model, x, family):
    """Ā and G from targets sampled as the optimizer samples them on its first step."""
    with torch.no_grad():
        outputs = model(x)
    targets = sample_targets(outputs, family, torch.Generator().manual_seed(SEED))
    return explicit.factors(*explicit.per_example_activations(model, x, targets, family))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("structure", sorted(INVERSES))
def test_fixed_lr_update_uses_the_fisher_at_sampled_targets(family, structure):
    """δ = −lr · F̆⁻¹∇h with F̆ built from sampled targets and ∇h from the data (§4, §5)."""
    inverse = INVERSES[structure]
    model, (x, y) = tiny_net(), batch(family)
    big_a, big_g = true_fisher_factors(model, x, family)
    gradient = explicit.gradient_vector(model, x, y, family, ETA)
    expected = -LR * inverse(big_a, big_g, GAMMA) @ gradient
    before = explicit.parameter_vector(model).detach().clone()
    opt = KFAC(
        model,
        family,
        structure=structure,
        lr=LR,
        damping=DAMPING,
        weight_decay=ETA,
        adapt_damping=False,
        stats_interval=1,
        inverse_interval=1,
        seed=SEED,
    )
    opt.step(x, y)
    update = explicit.parameter_vector(model).detach() - before
    torch.testing.assert_close(update, expected, rtol=1e-8, atol=1e-11)
    # The data's targets would have given another update: the test tells the two apart.
    empirical = (
        -LR
        * inverse(
            *explicit.factors(*explicit.per_example_activations(tiny_net(), x, y, family)), GAMMA
        )
        @ explicit.gradient_vector(tiny_net(), x, y, family, ETA)
    )
    assert not torch.allclose(update, empirical, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_adaptive_first_step_is_alpha_times_the_true_fisher_proposal(family):
    """The default adaptive step, first iteration: δ = αΔ with Δ = −F̌⁻¹∇h from sampled
    targets and α = −∇hᵀΔ / Δᵀ(F + (λ + η)I)Δ, F the exact Fisher of the batch (§6.4, §7)."""
    model, (x, y) = tiny_net(), batch(family)
    big_a, big_g = true_fisher_factors(model, x, family)
    gradient = explicit.gradient_vector(model, x, y, family, ETA)
    proposal = -explicit.block_diagonal_inverse(big_a, big_g, GAMMA) @ gradient
    fisher = explicit.exact_fisher(model, x, family)
    curvature = proposal @ fisher @ proposal + (DAMPING + ETA) * proposal @ proposal
    expected = -(gradient @ proposal) / curvature * proposal
    before = explicit.parameter_vector(model).detach().clone()
    opt = KFAC(
        model,
        family,
        damping=DAMPING,
        weight_decay=ETA,
        adapt_damping=False,
        stats_interval=1,
        inverse_interval=1,
        **explicit.WHOLE_BATCH_MODEL,
        seed=SEED,
    )
    opt.step(x, y)
    update = explicit.parameter_vector(model).detach() - before
    torch.testing.assert_close(update, expected, rtol=1e-8, atol=1e-11)


# --- the draws --------------------------------------------------------------------------------

DRAWS = 20_000  # each row repeated this often: 5σ of a frequency is at most 5·0.5/√20000 ≈ 0.018


def repeated(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).repeat_interleave(DRAWS, 0)


def per_row(values: torch.Tensor, rows: int) -> torch.Tensor:
    return values.reshape(rows, DRAWS, *values.shape[1:])


def test_categorical_draws_follow_the_softmax():
    logits = [[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]
    drawn = sample_targets(repeated(logits), "cross_entropy", torch.Generator().manual_seed(0))
    frequencies = torch.nn.functional.one_hot(per_row(drawn, 2), 3).double().mean(1)
    expected = torch.softmax(torch.tensor(logits, dtype=torch.float64), 1)
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.018)


def test_bernoulli_draws_follow_the_sigmoid():
    logits = [[2.0, -1.0, 0.0]]
    drawn = sample_targets(repeated(logits), "bce", torch.Generator().manual_seed(0))
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    expected = torch.sigmoid(torch.tensor(logits, dtype=torch.float64))
    torch.testing.assert_close(per_row(drawn, 1).mean(1), expected, rtol=0, atol=0.018)


def test_gaussian_draws_have_the_output_as_mean_and_unit_variance():
    means = [[3.0, -2.0]]
    drawn = per_row(sample_targets(repeated(means), "mse", torch.Generator().manual_seed(0)), 1)
    # 5σ of a mean of 20,000 unit normals is 0.035; of their variance, 5·√(2/20000) = 0.05.
    torch.testing.assert_close(drawn.mean(1), torch.tensor(means).double(), rtol=0, atol=0.035)
    torch.testing.assert_close(drawn.var(1), torch.ones(1, 2).double(), rtol=0, atol=0.05)


def test_the_seed_decides_the_draws():
    outputs = torch.zeros(50, 4, dtype=torch.float64)
    first, again, other = (
        sample_targets(outputs, "cross_entropy", torch.Generator().manual_seed(seed))
        for seed in (SEED, SEED, SEED + 1)
    )
    assert torch.equal(first, again) and not torch.equal(first, other)
