"""F̆⁻¹∇h, the approximate natural gradient, over the optimizer's parameters (paper §4).

The optimizer keeps its parameters and ∇h as one list, in the param group's order; the
preconditioner works on each K-FAC layer's W̄ = [W b] as one (d_g, d_a) matrix, through the
block-diagonal F̆⁻¹ = F̌⁻¹ (§4.2) or the block-tridiagonal F̂⁻¹ (§4.3), of the damped factors
(§6.3).  This maps the one onto the other and back.  Parameters outside the K-FAC layers (a
batch norm's, say) get ∇h times the optimizer's scale: 1/γ², the damped identity γ²I as their
curvature, when the quadratic model scales the step; 1 with a fixed learning rate.
"""

from __future__ import annotations

import torch

from kfac.preconditioner import KroneckerPreconditioner


class NaturalGradient:
    def __init__(self, params: list[torch.Tensor], preconditioner: KroneckerPreconditioner):
        self.params, self.preconditioner = params, preconditioner
        self.blocks = preconditioner.blocks
        block_params = {id(p) for b in self.blocks for p in b.parameters()}
        self.other_params = [p for p in params if id(p) not in block_params]

    def __call__(
        self,
        gradient: list[torch.Tensor],
        other_scale: float,
        per_example: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[torch.Tensor]:
        """F̆⁻¹∇h per parameter, ∇h·`other_scale` for the parameters outside the layers;
        `per_example` maps a layer to its rows (a, ĝ), which stand for its gradient."""
        per_example = per_example or {}
        by_param = dict(zip(map(id, self.params), gradient, strict=True))
        layer_gradients = [
            None if block.name in per_example else [by_param[id(p)] for p in block.parameters()]
            for block in self.blocks
        ]
        conditioned = self.preconditioner.precondition(layer_gradients, per_example)
        result = {}
        for block, parts in zip(self.blocks, conditioned, strict=True):
            for p, part in zip(block.parameters(), parts, strict=True):
                result[id(p)] = part
        for p in self.other_params:
            result[id(p)] = by_param[id(p)] * other_scale
        return [result[id(p)] for p in self.params]
