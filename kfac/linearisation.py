"""J·v for the quadratic model from the training forward pass's own activations (paper §7).

The quadratic model needs the output-space products J·Δ and J·δ₀ on a share of the batch.  A
forward pass with dual numbers recomputes the whole primal pass for each direction: per layer
one product W a for the values and two, V ā and W ȧ, for the tangent.  But the training pass
has just computed those values at the same θ, and the capture keeps every layer's input ā and
output s.  For a chain of K-FAC layers joined by parameter-free modules that act on each
example alone (activations, pooling, flattening), the tangent obeys

    ṡᵢ = Vᵢ āᵢ + Wᵢ ȧᵢ,        ȧᵢ₊₁ = (∂āᵢ₊₁/∂sᵢ) ṡᵢ,        ȧ₁ = 0,

so J·v needs only the tangent's products: Vᵢ āᵢ for each direction, and one Wᵢ [ȧ_Δ; ȧ_δ₀]
with the directions stacked as examples (the first layer has no W ȧ).  The modules between
layers get their Jacobian–vector product at the captured sᵢ, exactly, by forward-mode AD.
This is the same J·v, not an approximation; for the MNIST autoencoder it takes 63% of the dual
passes' multiply-adds.

A model that is not such a chain (batch norm couples the examples, in-place modules overwrite
the captured outputs, a module with parameters outside the K-FAC layers, ...) has no plan and
the optimizer keeps the dual passes of `kfac.quadratic.output_directions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn

from kfac.capture import ActivationCapture
from kfac.layers import LinearBlock

LowRankFactors = Callable[[torch.Tensor], tuple | None]
"""(left, right_weight, right_bias) with left @ [right_weight right_bias] = [W b] of a
direction's weight tensor, or None
(`kfac.preconditioner.KroneckerPreconditioner.low_rank_factors`)."""

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    nn.Identity,
)
"""Modules y = f(s) entry by entry: ẏ = f'(s) ṡ, so f'(s) is found once, for the examples,
and multiplies every direction's tangent."""

PER_EXAMPLE_MODULES: tuple[type[nn.Module], ...] = ELEMENTWISE_MODULES + (
    nn.Flatten,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
)
"""Parameter-free modules whose output for one example depends on that example alone, so
that their Jacobian–vector product with directions stacked as examples is exact."""


@dataclass(frozen=True)
class Stage:
    """One K-FAC layer and the parameter-free modules that follow it up to the next one."""

    block: LinearBlock
    after: tuple[nn.Module, ...]


class LinearisedChain:
    """The model as K-FAC layers joined by per-example modules; see the module docstring."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages

    @classmethod
    def of(
        cls, model: nn.Module, blocks: list[LinearBlock], params: list[torch.Tensor]
    ) -> LinearisedChain | None:
        """The chain of `model`, or None when J·v cannot be read off the training pass."""
        leaves = _sequential_leaves(model)
        if leaves is None:
            return None
        by_module = {id(b.module): b for b in blocks}
        block_params = {id(p) for b in blocks for p in b.parameters()}
        if {id(p) for p in params} != block_params:  # every direction lives in the layers
            return None
        stages: list[Stage] = []
        after: list[nn.Module] = []
        for leaf in leaves:
            block = by_module.get(id(leaf))
            if block is not None:
                if stages:
                    stages[-1] = Stage(stages[-1].block, tuple(after))
                stages.append(Stage(block, ()))
                after = []
            elif _per_example(leaf):
                if stages:  # modules before the first layer see no tangent
                    after.append(leaf)
            else:
                return None
        if [s.block for s in stages] != blocks:
            return None
        stages[-1] = Stage(stages[-1].block, tuple(after))
        return cls(stages)

    def output_directions(
        self,
        capture: ActivationCapture,
        rows: slice | torch.Tensor,
        directions: list[dict[int, torch.Tensor]],
        low_rank: LowRankFactors | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The outputs z and J·v of the captured pass's examples `rows` (a slice or indices),
        one J·v per direction (a dict id(parameter) → tensor).  `low_rank` gives the factors
        of a direction's weight that is a per-example product (F̆⁻¹∇h at batch
        256), through which V ā costs less (`LinearBlock.apply_low_rank`)."""
        count = len(directions)
        tangent = None  # ȧ of the current layer, the directions stacked as examples
        for stage in self.stages:
            block = stage.block
            layer_input = capture.inputs[block.name][rows]
            produced = torch.cat(
                [direction_product(block, layer_input, d, low_rank) for d in directions]
            )
            if tangent is not None:
                produced += block.apply_weight(tangent)
            tangent = produced
            primal = capture.outputs[block.name][rows].detach()
            used = primal.shape[0]
            for module in stage.after:
                if type(module) in ELEMENTWISE_MODULES:  # no copy of s per direction
                    primal, slope = forward_derivative(module, primal, torch.ones_like(primal))
                    tangent = (tangent.view(count, *primal.shape) * slope).view(tangent.shape)
                    continue
                repeated = primal.repeat(count, *([1] * (primal.dim() - 1)))
                primal, tangent = forward_derivative(module, repeated, tangent)
                primal = primal[:used]
        return primal, list(tangent.chunk(count))


def direction_product(
    block: LinearBlock,
    layer_input: torch.Tensor,
    direction: dict[int, torch.Tensor],
    low_rank: LowRankFactors | None,
) -> torch.Tensor:
    """V ā (with the bias's part) of one direction on the rows `layer_input`."""
    weight, bias = block.module.weight, block.module.bias
    along_weight = direction[id(weight)]
    factors = low_rank(along_weight) if low_rank is not None else None
    if factors is not None:
        product = block.apply_low_rank(layer_input, *factors)
        if product is not None:
            return product
    along_bias = None if bias is None else direction[id(bias)]
    return block.apply_parameters(layer_input, along_weight, along_bias)


def forward_derivative(
    module: nn.Module, primal: torch.Tensor, tangent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """module(primal) and its Jacobian–vector product with `tangent`, by one pass with dual
    numbers: the same derivative formulas as torch.func.jvp, bit for bit, without its functional
    transform's overhead (a sigmoid over 64 × 1000 entries: 48 µs against 116 µs).

    A tensor that shares a larger storage (the captured output's first rows) is copied first:
    forward-mode AD lays its zero tangents out like the primal's whole storage, which for 139
    rows of a 1,000 × 1,000 output filled 4 MB of fresh memory per layer, ~1 ms each in the
    step at batch 1,000."""
    if primal.untyped_storage().nbytes() > primal.numel() * primal.element_size():
        primal = primal.clone()
    with forward_ad.dual_level():
        value = module(forward_ad.make_dual(primal, tangent))
        primal, tangent = forward_ad.unpack_dual(value)
    return primal, tangent


def _sequential_leaves(model: nn.Module) -> list[nn.Module] | None:
    """The modules of nested nn.Sequential containers in call order, or None if any container
    is not an nn.Sequential (its forward may do anything)."""
    if type(model) is not nn.Sequential:
        return [model]
    leaves: list[nn.Module] = []
    for child in model:
        inner = _sequential_leaves(child) if type(child) is nn.Sequential else [child]
        if inner is None:
            return None
        leaves += inner
    return leaves


def _per_example(module: nn.Module) -> bool:
    return (
        type(module) in PER_EXAMPLE_MODULES
        and not getattr(module, "inplace", False)  # it would overwrite the captured sᵢ
        and not getattr(module, "return_indices", False)
    )
