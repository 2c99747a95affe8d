"""J·v read off the training pass (kfac.linearisation) against brute force, and the default
adaptive step that uses it: α, μ the exact minimisers of the quadratic model of the batch's
quarter chosen by curvature (§7), with targets sampled from the model and the default
settings."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

from kfac import KFAC
from kfac.layers import LinearBlock
from kfac.vectors import combine
from tests.kfac import explicit
from tests.kfac.conftest import LOSSES, NETS, make_batch, make_net
from tests.kfac.explicit import batch, tiny_net


def conv_chain() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        nn.ELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def nested_chain() -> nn.Sequential:
    """Nested Sequentials, a module before the first layer and after the last one."""
    torch.manual_seed(4)
    inner = nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.Softplus())
    return nn.Sequential(
        nn.Identity(),
        nn.Linear(4, 5),
        nn.LeakyReLU(0.1),
        inner,
        nn.Linear(6, 3, bias=False),
        nn.SiLU(),
        nn.Linear(3, 3),
        nn.Tanh(),
    ).double()


CHAINS = {
    **{name: lambda name=name: make_net(name) for name in NETS},
    "conv": conv_chain,
    "nested": nested_chain,
}


def chain_inputs(name: str, model: nn.Module, count: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    if name == "conv":
        return torch.randn(count, 2, 8, 8, generator=generator, dtype=torch.float64)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    return torch.randn(count, first.in_features, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("rows", [slice(0, 7), torch.tensor([9, 2, 5, 11, 0, 7, 3])])
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_jacobian_vector_products_from_the_captured_pass_are_exact(name, rows):
    """z and J·v for two directions on 7 of 12 examples (the first, or scattered as the
    quadratic model's stratified rows are), from one captured forward pass over all 12, equal
    torch.func.jvp of the model on those 7 examples."""
    model = CHAINS[name]()
    x = chain_inputs(name, model)
    optimizer = KFAC(model, "mse")
    chain = optimizer.quadratic.chain
    assert chain is not None
    params = optimizer.param_groups[0]["params"]
    generator = torch.Generator().manual_seed(6)
    directions = [
        [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params] for _ in range(2)
    ]
    with optimizer.capture.record(), torch.no_grad():
        model(x)
    keyed = [dict(zip(map(id, params), d, strict=True)) for d in directions]
    outputs, products = chain.output_directions(optimizer.capture, rows, keyed)

    names = [name for name, _ in model.named_parameters()]
    primals = {n: p.detach() for n, p in model.named_parameters()}
    for direction, product in zip(directions, products, strict=True):
        tangent = dict(zip(names, direction, strict=True))
        want_outputs, want = jvp(
            lambda p: functional_call(model, p, (x[rows],)), (primals,), (tangent,)
        )
        torch.testing.assert_close(outputs, want_outputs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(product, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "model, layers",
    [
        (nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)), None),
        (nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)), None),
        (nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.1), nn.Linear(5, 3)), None),
        (nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), ["0"]),
        (nn.Sequential(nn.Linear(4, 5), nn.PReLU(), nn.Linear(5, 3)), None),
        (nn.ModuleDict({"a": nn.Linear(4, 3)}), None),
    ],
    ids=["batch_norm", "inplace", "dropout", "layer_not_preconditioned", "prelu", "not_sequential"],
)
def test_models_whose_jvp_the_training_pass_does_not_give_keep_the_dual_passes(model, layers):
    """Examples coupled in the batch, outputs overwritten in place, random masks, parameters
    outside the K-FAC layers or a forward that is not a chain: no plan."""
    assert KFAC(model, "mse", layers=layers).quadratic.chain is None


def count_forward_passes(model: nn.Module) -> list[int]:
    calls = [0]

    def count(module, args):
        calls[0] += 1

    model.register_forward_pre_hook(count)
    return calls


def test_the_default_step_runs_the_model_once_and_once_more_for_rho():
    """The quadratic model reads J·Δ and J·δ₀ off the training pass: one forward pass of the
    model per step, a second on the Levenberg–Marquardt steps (ρ needs h(θ + δ))."""
    model = make_net("tanh_bias")
    x, y = make_batch(model, "cross_entropy")
    optimizer = KFAC(model, "cross_entropy")
    calls = count_forward_passes(model)
    per_step = []
    for _ in range(10):
        before = calls[0]
        optimizer.step(x, y)
        per_step.append(calls[0] - before)
    assert per_step == [1, 1, 1, 1, 2, 1, 1, 1, 1, 2]


@pytest.mark.parametrize("family", LOSSES)
@pytest.mark.parametrize("damping", [None, 1e-3])
@pytest.mark.parametrize("sampling", [None, "curvature", "first"])
@pytest.mark.parametrize("path", ["training_pass", "dual_passes"])
def test_default_step_minimises_the_exact_quadratic_model_of_the_chosen_rows(
    family, damping, sampling, path
):
    """Default settings (sampled targets, quadratic_fraction ¼ with the rows of "auto": by
    curvature for cross-entropy, the first otherwise; λ₀ = 1, η = 1e-5; and once λ = 1e-3,
    where F dominates the damped model): on a second step, on another batch than the first,
    δ = αΔ + μδ₀ with (α, μ) the minimiser of ½cᵀ[vᵢᵀ(F + (λ + η)I)vⱼ]c + [∇hᵀvᵢ]ᵀc,
    F = Σᵢ wᵢJᵢᵀF_R Jᵢ/Σᵢ wᵢ over the 16 chosen rows by full per-example Jacobians, ∇h the
    whole batch's gradient with the ℓ2 term ηθ (§6.1).  The rows by curvature: the 8 of
    largest tr F_R(zᵢ) with weight 1, then 8 others with weight 56/8; the first: the first 16,
    weight 1.  J·v read off the training pass or, that plan removed, from dual passes."""
    model = make_net("mixed_four_layers")
    x, y = make_batch(model, family)
    options = {} if damping is None else {"damping": damping}
    options |= {} if sampling is None else {"quadratic_sampling": sampling}
    optimizer = KFAC(model, family, **options)
    if path == "dual_passes":
        optimizer.quadratic.chain = None
    lam, eta = (optimizer.param_groups[0][key] for key in ("damping", "weight_decay"))
    optimizer.step(*make_batch(model, family, seed=2))  # δ₀ not parallel to the next Δ
    layers = explicit.linear_layers(model)
    previous_update = torch.cat(
        [
            explicit.vec_matrix(
                m,
                optimizer.state[m.weight]["previous_update"],
                None if m.bias is None else optimizer.state[m.bias]["previous_update"],
            )
            for m in layers
        ]
    )
    theta = explicit.parameter_vector(model).detach().clone()
    gradient = explicit.gradient_vector(model, x, y, family) + eta * theta
    with torch.no_grad():
        trace = explicit.output_fisher(model(x), family).diagonal(dim1=1, dim2=2).sum(1)
    optimizer.step(x, y)
    d = optimizer.diagnostics
    assert d["mu"] != 0  # the 2×2 model was solved, not its α-only fall-back
    delta = explicit.parameter_vector(model).detach() - theta
    rows = torch.arange(64)[optimizer.quadratic.rows].tolist()
    weights = optimizer.quadratic.weights.tolist()
    if sampling == "first" or (sampling is None and family != "cross_entropy"):
        assert rows == list(range(16)) and weights == [1.0] * 16
    else:
        top = sorted(range(64), key=lambda i: -float(trace[i]))[:8]  # stable: ties keep order
        assert sorted(rows[:8]) == sorted(top)
        assert len(set(rows)) == 16
        assert weights == [1.0] * 8 + [56 / 8] * 8
    model_at(model, theta)
    pairs = zip(rows, weights, strict=True)
    fisher = sum(w * explicit.exact_fisher(model, x[i : i + 1], family) for i, w in pairs)
    fisher = fisher / sum(weights)
    proposal = (delta - d["mu"] * previous_update) / d["alpha"]
    directions = torch.stack([proposal, previous_update])
    euclidean = directions @ directions.T
    undamped = directions @ fisher @ directions.T + eta * euclidean  # the model of h: F + ηI
    damped = undamped + lam * euclidean
    linear = directions @ gradient
    alpha, mu = (-torch.linalg.solve(damped, linear)).tolist()
    if abs(mu) > 1:  # the convex model's minimum over |μ| <= 1 (kfac.quadratic) is on the edge
        mu = math.copysign(1.0, mu)
        alpha = float(-(linear[0] + mu * damped[0, 1]) / damped[0, 0])
    assert d["alpha"] == pytest.approx(alpha, rel=1e-8)
    assert d["mu"] == pytest.approx(mu, rel=1e-8, abs=1e-12)
    coefficients = torch.tensor([alpha, mu], dtype=torch.float64)
    predicted = 0.5 * coefficients @ undamped @ coefficients + linear @ coefficients
    assert d["quadratic_model"] == pytest.approx(float(predicted), rel=1e-8)
    # The check can tell: the Fisher of the whole batch gives another step.
    whole = directions @ explicit.exact_fisher(model, x, family) @ directions.T
    other = (-torch.linalg.solve(whole + (eta + lam) * euclidean, linear)).tolist()
    assert abs(other[0] - alpha) > 1e-6 * abs(alpha) or abs(other[1] - mu) > 1e-6 * abs(mu)


def model_at(model: nn.Module, theta: torch.Tensor) -> nn.Module:
    """The model with its Linear layers' [W b] set back to the column-major vector θ."""
    with torch.no_grad():
        for name, value in explicit.linear_parameters(model, theta).items():
            model.get_parameter(name).copy_(value)
    return model


def per_example_direction():
    """A default optimizer (η = 0, so the 30 → 25 layer of a batch of 6 preconditions per
    example) after one step, with its second step's pass captured; its parameters, and ∇h and
    the layers' rows (ā, ĝ) of that pass."""
    model = tiny_net(widths=(4, 30, 25, 3))
    x, y = batch("bce", n=6)
    optimizer = KFAC(model, "bce", weight_decay_steps=0)
    optimizer.step(x, y)
    _, per_example = optimizer._forward_backward(x, y, 2)
    params = optimizer.param_groups[0]["params"]
    gradient = [p.grad for p in params]
    return optimizer, params, gradient, optimizer.capture.per_example_rows(per_example)


@pytest.mark.parametrize("rows", [slice(0, 4), torch.tensor([5, 1, 3])])
def test_j_delta_through_the_per_example_factors_equals_the_dense_product(rows):
    """V ā of F̆⁻¹∇W̄ = left @ right computed as (ā rightᵀ) leftᵀ, bias column included, gives
    the J·v of the dense tensor the preconditioner cut from the same product; the factors are
    taken for the per-example layer alone (the dense ones have none)."""
    optimizer, params, gradient, per_example = per_example_direction()
    preconditioned = optimizer._precondition(gradient, per_example)
    low_rank = optimizer.preconditioner.low_rank_factors
    by_param = dict(zip(map(id, params), preconditioned, strict=True))
    factored = [
        b.name
        for b in optimizer.blocks
        if (factors := low_rank(by_param[id(b.module.weight)])) is not None
        and b.apply_low_rank(optimizer.capture.inputs[b.name][rows], *factors) is not None
    ]
    assert factored == [optimizer.blocks[1].name]
    generator = torch.Generator().manual_seed(7)
    other = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    keyed = [dict(zip(map(id, params), d, strict=True)) for d in (preconditioned, other)]
    chain, capture = optimizer.quadratic.chain, optimizer.capture
    outputs, products = chain.output_directions(capture, rows, keyed, low_rank)
    want_outputs, want = chain.output_directions(capture, rows, keyed)
    torch.testing.assert_close(outputs, want_outputs, rtol=0, atol=0)
    for product, expected in zip(products, want, strict=True):
        torch.testing.assert_close(product, expected, rtol=1e-10, atol=1e-12)


def test_the_default_step_past_its_l2_phase_reads_j_delta_through_the_factors(monkeypatch):
    """The optimizer hands its preconditioner's factors to the quadratic model: with the
    defaults past the ℓ2 phase (shortened here to none), each step's J·Δ of the per-example
    layer comes through them, once a step (J·δ₀ does not: δ₀ is a dense sum of steps)."""
    taken = []
    apply_low_rank = LinearBlock.apply_low_rank

    def spy(block, *args):
        product = apply_low_rank(block, *args)
        taken.append(block.name if product is not None else None)
        return product

    monkeypatch.setattr(LinearBlock, "apply_low_rank", spy)
    model = tiny_net(widths=(4, 30, 25, 3))
    x, y = batch("bce", n=6)
    optimizer = KFAC(model, "bce", weight_decay_steps=0)
    for _ in range(3):
        optimizer.step(x, y)
    assert taken == [optimizer.blocks[1].name] * 3


def test_the_factors_are_forgotten_once_their_tensor_changes_or_is_superseded():
    """δ written over Δ in place, or a new F̆⁻¹∇h formed: the old factors no longer stand for
    the tensor, and J·v must come from the tensor itself."""
    optimizer, params, gradient, per_example = per_example_direction()
    low_rank = optimizer.preconditioner.low_rank_factors
    position = [id(p) for p in params].index(id(optimizer.blocks[1].module.weight))
    first = optimizer._precondition(gradient, per_example)
    second = optimizer._precondition(gradient, per_example)
    assert low_rank(first[position]) is None
    assert low_rank(second[position]) is not None
    combine(0.5, second, 0.0, [None])
    assert low_rank(second[position]) is None
