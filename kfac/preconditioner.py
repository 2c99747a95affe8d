"""The Kronecker-factored preconditioner: factors, their inverses and F̆⁻¹ applied to gradients.

It keeps each layer's tensors in a dict that the optimizer owns (its `state[weight]`), so that
`state_dict()` carries factors and inverses without a second copy.  Keys per layer:
A, G (and A_cross, G_cross for the tridiagonal structure) — the running factors;
input_inverse, output_inverse — the damped factors' inverses (§4.2, §6.3);
coupling_a, coupling_g, basis_a, basis_g, scale — the pieces of F̂⁻¹ (§4.3, Appendix B; see
`kfac.tridiagonal.TridiagonalLayerInverse`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from kfac.distributed import Communicator, Job, shared_tridiagonal_inverse
from kfac.enums import InverseStructure, ProductPrecision
from kfac.factors import cross_moment, update_running_average
from kfac.inverses import Notes, damp_factors, spd_inverse
from kfac.layers import LinearBlock
from kfac.step_cost import product_costs
from kfac.tridiagonal import (
    KroneckerDifferenceInverse,
    TridiagonalLayerInverse,
    block_tridiagonal_precondition,
)

TRIDIAGONAL_KEYS = ("coupling_a", "coupling_g", "basis_a", "basis_g", "scale")
BLOCK_DIAGONAL_KEYS = ("input_inverse", "output_inverse")


@dataclass(frozen=True)
class LowRankProduct:
    """A layer's F̆⁻¹∇W̄ = left @ [right_weight right_bias] preconditioned per example:
    left = (ĝG⁻¹)ᵀ (d_g, N), [right_weight right_bias] = āĀ⁻¹ (N, d_a), for the weight tensor
    it was cut into, `weight`, as long as that tensor is unchanged (`version`: an in-place
    write, δ written over Δ, bumps it)."""

    weight: torch.Tensor
    version: int
    left: torch.Tensor
    right_weight: torch.Tensor
    right_bias: torch.Tensor | None


class KroneckerPreconditioner:
    def __init__(
        self,
        blocks: list[LinearBlock],
        structure: InverseStructure,
        layer_state: Callable[[LinearBlock], dict],
        communicator: Communicator | None = None,
        precision: ProductPrecision = ProductPrecision.EXACT,
    ):
        self.blocks = blocks
        self.structure = structure
        self.layer_state = layer_state
        self.communicator = communicator or Communicator()
        self.precision = ProductPrecision(precision)
        self._derived_forms: dict[tuple[str, str], tuple[tuple[torch.Tensor, ...], tuple]] = {}
        """Per (kind, layer): the stored inverses a form was made from, and the form."""
        self._low_rank: dict[int, LowRankProduct] = {}
        """The last `precondition`'s per-example products, by id of their weight tensor."""

    # ------------------------------------------------------------------ statistics (§5)

    def update_factors(
        self,
        layer_inputs: list[torch.Tensor],
        output_grads: list[torch.Tensor],
        examples: int,
        count: int,
        decay: float,
    ) -> None:
        """Fold this batch's Ā = E[āāᵀ] and G = E[ggᵀ] into the running averages.

        `output_grads` are per-example g (gradients of the summed −log p at the layer outputs)
        of `examples` examples; under data parallelism every rank's estimates are averaged,
        weighted by their example counts, in one bucketed all-reduce (kfac.distributed).
        """
        keys = [(b, key) for b in self.blocks for key in ("A", "G")]
        estimates = []
        for block, a, g in zip(self.blocks, layer_inputs, output_grads, strict=True):
            estimates += [block.input_factor(a), block.output_factor(g)]
        if self.structure is InverseStructure.BLOCK_TRIDIAGONAL:
            a_rows = [b.input_rows(a) for b, a in zip(self.blocks, layer_inputs, strict=True)]
            g_rows = [b.output_rows(g) for b, g in zip(self.blocks, output_grads, strict=True)]
            for i, block in enumerate(self.blocks[:-1]):
                keys += [(block, "A_cross"), (block, "G_cross")]
                estimates += [cross_moment(a_rows[i], a_rows[i + 1])]
                estimates += [cross_moment(g_rows[i], g_rows[i + 1])]
        estimates, _ = self.communicator.average(estimates, examples)
        for (block, key), estimate in zip(keys, estimates, strict=True):
            state = self.layer_state(block)
            state[key] = update_running_average(state.get(key), estimate, count, decay)

    # ------------------------------------------------------------------ inverses (§4, §6.3)

    def update_inverses(self, gamma: float, notes: Notes) -> None:
        """Invert the factors damped with strength γ² (factored Tikhonov with π)."""
        damped = [
            damp_factors(self.layer_state(b)["A"], self.layer_state(b)["G"], gamma)
            for b in self.blocks
        ]
        if self.structure is InverseStructure.BLOCK_TRIDIAGONAL:
            pieces = shared_tridiagonal_inverse(
                self.communicator,
                [a for a, _ in damped],
                [g for _, g in damped],
                [self.layer_state(b)["A_cross"] for b in self.blocks[:-1]],
                [self.layer_state(b)["G_cross"] for b in self.blocks[:-1]],
                notes,
                [b.name for b in self.blocks],
            )
            if pieces is not None:
                for block, piece in zip(self.blocks, pieces, strict=True):
                    self._store_piece(self.layer_state(block), piece)
                return
            notes.add("block-tridiagonal inverse failed; using the block-diagonal one this period")
        # Divided among the ranks (KAISA), as the block-tridiagonal pieces above are.
        jobs = [
            Job(partial(spd_inverse, factor, notes, f"{block.name} {key}"), factor)
            for block, pair in zip(self.blocks, damped, strict=True)
            for key, factor in zip(BLOCK_DIAGONAL_KEYS, pair, strict=True)
        ]
        inverses = iter(self.communicator.share(jobs))
        for block, (a, g) in zip(self.blocks, damped, strict=True):
            state = self.layer_state(block)
            for key, factor in zip(BLOCK_DIAGONAL_KEYS, (a, g), strict=True):
                inverse = next(inverses)
                if inverse is None and key not in state:
                    inverse = torch.diag(1.0 / factor.diagonal().clamp_min(1e-12))
                    notes.add(f"{block.name} {key}: using the inverse diagonal")
                if inverse is not None:
                    state[key] = inverse
            for key in TRIDIAGONAL_KEYS:
                state.pop(key, None)

    @staticmethod
    def _store_piece(state: dict, piece: TridiagonalLayerInverse) -> None:
        if piece.conditional is None:
            state.update(input_inverse=piece.input_inverse, output_inverse=piece.output_inverse)
            stale = TRIDIAGONAL_KEYS
        else:
            conditional = piece.conditional
            state.update(
                coupling_a=piece.coupling_a,
                coupling_g=piece.coupling_g,
                basis_a=conditional.basis_a,
                basis_g=conditional.basis_g,
                scale=conditional.scale,
            )
            stale = BLOCK_DIAGONAL_KEYS
        for key in stale:
            state.pop(key, None)

    def _tridiagonal_pieces(self) -> list[TridiagonalLayerInverse] | None:
        """The stored F̂⁻¹ pieces, or None when this period fell back to block-diagonal."""
        pieces = []
        for block in self.blocks:
            state = self.layer_state(block)
            if "coupling_a" in state:
                conditional = KroneckerDifferenceInverse(
                    state["basis_a"], state["basis_g"], state["scale"]
                )
                pieces.append(
                    TridiagonalLayerInverse(state["coupling_a"], state["coupling_g"], conditional)
                )
            elif block is self.blocks[-1] and "input_inverse" in state:
                pieces.append(
                    TridiagonalLayerInverse(
                        input_inverse=state["input_inverse"], output_inverse=state["output_inverse"]
                    )
                )
            else:
                return None
        return pieces

    # ------------------------------------------------------------------ F̆⁻¹ ∇h

    @torch.no_grad()  # the products write into kept buffers; nothing differentiates through them
    def precondition(
        self,
        gradients: list[list[torch.Tensor] | None],
        per_example: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[list[torch.Tensor]]:
        """F̆⁻¹ applied to the layers' gradients ∇W̄ = [∇W ∇b], each given as its parameters'
        parts [∇W, ∇b] (shaped like the weight and bias); returns each layer's result cut into
        tensors shaped like its parameters (weight, bias).

        `per_example` optionally maps a layer name to its rows (a, ĝ), a without the
        homogeneous coordinate of ā = [a 1], with ∇W̄ = ĝᵀā; for those layers the
        block-diagonal product is computed as (ĝG⁻¹)ᵀ(āĀ⁻¹), which costs
        N·(d_g² + d_a² + d_g·d_a) instead of d_g·d_a·(d_g + d_a): cheaper when the batch is
        smaller than the layer.  The block-tridiagonal product takes the rows likewise for every
        product that meets ∇W̄ (see `block_tridiagonal_precondition`).
        """
        per_example = per_example or {}
        self._low_rank.clear()
        if self.structure is InverseStructure.BLOCK_TRIDIAGONAL:
            pieces = self._tridiagonal_pieces()
            if pieces is not None:
                rows = homogeneous_rows(self.blocks, per_example)
                matrices = block_tridiagonal_precondition(
                    [
                        rows[b.name] if b.name in rows else b.weight_matrix(*g)
                        for b, g in zip(self.blocks, gradients, strict=True)
                    ],
                    pieces,
                )
                return [b.split(m) for b, m in zip(self.blocks, matrices, strict=True)]
        result = []
        for block, gradient in zip(self.blocks, gradients, strict=True):
            state = self.layer_state(block)
            input_inverse, output_inverse = state["input_inverse"], state["output_inverse"]
            dtype = input_inverse.dtype
            if block.name in per_example:  # F̆⁻¹∇W̄ = (ĝG⁻¹)ᵀ (āĀ⁻¹)
                a_rows, g_rows = per_example[block.name]
                left = (g_rows @ output_inverse).T
                right = self._rows_times_input_inverse(block, a_rows, input_inverse)
            else:  # F̆⁻¹∇W̄ = (G⁻¹ ∇W̄) Ā⁻¹, §4.2 (`kfac.inverses.block_diagonal_precondition`)
                if self.precision is ProductPrecision.BFLOAT16:
                    input_inverse, output_inverse = self._derived(
                        "bfloat16", block.name, (input_inverse, output_inverse), _bfloat16
                    )
                left = self._output_inverse_times(block, output_inverse, gradient)
                columns = block.input_columns
                bias_column = input_inverse[:, columns] if block.has_bias else None
                right = input_inverse[:, :columns], bias_column
            parts = [part.to(dtype) for part in product_parts(block, left, *right)]
            if block.name in per_example:
                weight = parts[0]
                self._low_rank[id(weight)] = LowRankProduct(weight, weight._version, left, *right)
            result.append(parts)
        return result

    def _output_inverse_times(
        self, block: LinearBlock, output_inverse: torch.Tensor, gradient: list[torch.Tensor]
    ) -> torch.Tensor:
        """G⁻¹[∇W ∇b] from the parts [∇W, ∇b], as G⁻¹∇W and G⁻¹∇b written into the columns of
        one (d_g, d_a) buffer kept with G⁻¹: no copy of [∇W ∇b] and no fresh result each step
        (the autoencoder's eight layers at batch 1,000: 1.8 ms a step less, docs/benchmarks.md
        "16, thirteenth pass"). The buffer is overwritten by the next call: the caller's
        products with Ā⁻¹ read it at once."""
        weight, *bias = (part.to(output_inverse.dtype) for part in gradient)
        weight = weight.reshape(block.output_dim, -1)
        if not bias:
            return output_inverse @ weight
        (buffer,) = self._derived(
            "product buffer",
            block.name,
            (output_inverse,),
            lambda inverse: (inverse.new_empty(block.output_dim, block.input_dim),),
        )
        torch.mm(output_inverse, weight, out=buffer[:, :-1])
        torch.mv(output_inverse, bias[0], out=buffer[:, -1])
        return buffer

    def _rows_times_input_inverse(
        self, block: LinearBlock, rows: torch.Tensor, input_inverse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """āĀ⁻¹ for ā = [a 1], as its weight columns a B + r and bias column a c + d, Ā⁻¹ =
        [[B, c], [r, d]]: no copy of a with a column of ones, and products of the layer's own
        widths, with B kept contiguous (the autoencoder's four wide layers at batch 256: 1.3 ms
        a step less in the step, 4–5 ms alone, than ā @ Ā⁻¹ over 785 and 1,001 columns)."""
        if not block.has_bias:
            return rows @ input_inverse, None
        square, last_row, last_column, corner = self._derived(
            "blocks", block.name, (input_inverse,), _bias_blocks
        )
        return torch.addmm(last_row, rows, square), torch.addmv(corner, rows, last_column)

    def low_rank_factors(self, weight: torch.Tensor) -> tuple | None:
        """(left, right_weight, right_bias) of the last `precondition`'s per-example product
        that `weight` was cut from, if it is unchanged since; None otherwise (`LowRankProduct`)."""
        product = self._low_rank.get(id(weight))
        if product is None or product.weight is not weight or product.version != weight._version:
            return None
        return product.left, product.right_weight, product.right_bias

    def _derived(self, kind: str, name: str, stored: tuple[torch.Tensor, ...], make) -> tuple:
        """`make(*stored)` for a layer's stored inverses, made again only when they change (a
        new inversion, a loaded state dict): their bfloat16 copies, Ā⁻¹'s blocks, the buffer of
        G⁻¹[∇W ∇b]."""
        cached = self._derived_forms.get((kind, name))
        if cached is None or any(c is not s for c, s in zip(cached[0], stored, strict=True)):
            cached = (stored, tuple(make(*stored)))
            self._derived_forms[(kind, name)] = cached
        return cached[1]

    def per_example_layers(self, batch: int, rows_per_example: dict[str, int]) -> set[str]:
        """The layers whose per-example product (ĝG⁻¹)ᵀ(āĀ⁻¹) is the cheaper one. Its cost
        grows with the rows ā, one per example and output location: batch × |T| for a conv
        layer (|T| from the last recorded forward pass; step 1 always records)."""
        if self.communicator.world_size > 1:  # the rows ĝ, ā of one rank miss the others'
            return set()
        return {
            b.name
            for b in self.blocks
            if self.prefers_per_example(b, batch * rows_per_example.get(b.name, 1))
        }

    def prefers_per_example(self, block: LinearBlock, rows: int) -> bool:
        """Whether (ĝG⁻¹)ᵀ(āĀ⁻¹) over `rows` examples is cheaper than G⁻¹ V Ā⁻¹.

        The same comparison decides for the block-tridiagonal structure, whose products that
        meet V, K_Gᵀ V K_A and M_G V M_Aᵀ, have the same shapes up to the neighbours' widths.
        """
        per_example, dense = product_costs(block, rows)
        return per_example < dense


def homogeneous_rows(
    blocks: list[LinearBlock], per_example: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The per-example rows (a, ĝ) as (ā, ĝ), ā = [a 1]: the products of F̂⁻¹ take ā whole."""
    return {
        b.name: (b.homogeneous(per_example[b.name][0]), per_example[b.name][1])
        for b in blocks
        if b.name in per_example
    }


def _bfloat16(*inverses: torch.Tensor) -> list[torch.Tensor]:
    return [inverse.to(torch.bfloat16) for inverse in inverses]


def _bias_blocks(input_inverse: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B contiguous, r, c, d) of Ā⁻¹ = [[B, c], [r, d]] (`_rows_times_input_inverse`)."""
    return (
        input_inverse[:-1, :-1].contiguous(),
        input_inverse[-1, :-1],
        input_inverse[:-1, -1],
        input_inverse[-1, -1],
    )


def product_parts(
    block: LinearBlock,
    left: torch.Tensor,
    right_weight: torch.Tensor,
    right_bias: torch.Tensor | None,
) -> list[torch.Tensor]:
    """left @ [right_weight right_bias], a (d_g, d_a) matrix [W b], as tensors shaped like the
    layer's weight and bias.  Each part is its own product, at the cost of the whole one, so
    that the weight comes out contiguous: the quadratic model's dot products over it then run
    at BLAS speed (over the strided view [:, :-1] of one product they took twice as long:
    0.1–0.2 of an SGD-m step on the autoencoder at batch 256)."""
    parts = [(left @ right_weight).reshape(block.module.weight.shape)]
    if right_bias is not None:
        parts.append(left @ right_bias)
    return parts
