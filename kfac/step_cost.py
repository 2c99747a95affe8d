"""What a default step costs besides the quadratic model's rows, in rows: the R by which
`kfac.model_rows.economical_rows` weighs more rows against the rest of the step (issue 16).

Counted in multiply-adds from the K-FAC layers' shapes.  F = Σₗ d_g·d_a·|T| is the forward
pass's per example (|T| the rows an example gives a layer: 1 for a Linear layer, the output
locations of a convolution) and F₁ the first layer's share, whose input carries no gradient and
no tangent (nothing with parameters comes before it):

- the training pass, (3F − F₁)·B: forward, weight gradients, input gradients;
- F̆⁻¹∇h, per layer its dense or per-example product, whichever the preconditioner uses (§4.2);
- every T_stats steps the statistics on S examples (§5): a backward for the output gradients,
  (F − F₁)·B (it runs back through the whole batch's graph, whatever S), and the second
  moments of ā and g, (d_a² + d_g²)·|T|·S;
- every T₃ steps the inversions (§4.2, §6.3): a Cholesky factorisation and its solve against
  the identity, (7/3)n³ for each factor of side n;
- every T₁ steps ρ's forward pass, F·B (§6.5).

A row of the model reads J·Δ and J·δ₀ (§7), each V ā for every layer and W ȧ after the first,
2(2F − F₁), off the training pass, less what a per-example layer's J·Δ saves through the
factors of F̆⁻¹∇W̄ (`LinearBlock.low_rank_map_cost`); where each direction needs its own dual
forward pass, 2·3F (its primal, and a tangent that the first layer's products take too).
Only the rows grow with m: everything above is what a row competes with.  A constant R/B
charged the large batch's dense products and inversions per example, as if they grew with B,
which they do not.
"""

from __future__ import annotations

from kfac.layers import LinearBlock

# The model's rows run at this share of the rest of the step's multiply-adds per second: short
# products that read Δ and δ₀ from memory.  On the autoencoder (`bench.kfac_step_cost
# --profile`), the step's time outside J·Δ, J·δ₀ over their time per row is 1.51–1.54B at batch
# 256 and 1.04–1.15B at 1,000 on two AMD EPYCs (Zen 3, Zen 4), where the count gives 2.33B and
# 1.46B: 0.65–0.79 (docs/benchmarks.md "16, thirteenth pass").  At 2/3 the count gives the
# 1.5B at 256 that the race was run with.
ROW_SPEED = 2 / 3

# Multiply-adds of inverting a factor of side n by Cholesky: n³/3 to factor, 2n³ to solve
# against the identity (kfac.inverses).
INVERSION_COST = 7 / 3


def product_costs(block: LinearBlock, rows: int) -> tuple[int, int]:
    """Multiply-adds of a layer's F̆⁻¹∇W̄ (§4.2): per example, (ĝG⁻¹)ᵀ(āĀ⁻¹) over `rows` rows,
    and dense, G⁻¹ V Ā⁻¹."""
    d_a, d_g = block.input_dim, block.output_dim
    return rows * (d_g * d_g + d_a * d_a + d_g * d_a), d_g * d_a * (d_g + d_a)


def forward_cost(blocks: list[LinearBlock], rows_per_example: dict[str, int]) -> list[int]:
    """Multiply-adds per example of each K-FAC layer's forward pass, d_g·d_a·|T| (a layer not
    yet recorded counts one row per example, as `per_example_layers` does)."""
    return [b.input_dim * b.output_dim * rows_per_example.get(b.name, 1) for b in blocks]


def step_costs(
    blocks: list[LinearBlock],
    rows_per_example: dict[str, int],
    batch: int,
    per_example: set[str],
    group: dict,
    reads_training_pass: bool,
) -> tuple[float, int]:
    """Multiply-adds of the step outside the model's rows, averaged over the intervals, and of
    one row (module docstring)."""
    layers = forward_cost(blocks, rows_per_example)
    forward, first = sum(layers), layers[0]
    statistics_rows = max(1, round(group["stats_fraction"] * batch))
    statistics = (forward - first) * batch  # the sampled targets' backward, through all rows
    cost = (3 * forward - first) * batch
    if group["adapt_damping"]:
        cost += forward * batch / group["damping_interval"]
    saved = 0  # J·Δ of a per-example layer through F̆⁻¹∇W̄'s factors, of rank B·|T|
    for b in blocks:
        t = rows_per_example.get(b.name, 1)
        d_a, d_g = b.input_dim, b.output_dim
        by_rows = b.name in per_example
        cost += product_costs(b, batch * t)[0 if by_rows else 1]
        cost += INVERSION_COST * (d_a**3 + d_g**3) / group["inverse_interval"]
        statistics += (d_a * d_a + d_g * d_g) * t * statistics_rows
        low_rank = b.low_rank_map_cost(batch * t) if by_rows else None
        saved += 0 if low_rank is None else (d_a * d_g - low_rank) * t
    cost += statistics / group["stats_interval"]
    if not reads_training_pass:
        return cost, 2 * 3 * forward
    return cost, 2 * (2 * forward - first) - saved


def in_model_rows(costs: tuple[float, int]) -> float:
    """R of `economical_rows` from `step_costs`: the rest of the step over a row, times the
    rows' lower speed (ROW_SPEED)."""
    rest, row = costs
    return ROW_SPEED * rest / row
