"""The quadratic model's rows chosen by curvature (kfac.model_rows.stratified_rows, issue 16)
against brute force: the most curved half, a uniform draw from the rest, weights that make
Σᵢ wᵢ JᵢᵀF_R Jᵢ / B unbiased for the batch's Fisher, and the model's estimate on them."""

import itertools

import pytest
import torch

from kfac import KFAC
from kfac.enums import LossFamily
from kfac.model_rows import curvature_weights, stratified_rows
from tests.kfac import explicit
from tests.kfac.conftest import LOSSES, make_batch, make_net


def test_the_most_curved_half_is_kept_and_the_rest_drawn_by_the_smallest_keys():
    generator = torch.Generator().manual_seed(3)
    curvature = torch.rand(20, generator=generator, dtype=torch.float64)
    keys = torch.rand(20, generator=generator, dtype=torch.float64)
    rows, weights = stratified_rows(curvature, 7, keys)
    top = sorted(range(20), key=lambda i: -float(curvature[i]))[:3]
    others = sorted(set(range(20)) - set(top), key=lambda i: float(keys[i]))
    assert sorted(rows[:3].tolist()) == sorted(top)
    assert rows[3:].tolist() == others[:4]
    assert weights.tolist() == [1.0] * 3 + [17 / 4] * 4
    assert float(weights.sum()) == 20


@pytest.mark.parametrize("family", LOSSES)
def test_the_mean_over_every_draw_is_the_whole_batch_fisher(family):
    """B = 6, 4 rows: the 2 most curved and each of the C(4, 2) = 6 pairs of the others (keys 0
    on the pair); the mean of Σᵢ wᵢ JᵢᵀF_R Jᵢ / B over the draws is the batch's exact Fisher.
    The curvature is tr F_R(zᵢ) of the explicit output Fisher."""
    model = explicit.tiny_net()
    x, _ = explicit.batch(family, n=6)
    with torch.no_grad():
        outputs = model(x)
    curvature = curvature_weights(outputs, LossFamily(family))
    trace = explicit.output_fisher(outputs, family).diagonal(dim1=1, dim2=2).sum(1)
    if family == "mse":  # uniform: only the ordering of the rows matters
        torch.testing.assert_close(curvature, torch.ones(6, dtype=torch.float64))
    else:
        torch.testing.assert_close(curvature, trace, rtol=1e-12, atol=1e-15)
    per_example = [explicit.exact_fisher(model, x[i : i + 1], family) for i in range(6)]
    top = sorted(range(6), key=lambda i: -float(curvature[i]))[:2]  # ties: the first
    others = [i for i in range(6) if i not in top]
    estimates = []
    for pair in itertools.combinations(others, 2):
        keys = torch.ones(6, dtype=torch.float64)
        keys[list(pair)] = 0
        rows, weights = stratified_rows(curvature, 4, keys)
        assert sorted(rows.tolist()) == sorted(top + list(pair))
        pairs = zip(rows.tolist(), weights.tolist(), strict=True)
        estimates.append(sum(w * per_example[i] for i, w in pairs) / 6)
    torch.testing.assert_close(
        sum(estimates) / len(estimates),
        explicit.exact_fisher(model, x, family),
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.parametrize("family", LOSSES)
def test_the_rows_are_the_most_curved_and_a_seeded_draw_and_the_estimate_weighs_them(family):
    """B = 20, a share of 5: the 2 examples of largest tr F_R (explicit output Fisher) with
    weight 1 and the 3 others of smallest U[0, 1) keys, the optimizer generator's first draw of
    20, with weight 18/3; the model's Fisher block is Σᵢ wᵢ vᵀFᵢw / B over them by full
    per-example Jacobians (dual-pass path: no captured pass).  tests/kfac/test_distributed.py
    checks that N ranks choose and weigh the same rows as one process."""
    model = make_net("mixed_four_layers")
    x, _ = make_batch(model, family, count=20)
    keys = torch.rand(20, generator=torch.Generator().manual_seed(4))
    layers = explicit.linear_layers(model)
    params = [p for m in layers for p in m.parameters()]
    generator = torch.Generator().manual_seed(5)
    directions = [
        [torch.randn(p.shape, dtype=p.dtype, generator=generator) for p in params] for _ in "vw"
    ]
    vectors = torch.stack([column_major(layers, d) for d in directions])
    optimizer = KFAC(model, family, seed=4)
    with torch.no_grad():
        outputs = model(x)
    optimizer.quadratic.choose_rows(outputs, 5, "curvature", optimizer.generator, 20)
    rows = optimizer.quadratic.rows.tolist()
    weights = optimizer.quadratic.weights.tolist()
    curvature = explicit.output_fisher(outputs, family).diagonal(dim1=1, dim2=2).sum(1)
    top = sorted(range(20), key=lambda i: -float(curvature[i]))[:2]  # ties: the first
    rest = sorted(set(range(20)) - set(top), key=lambda i: float(keys[i]))
    assert sorted(rows[:2]) == sorted(top) and rows[2:] == rest[:3]
    assert weights == [1.0, 1.0, 6.0, 6.0, 6.0]
    gradient = [torch.zeros_like(p) for p in params]
    fisher, _, _ = optimizer.quadratic.matrices(x, gradient, directions, 0.0, 0.0)
    expected = sum(
        w * vectors @ explicit.exact_fisher(model, x[i : i + 1], family) @ vectors.T
        for i, w in zip(rows, weights, strict=True)
    )
    torch.testing.assert_close(fisher, expected / 20, rtol=1e-10, atol=1e-14)


def column_major(layers, direction: list[torch.Tensor]) -> torch.Tensor:
    """A direction over the layers' parameters (weight, then bias if any, per layer) as the
    column-major [W b] vector of explicit.parameter_vector."""
    pieces, position = [], 0
    for m in layers:
        bias = direction[position + 1] if m.bias is not None else None
        pieces.append(explicit.vec_matrix(m, direction[position], bias))
        position += 1 if bias is None else 2
    return torch.cat(pieces)


def test_a_state_dict_from_before_quadratic_sampling_keeps_the_first_rows():
    """Checkpoints saved before `quadratic_sampling` existed resume as they were trained."""
    x, y = explicit.batch("cross_entropy", n=16)
    optimizer = KFAC(explicit.tiny_net(), "cross_entropy")
    optimizer.step(x, y)
    assert isinstance(optimizer.quadratic.rows, torch.Tensor)  # "auto": by curvature here
    state = optimizer.state_dict()
    del state["param_groups"][0]["quadratic_sampling"]
    resumed = KFAC(explicit.tiny_net(), "cross_entropy")
    resumed.load_state_dict(state)
    resumed.step(x, y)
    assert resumed.quadratic.rows == slice(0, 4)
    assert resumed.quadratic.weights.tolist() == [1.0] * 4
