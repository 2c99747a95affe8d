"""KFC (Grosse & Martens 2016) for nn.Conv2d against explicit sums, the Linear case and §5's
invariance, in float64."""

import copy
import math

import pytest
import torch
from torch import nn

from kfac import KFAC
from kfac.layers import Conv2dBlock, find_blocks
from tests.kfac.explicit import conv_and_its_linear_twin, explicit_patches


@pytest.fixture(autouse=True)
def float64_by_default():
    """These tests build many small modules; float64 makes exact comparisons meaningful."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    "stride, padding, dilation, bias",
    [(1, 0, 1, True), (2, 1, 1, True), (1, 2, 2, False), ((2, 1), (0, 1), (1, 2), True)],
)
def test_omega_and_gamma_equal_explicit_sums_over_locations(stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, (3, 2), stride=stride, padding=padding, dilation=dilation, bias=bias)
    x = torch.randn(5, 2, 7, 6)
    block = Conv2dBlock("conv", conv)
    patches = explicit_patches(x, conv)  # (B, T, d_a)
    omega = torch.einsum("bti,btj->ij", patches, patches) / x.shape[0]
    torch.testing.assert_close(block.input_factor(x), omega)
    ds = torch.randn_like(conv(x))  # (B, out, H', W')
    per_location = ds.flatten(2).transpose(1, 2)  # (B, T, out)
    gamma = torch.einsum("bti,btj->ij", per_location, per_location) / (
        per_location.shape[0] * per_location.shape[1]
    )
    torch.testing.assert_close(block.output_factor(ds), gamma)
    # s = W̄ ⟦ā⟧: the rows reproduce the convolution itself
    weight = block.weight_matrix(conv.weight, conv.bias)
    torch.testing.assert_close(patches @ weight.T, conv(x).flatten(2).transpose(1, 2))


def test_exact_fisher_equals_omega_kron_gamma_when_the_assumptions_hold():
    """One conv layer with Gaussian outputs: Ds_t = −ε_t is white noise, independent of the
    activations and across locations, so F = Ω ⊗ Γ exactly with Γ = I (§3.1)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 2, stride=1, padding=1)
    x = torch.randn(4, 2, 3, 3)
    block = Conv2dBlock("conv", conv)
    weight = block.weight_matrix(conv.weight, conv.bias).detach()

    def output(flat_matrix, example):
        matrix = flat_matrix.reshape(weight.shape[1], weight.shape[0]).T  # column-major vec
        w, b = matrix[:, :-1].reshape(conv.weight.shape), matrix[:, -1]
        return nn.functional.conv2d(example[None], w, b, padding=1).flatten()

    theta = weight.T.reshape(-1)
    jacobians = torch.stack([torch.func.jacrev(output)(theta, x[n]) for n in range(len(x))])
    exact = torch.einsum("nkp,nkq->pq", jacobians, jacobians) / len(x)  # Jᵀ F_R J, F_R = I
    omega = block.input_factor(x)
    torch.testing.assert_close(exact, torch.kron(omega, torch.eye(3)))


def kfac_step(model, x, y, family="mse", **kwargs):
    options = dict(
        fisher="empirical",
        lr=0.5,
        damping=0.0,
        weight_decay=0.0,  # the ℓ2 term is not invariant
        adapt_damping=False,
        stats_interval=1,
        inverse_interval=1,
    )
    KFAC(model, family, **{**options, **kwargs}).step(x, y)


def test_single_location_conv_is_exactly_the_equivalent_linear_layer():
    conv_net, linear_net = conv_and_its_linear_twin()
    x, y = torch.randn(40, 2, 3, 3), torch.randn(40, 3)
    torch.testing.assert_close(conv_net(x), linear_net(x))
    kfac_step(conv_net, x, y, damping=0.1)
    kfac_step(linear_net, x, y, damping=0.1)
    torch.testing.assert_close(conv_net[0].weight.reshape(4, 18), linear_net[1].weight)
    torch.testing.assert_close(conv_net(x), linear_net(x))


class ChannelAffine(nn.Module):
    """a ↦ scale·a + shift per channel: the reparameterisation of KFC's invariance (§5)."""

    def __init__(self, scale, shift):
        super().__init__()
        self.register_buffer("scale", scale[None, :, None, None])
        self.register_buffer("shift", shift[None, :, None, None])

    def forward(self, a):
        return self.scale * a + self.shift


def test_kfc_update_is_invariant_to_affine_transforms_of_the_activations():
    """With zero damping, KFC on a net and on its reparameterisation a' = s·a + c (the next
    conv's weights and bias absorbing 1/s and c) give the same function after a step."""
    torch.manual_seed(3)
    base = nn.Sequential(
        nn.Conv2d(2, 3, 2), nn.Tanh(), nn.Conv2d(3, 2, 2), nn.Flatten(), nn.Linear(8, 2)
    )
    scale, shift = torch.rand(3) + 0.5, torch.randn(3)
    second = copy.deepcopy(base[2])
    with torch.no_grad():
        second.weight.copy_(base[2].weight / scale[None, :, None, None])
        second.bias.copy_(
            base[2].bias - (second.weight * shift[None, :, None, None]).sum((1, 2, 3))
        )
    reparameterised = nn.Sequential(
        copy.deepcopy(base[0]),
        nn.Tanh(),
        ChannelAffine(scale, shift),
        second,
        nn.Flatten(),
        copy.deepcopy(base[4]),
    )
    x, y = torch.randn(60, 2, 4, 4), torch.randn(60, 2)
    torch.testing.assert_close(reparameterised(x), base(x))
    kfac_step(base, x, y)
    kfac_step(reparameterised, x, y)
    torch.testing.assert_close(reparameterised(x), base(x), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "conv, message",
    [
        (nn.Conv2d(4, 4, 3, groups=2), "groups"),
        (nn.Conv2d(2, 2, 3, padding="same"), "padding"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding"),
    ],
)
def test_unsupported_convolutions_are_refused_at_construction(conv, message):
    with pytest.raises(ValueError, match=message):
        find_blocks(nn.Sequential(conv))


def test_tridiagonal_structure_refuses_conv_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="tridiagonal"):
        KFAC(model, "mse", structure="block_tridiagonal")


def test_kfc_pre_gives_batch_norm_a_plain_momentum_update():
    """KFC-pre: fixed lr and momentum; BN parameters are not KFC layers and get −lr·∇h."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)
    )
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))
    optimizer = KFAC(
        model,
        "cross_entropy",
        lr=0.1,
        momentum=0.9,
        damping=1e-2,
        weight_decay=0.0,
        adapt_damping=False,
    )
    bn_weight = model[1].weight.detach().clone()
    optimizer.step(x, y)
    assert len(optimizer.blocks) == 2
    grad = model[1].weight.grad
    torch.testing.assert_close(model[1].weight.detach(), bn_weight - 0.1 * grad)
    for _ in range(3):
        assert torch.isfinite(optimizer.step(x, y))


def test_quadratic_model_runs_on_a_batch_norm_conv_net():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)
    )
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))
    optimizer = KFAC(model, "cross_entropy", damping=1.0)
    for _ in range(6):
        assert torch.isfinite(optimizer.step(x, y))
    # The α it chose is a number; that α is right is tests/kfac/test_adaptive_step.py's job.
    assert math.isfinite(optimizer.diagnostics["alpha"])
