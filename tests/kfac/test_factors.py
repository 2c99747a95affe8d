"""The Kronecker factors' running averages (paper §5) against the rule written out by hand.

At the k-th statistics update the average keeps weight ε_k = min(1 − 1/k, decay) on its old
value: the first updates are plain means of every batch seen (no bias towards the zero start),
later ones an exponential average with weight `decay`.
"""

import pytest
import torch
from torch import nn

from kfac import KFAC
from kfac.factors import (
    SYMMETRIC_BLOCKS_FROM,
    running_average_weight,
    second_moment,
    update_running_average,
)
from tests.kfac import explicit

DECAY = 0.6  # ε_2 = 1/2 (warm-up), ε_k = 0.6 from k = 3: both regimes within a few updates


@pytest.mark.parametrize(
    "count, decay, epsilon",
    [(1, 0.95, 0.0), (2, 0.95, 0.5), (10, 0.95, 0.9), (20, 0.95, 0.95), (21, 0.95, 0.95)]
    + [(2, 0.3, 0.3), (3, DECAY, DECAY)],
)
def test_the_weight_of_the_old_average_warms_up_to_the_decay(count, decay, epsilon):
    assert running_average_weight(count, decay) == pytest.approx(epsilon, abs=1e-15)


def test_warm_up_updates_are_the_plain_mean_of_the_batches_seen():
    estimates = torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(0))
    average = None
    for count, estimate in enumerate(estimates, start=1):
        average = update_running_average(average, estimate, count, decay=0.95)
        torch.testing.assert_close(average, estimates[:count].mean(0))


def by_hand(estimates: list[torch.Tensor], decay: float) -> list[torch.Tensor]:
    """The averages after each update: ε_k·old + (1 − ε_k)·estimate, ε_k = min(1 − 1/k, decay)."""
    averages, average = [], torch.zeros_like(estimates[0])
    for k, estimate in enumerate(estimates, start=1):
        epsilon = min(1.0 - 1.0 / k, decay)
        average = epsilon * average + (1.0 - epsilon) * estimate
        averages.append(average)
    return averages


def test_the_optimizer_folds_each_statistics_step_in_with_the_warm_up_weight():
    """Five statistics steps on five batches: after each, every layer's Ā and G equal the
    average by hand of the brute-force per-batch factors (taken at the parameters of that step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    family = "mse"
    opt = KFAC(
        model,
        family,
        fisher="empirical",
        lr=0.1,
        adapt_damping=False,
        stats_interval=1,
        inverse_interval=1,
        factor_decay=DECAY,
    )
    generator = torch.Generator().manual_seed(1)
    per_batch_a, per_batch_g = [], []
    for _ in range(5):
        x = torch.randn(32, 3, generator=generator, dtype=torch.float64)
        y = torch.randn(32, 2, generator=generator, dtype=torch.float64)
        a_rows, g_rows = explicit.per_example_activations(model, x, y, family)
        big_a, big_g = explicit.factors(a_rows, g_rows)
        per_batch_a.append([big_a[i, i] for i in range(2)])
        per_batch_g.append([big_g[i, i] for i in range(2)])
        opt.step(x, y)
        for i, layer in enumerate(explicit.linear_layers(model)):
            state = opt.state[layer.weight]
            want_a = by_hand([a[i] for a in per_batch_a], DECAY)[-1]
            want_g = by_hand([g[i] for g in per_batch_g], DECAY)[-1]
            torch.testing.assert_close(state["A"], want_a, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(state["G"], want_g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("side", [7, SYMMETRIC_BLOCKS_FROM, SYMMETRIC_BLOCKS_FROM + 2, 1001])
def test_the_second_moment_is_the_explicit_mean_outer_product_and_exactly_symmetric(side):
    """Sides from SYMMETRIC_BLOCKS_FROM on multiply only the blocks on and above the diagonal
    (uneven blocks at 514 and 1001): every entry, the mirrored ones included, is E[xxᵀ] by hand,
    and the result is exactly symmetric (a plain XᵀX need not be, in its last bits)."""
    rows = torch.randn(40, side, generator=torch.Generator().manual_seed(side))
    moment = second_moment(rows, count=50)
    by_hand = sum(torch.outer(x, x) for x in rows.double()) / 50
    torch.testing.assert_close(moment.double(), by_hand, rtol=1e-5, atol=1e-5)
    if side >= SYMMETRIC_BLOCKS_FROM:
        assert torch.equal(moment, moment.T)
