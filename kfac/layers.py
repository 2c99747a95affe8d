"""Layers that K-FAC preconditions, seen as one weight matrix [W b] each (paper §2.1).

nn.Linear follows K-FAC (Martens & Grosse 2015); nn.Conv2d follows KFC (Grosse & Martens 2016),
whose rows are the input patches ⟦a⟧ₜ and output derivatives Dsₜ at every spatial location t.

A layer's parameters are the matrix W̄ = [W b] of shape (d_g, d_a): d_g output units, d_a inputs
plus a homogeneous coordinate when the layer has a bias, so that s = W̄ ā.  Its gradient is
DW̄ = g āᵀ and, with column-major vectorisation, vec(DW̄) = ā ⊗ g (paper §3).
"""

from __future__ import annotations

import torch
from torch import nn

from kfac.factors import second_moment


def with_homogeneous_coordinate(rows: torch.Tensor) -> torch.Tensor:
    """Append a column of ones: ā = [a; 1], the bias as an extra input (paper §2.1)."""
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


class LinearBlock:
    """An nn.Linear layer: ā is its input, g = D s the gradient at its output."""

    supports_tridiagonal = True
    supports_low_rank = True

    def __init__(self, name: str, module: nn.Linear):
        self.name = name
        self.module = module

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    @property
    def input_dim(self) -> int:
        """d_a, the side of Ā."""
        return self.module.in_features + int(self.has_bias)

    @property
    def output_dim(self) -> int:
        """d_g, the side of G."""
        return self.module.out_features

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.module.weight, self.module.bias) if p is not None]

    def plain_rows(self, layer_input: torch.Tensor) -> torch.Tensor:
        """Rows a of shape (N, d_a − 1 with a bias); extra leading dimensions count as more
        examples."""
        return layer_input.reshape(-1, self.module.in_features)

    def input_rows(self, layer_input: torch.Tensor) -> torch.Tensor:
        """Rows ā of shape (N, d_a): `plain_rows` made homogeneous."""
        return self.homogeneous(self.plain_rows(layer_input))

    def homogeneous(self, rows: torch.Tensor) -> torch.Tensor:
        """ā = [a 1] when the layer has a bias, a otherwise."""
        return with_homogeneous_coordinate(rows) if self.has_bias else rows

    @property
    def input_columns(self) -> int:
        """Columns of W (without the bias column): in_features, or in_channels·kh·kw."""
        return self.input_dim - int(self.has_bias)

    def output_rows(self, output_grad: torch.Tensor) -> torch.Tensor:
        """Rows g of shape (N, d_g)."""
        return output_grad.reshape(-1, self.module.out_features)

    output_channel_dim = -1
    """The dimension of the layer's output that holds the output units."""

    def rows_per_example(self, output: torch.Tensor) -> int:
        """How many rows ā (and g) one example contributes: 1 for a Linear layer on (B, d),
        more when extra leading dimensions count as more examples."""
        return output.numel() // (output.shape[0] * self.module.out_features)

    def apply_matrix(self, layer_input: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """The layer's map with W̄ replaced by `matrix` (k, d_a): k output units."""
        bias = matrix[:, -1] if self.has_bias else None
        return torch.nn.functional.linear(layer_input, matrix[:, : self.input_columns], bias)

    def apply_parameters(
        self, layer_input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The layer's map with its weight and bias replaced (tensors shaped like them)."""
        return torch.nn.functional.linear(layer_input, weight, bias)

    def apply_low_rank(
        self,
        layer_input: torch.Tensor,
        left: torch.Tensor,
        right_weight: torch.Tensor,
        right_bias: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The layer's map with [W b] = left @ [right_weight right_bias] (left (d_g, r)) as
        (ā rightᵀ) leftᵀ, when that is the cheaper form (`low_rank_map_cost`); None when it is
        not."""
        if self.low_rank_map_cost(right_weight.shape[0]) is None:
            return None
        return self.apply_parameters(layer_input, right_weight, right_bias) @ left.T

    def low_rank_map_cost(self, rank: int) -> int | None:
        """r·(d_a + d_g), the multiply-adds of the map on one row ā through rank-r factors of
        [W b], where the layer supports them and they are cheaper than W's d_a·d_g; else None."""
        cost = rank * (self.input_dim + self.output_dim)
        return cost if self.supports_low_rank and cost < self.input_dim * self.output_dim else None

    def apply_weight(self, layer_input: torch.Tensor) -> torch.Tensor:
        """W applied to `layer_input` without the bias: the map's derivative in its input."""
        return self.apply_parameters(layer_input, self.module.weight.detach(), None)

    def input_factor(self, layer_input: torch.Tensor) -> torch.Tensor:
        """Ā = E[ā āᵀ] over the examples of this batch, (d_a, d_a)."""
        rows = self.input_rows(layer_input)
        return second_moment(rows, rows.shape[0])

    def output_factor(self, output_grad: torch.Tensor) -> torch.Tensor:
        """G = E[g gᵀ] over the examples of this batch, (d_g, d_g)."""
        rows = self.output_rows(output_grad)
        return second_moment(rows, rows.shape[0])

    def weight_matrix(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """[W b] of shape (d_g, d_a) from tensors shaped like the weight and bias (W without a
        bias)."""
        matrix = weight.reshape(weight.shape[0], -1)
        return torch.cat([matrix, bias[:, None]], dim=1) if bias is not None else matrix

    def split(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        """Cut a (d_g, d_a) matrix back into contiguous tensors shaped like [weight, bias].

        Contiguous, not views of `matrix`: a checkpoint's copy of a strided view comes back
        contiguous, and float32 sums over the two layouts differ in the last bits, so a run
        resumed from the copy would leave the uninterrupted one's trajectory (seen with the
        block-tridiagonal δ₀ on an AMD EPYC); the quadratic model's dot products also run at
        BLAS speed over contiguous tensors (`kfac.vectors.dot`)."""
        weight = self.module.weight
        parts = [matrix[:, : weight[0].numel()].reshape(weight.shape).contiguous()]
        if self.has_bias:
            parts.append(matrix[:, -1].contiguous())
        return parts


class Conv2dBlock(LinearBlock):
    """An nn.Conv2d layer under KFC (Grosse & Martens 2016, §3).

    The weight is the matrix (out_channels, in_channels·kh·kw) followed by the bias column, and
    s_t = W̄ ⟦ā⟧_t at every output location t ∈ T.  Under independent activations and
    derivatives, spatial homogeneity and spatially uncorrelated derivatives (§3.1),
    F ≈ Ω ⊗ Γ with
        Ω = E[Σ_t ⟦ā⟧_t ⟦ā⟧_tᵀ]            (sum over locations, mean over examples),
        Γ = (1/|T|) E[Σ_t Ds_t Ds_tᵀ]       (mean over locations and examples),
    which is exactly K-FAC's Ā ⊗ G when |T| = 1.
    """

    supports_tridiagonal = False
    # Its rows are the patches, B·|T| of them: a per-example product's rank is rarely below
    # d_a·d_g / (d_a + d_g), so `apply_low_rank` is not built for it.
    supports_low_rank = False

    def __init__(self, name: str, module: nn.Conv2d):
        if module.groups != 1:
            raise ValueError(
                f"KFC supports Conv2d with groups=1 only; {name!r} has groups={module.groups}"
            )
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(
                f"KFC supports numeric zero padding only; {name!r} has "
                f"padding={module.padding!r}, padding_mode={module.padding_mode!r}"
            )
        super().__init__(name, module)

    @property
    def input_dim(self) -> int:
        return self.module.weight[0].numel() + int(self.has_bias)

    @property
    def output_dim(self) -> int:
        return self.module.out_channels

    def plain_rows(self, layer_input: torch.Tensor) -> torch.Tensor:
        """Patches ⟦a⟧_t of every example and location, (B·|T|, d_a − 1 with a bias), in
        im2col's order.

        The windows are strided views of the padded input (`Tensor.unfold` twice, then every
        dilation-th tap), copied once into rows; on CPU this is 4–25× faster than
        `nn.functional.unfold` (im2col) followed by a transpose, and it works under vmap.
        Columns are ordered (channel, ky, kx) as in the weight, rows (example, y, x).
        """
        conv = self.module
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        (ph, pw), (dh, dw) = conv.padding, conv.dilation
        padded = torch.nn.functional.pad(layer_input, (pw, pw, ph, ph))
        windows = padded.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
        windows = windows[..., ::dh, ::dw]  # (B, C, H', W', kh, kw)
        return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, layer_input.shape[1] * kh * kw)

    def output_rows(self, output_grad: torch.Tensor) -> torch.Tensor:
        """Ds_t of every example and location, (B·|T|, out_channels)."""
        return output_grad.permute(0, 2, 3, 1).reshape(-1, self.module.out_channels)

    output_channel_dim = 1

    def rows_per_example(self, output: torch.Tensor) -> int:
        """|T|, the output locations: each example contributes a patch row per location."""
        return output.shape[2] * output.shape[3]

    def apply_matrix(self, layer_input: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """The convolution with W̄ replaced by `matrix` (k, d_a): k output channels."""
        conv = self.module
        weight = matrix[:, : self.input_columns].reshape(-1, *conv.weight.shape[1:])
        bias = matrix[:, -1] if self.has_bias else None
        return torch.nn.functional.conv2d(
            layer_input, weight, bias, conv.stride, conv.padding, conv.dilation
        )

    def apply_parameters(
        self, layer_input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        conv = self.module
        return torch.nn.functional.conv2d(
            layer_input, weight, bias, conv.stride, conv.padding, conv.dilation
        )

    def input_factor(self, layer_input: torch.Tensor) -> torch.Tensor:
        """Ω: summed over locations, averaged over the batch."""
        rows = self.input_rows(layer_input)
        return second_moment(rows, layer_input.shape[0])

    def output_factor(self, output_grad: torch.Tensor) -> torch.Tensor:
        """Γ: averaged over locations and the batch."""
        rows = self.output_rows(output_grad)
        return second_moment(rows, rows.shape[0])


SUPPORTED_MODULES: dict[type[nn.Module], type] = {nn.Linear: LinearBlock, nn.Conv2d: Conv2dBlock}


def find_blocks(model: nn.Module, names: list[str] | None = None) -> list[LinearBlock]:
    """The K-FAC layers of `model` in model order, optionally only those named in `names`."""
    blocks = []
    for name, module in model.named_modules():
        block_type = SUPPORTED_MODULES.get(type(module))
        if block_type is None or (names is not None and name not in names):
            continue
        blocks.append(block_type(name, module))
    if names is not None:
        missing = set(names) - {b.name for b in blocks}
        if missing:
            raise ValueError(f"no Linear/Conv2d layer named {sorted(missing)} in the model")
    return blocks
