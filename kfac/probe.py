"""Which parameters the dense curvature matrices keep: a probe of each layer's units.

F has side Σ d_g·d_a, hopeless for real networks, so `kfac.curvature.fisher_matrices` may
restrict it to some units: for layer i the output units R_i (rows of W̄: a Linear layer's
output features, a Conv2d layer's output channels) and input units C_i (columns of W̄: a Linear
layer's input features, a Conv2d layer's input patch coordinates (channel, ky, kx) in the
order of `Tensor.unfold`, index c·kh·kw + ky·kw + kx), the bias column always kept.
"""

from __future__ import annotations

import torch

from kfac.layers import LinearBlock
from kfac.units import evenly_spaced

MAX_PARAMETERS = 4096
"""The largest side of the dense matrices; bigger selections need a probe."""

Units = tuple[torch.Tensor, torch.Tensor]  # (rows of W̄ kept, columns of W̄ kept)


def probe_units(blocks: list[LinearBlock], probe: int | dict[str, tuple] | None) -> list[Units]:
    """The (rows, columns) of each layer's W̄ to keep; columns index ā, bias column included.

    None keeps everything.  A dict {layer name: (output units, input units)} names them
    (unnamed layers are kept whole).  For an int budget P the layers share P by
    water-filling: smallest layers first, each taking at most an equal share of what is left
    and passing on what it cannot use, so small layers are kept whole and the rest is spread
    evenly.  Within its share a layer keeps the same fraction f of its output and of its input
    units, evenly spaced (`kfac.units.evenly_spaced`, the rule the API sizes probes by), f as
    large as fits.  Deterministic, so successive snapshots of a run
    look at the same units.
    """
    everything = [(torch.arange(b.output_dim), torch.arange(b.input_dim)) for b in blocks]
    if probe is None:
        return everything
    if isinstance(probe, dict):
        unknown = set(probe) - {b.name for b in blocks}
        if unknown:
            raise ValueError(f"probe names layers that are not selected: {sorted(unknown)}")
        return [
            _named_units(b, *probe[b.name]) if b.name in probe else full
            for b, full in zip(blocks, everything, strict=True)
        ]
    budget = int(probe)
    if budget != probe or not 0 < budget <= MAX_PARAMETERS:
        raise ValueError(f"probe must be an int in [1, {MAX_PARAMETERS}], got {probe!r}")
    units: list[Units | None] = [None] * len(blocks)
    left = budget
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].output_dim * blocks[i].input_dim)
    for position, i in enumerate(order):
        units[i] = rows, cols = _units_within(blocks[i], left // (len(order) - position))
        left -= len(rows) * len(cols)  # what a layer cannot use goes to the bigger ones
    return units


def _unit_range(count: int, total: int) -> torch.Tensor:
    return torch.tensor(evenly_spaced(count, total), dtype=torch.long)


def _units_within(block: LinearBlock, share: int) -> Units:
    inputs, bias = block.input_columns, int(block.has_bias)

    def counts(fraction: float) -> tuple[int, int]:
        return max(1, round(fraction * block.output_dim)), max(1, round(fraction * inputs))

    def size(fraction: float) -> int:
        rows, cols = counts(fraction)
        return rows * (cols + bias)

    if size(0.0) > share:
        raise ValueError(
            f"probe budget too small: layer {block.name!r} needs at least {size(0.0)} parameters"
        )
    low, high = 0.0, 1.0
    if size(high) > share:
        for _ in range(60):  # sizes grow with the fraction, so bisect for the largest that fits
            middle = 0.5 * (low + high)
            low, high = (middle, high) if size(middle) <= share else (low, middle)
    else:
        low = high
    rows, cols = counts(low)
    columns = _unit_range(cols, inputs)
    if bias:
        columns = torch.cat([columns, torch.tensor([inputs])])
    return _unit_range(rows, block.output_dim), columns


def _named_units(block: LinearBlock, rows, cols) -> Units:
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    cols = torch.as_tensor(cols, dtype=torch.long).reshape(-1)
    limits = (("output", rows, block.output_dim), ("input", cols, block.input_columns))
    for what, index, limit in limits:
        if index.numel() == 0 or index.min() < 0 or index.max() >= limit:
            raise ValueError(f"probe for {block.name!r}: {what} units must lie in [0, {limit})")
        if index.unique().numel() != index.numel():
            raise ValueError(f"probe for {block.name!r}: repeated {what} units")
    if block.has_bias:
        cols = torch.cat([cols, torch.tensor([block.input_columns])])
    return rows, cols
