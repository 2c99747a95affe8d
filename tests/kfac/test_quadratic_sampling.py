"""The quadratic model's rows chosen by curvature (kfac.quadratic.stratified_rows, issue 16)
against brute force: the most curved half, a uniform draw from the rest, weights that make
Σᵢ wᵢ JᵢᵀF_R Jᵢ / B unbiased for the batch's Fisher, and the per-rank estimate."""

import itertools

import pytest
import torch

from kfac import KFAC
from kfac.distributed import Communicator
from kfac.enums import LossFamily
from kfac.quadratic import curvature_weights, stratified_rows
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


class Rank(Communicator):
    """Rank `rank` of `world` whose collectives the test does by hand."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world


@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("family", LOSSES)
def test_each_rank_stratifies_its_shard_and_the_ranks_average_by_their_batch(family, world):
    """B = 20 over `world` ranks (7, 7, 6): each rank keeps its ⌊m/2⌋ most curved examples and
    draws the rest by U[0, 1) keys over the global batch at its positions (one draw of 20 from
    the optimizer's generator on every rank); its weights sum to its shard, and the
    all-reduce's weighted mean of the ranks' Σᵢ wᵢ(Jᵢv)ᵀF_R(Jᵢw)/Σᵢ wᵢ by Σᵢ wᵢ is
    Σ over all ranks' rows of wᵢ vᵀFᵢw / B (dual-pass path: no captured pass)."""
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
    sums, counts, states, expected = [], [], [], torch.zeros(2, 2, dtype=torch.float64)
    for rank in range(world):
        communicator = Rank(rank, world)
        optimizer = KFAC(model, family, communicator=communicator, seed=4)
        shard = communicator.shard(x)
        with torch.no_grad():
            outputs = model(shard)
        used = communicator.prefix(5)  # the quarter of 20
        optimizer.quadratic.choose_rows(outputs, used, "curvature", optimizer.generator, 20)
        states.append(optimizer.generator.get_state())
        rows = optimizer.quadratic.rows.tolist()
        weights = optimizer.quadratic.weights
        positions = list(range(rank, 20, world))
        curvature = explicit.output_fisher(outputs, family).diagonal(dim1=1, dim2=2).sum(1)
        top = sorted(range(len(positions)), key=lambda i: -float(curvature[i]))[: used // 2]
        rest = sorted(
            set(range(len(positions))) - set(top), key=lambda i: float(keys[positions[i]])
        )
        assert sorted(rows[: used // 2]) == sorted(top)
        assert rows[used // 2 :] == rest[: used - used // 2]
        assert float(weights.sum()) == pytest.approx(len(positions), rel=1e-12)
        gradient = [torch.zeros_like(p) for p in params]
        fisher, _, _ = optimizer.quadratic.matrices(shard, gradient, directions, 0.0, 0.0)
        sums.append(fisher * float(weights.sum()))
        counts.append(float(weights.sum()))
        for i, w in zip(rows, weights.tolist(), strict=True):
            single = explicit.exact_fisher(model, shard[i : i + 1], family)
            expected += w * vectors @ single @ vectors.T / 20
    torch.testing.assert_close(sum(sums) / sum(counts), expected, rtol=1e-10, atol=1e-14)
    assert all(state.equal(states[0]) for state in states)  # the ranks' generators stay alike


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
