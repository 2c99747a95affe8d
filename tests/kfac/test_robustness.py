"""KFAC.step on a blown-up model and its choice of the per-example preconditioning product."""

import math

import pytest
import torch
from torch import nn

from kfac import KFAC


def wide_conv_then_wide_linear() -> nn.Sequential:
    """A 16→16 3×3 conv on 8×8 maps (d_a = 145, |T| = 64), then a Linear of 1,025 inputs
    (small enough that inverting its Ā, 1025², costs little; 64 channels cost 11 s of CPU)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)
    )


def test_conv_layers_count_every_location_as_a_row_of_the_per_example_product():
    """With 4 examples the conv layer has 4·64 = 256 patch rows: the per-example product
    (256·(16² + 145² + 16·145) ≈ 6.0M) costs more than G⁻¹VΩ⁻¹ (16·145·161 ≈ 0.37M), although
    4 rows would cost only 0.094M. The Linear layer, with 4 rows (4·(10² + 1025² + 10·1025)
    ≈ 4.2M against 10·1025·1035 ≈ 10.6M), still prefers it."""
    model = wide_conv_then_wide_linear()
    opt = KFAC(model, lr=0.1, damping=0.1, weight_decay=0.0, stats_interval=2)  # η = 0: see
    # KFAC._forward_backward, the per-example product has no ℓ2 term
    chosen = []
    original = opt.preconditioner.precondition

    def spy(matrices, per_example=None):
        chosen.append(sorted(per_example or {}))
        return original(matrices, per_example)

    opt.preconditioner.precondition = spy
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # a statistics step, a step without statistics, and another
        x = torch.randn(4, 16, 8, 8, generator=generator)
        opt.step(x, torch.randint(0, 10, (4,), generator=generator))
    assert chosen == [["3"], ["3"], ["3"]]
    assert opt.capture.rows_per_example == {"0": 64, "3": 1}
    conv, linear = opt.blocks
    assert not opt.preconditioner.prefers_per_example(conv, 4 * 64)
    assert opt.preconditioner.prefers_per_example(linear, 4)


def test_steps_without_statistics_skip_the_capture_when_no_layer_prefers_per_example():
    """Batch 16: the conv layer's 1,024 patch rows make the per-example product dearer (by
    the batch alone, 16 rows, it would have looked cheaper), and the 65×10 Linear layer
    prefers G⁻¹VĀ⁻¹ too; so only statistics steps record activations (and form patches)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)
    )
    opt = KFAC(model, lr=0.1, damping=0.1, weight_decay=0.0, stats_interval=2)  # η = 0: see
    # KFAC._forward_backward, the per-example product has no ℓ2 term
    conv = opt.blocks[0]
    assert opt.preconditioner.prefers_per_example(conv, 16)  # the old, batch-only comparison
    recorded = []
    original = opt.capture.record

    def spy(enabled=True):
        recorded.append(enabled)
        return original(enabled)

    opt.capture.record = spy
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(16, 64, 8, 8, generator=generator)
        opt.step(x, torch.randint(0, 10, (16,), generator=generator))
    assert recorded == [True, False, True]


def test_a_non_finite_loss_skips_the_update_instead_of_sampling_from_nan():
    """Sampling the statistics' targets from NaN outputs would raise; the step returns the
    non-finite loss (the training loop's divergence signal) and leaves the parameters alone."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    opt = KFAC(model, lr=0.1, damping=0.1)
    with torch.no_grad():
        model[0].weight.fill_(math.nan)
    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(torch.randn(5, 1, 6, 6), torch.randint(0, 3, (5,)))
    assert math.isnan(float(loss)) and not loss.requires_grad
    for p, old in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), old, equal_nan=True)
    assert "no update" in opt.notes[-1]


@pytest.mark.parametrize("loss", ["cross_entropy", "bce", "mse"])
def test_infinite_outputs_are_reported_as_a_non_finite_loss(loss):
    model = nn.Linear(3, 2)
    opt = KFAC(model, loss, lr=0.1, damping=0.1)
    with torch.no_grad():
        model.bias.fill_(math.inf)
    targets = torch.tensor([0, 1]) if loss == "cross_entropy" else torch.ones(2, 2)
    assert not math.isfinite(float(opt.step(torch.ones(2, 3), targets)))
