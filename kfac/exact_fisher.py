"""The exact Fisher F of chosen entries of the layers' weights, from per-example gradients (§2.2).

`kfac.curvature` shows F beside what K-FAC makes of it; it is the one dense matrix there that
needs no factor, so it is computed here on its own: every example's gradient of the kept
entries W̄ᵢ[R, C] (a probe's units, `kfac.probe`) by torch.func, without forming any full
per-example weight gradient.  The ordering is `kfac.curvature`'s: layer by layer, within a
layer the column-major vec of W̄ᵢ[R, C].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, vmap

from kfac.enums import LossFamily
from kfac.layers import LinearBlock
from kfac.losses import negative_log_likelihood
from kfac.probe import Units

_CHUNK_ELEMENTS = 1 << 22  # per-example gradients held at once (32 MB in float64)


def exact_fisher(
    model: nn.Module,
    blocks: list[LinearBlock],
    units: list[Units],
    locations: list[int],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    family: LossFamily,
) -> torch.Tensor:
    """F = E[∇log p(y|x) ∇log p(y|x)ᵀ] over the batch, from per-example gradients (§2.2).

    `units[i]` are the rows R and columns C of layer i's W̄ that are kept; `locations[i]` is
    the number of output locations of layer i per example (1 for a Linear layer), which sizes
    the chunks of examples whose gradients are held at once.

    The per-example gradients come from torch.func: vmap over the examples of grad with respect
    to a zero perturbation δᵢ of the kept entries W̄ᵢ[R, C].  A forward hook adds δᵢ's effect,
    s[R] += δᵢ ā[C], to the layer's output (exactly what W̄ᵢ[R, C] += δᵢ does, once per call of
    the layer; for a conv layer at every location t, s_t[R] += δᵢ ⟦ā⟧_t[C], a convolution with
    δᵢ scattered into a zero kernel), so ∂(−log p)/∂δᵢ is the gradient of those parameters and
    no full per-example weight gradient is ever formed: the cost is one batched forward and
    backward pass.
    """
    device, dtype = blocks[0].module.weight.device, blocks[0].module.weight.dtype
    units = [(rows.to(device), cols.to(device)) for rows, cols in units]
    active: dict[str, torch.Tensor] = {}

    def hook_for(block, rows, cols):
        def hook(module, args, output):
            if block.name not in active:
                return None
            delta = active[block.name]
            matrix = delta.new_zeros(len(rows), block.input_dim).index_copy(1, cols, delta)
            term = block.apply_matrix(args[0], matrix)  # s[R] of W̄[R] = δ on C, 0 elsewhere
            return output.index_add(block.output_channel_dim, rows, term)

        return hook

    def loss_of(deltas, x, y):
        active.update(zip((b.name for b in blocks), deltas, strict=True))
        try:
            output = model(x.unsqueeze(0))
        finally:
            active.clear()
        return negative_log_likelihood(output, y.unsqueeze(0), family).sum()

    zeros = [torch.zeros(len(r), len(c), dtype=dtype, device=device) for r, c in units]

    def kept_gradient(x, y):
        return torch.cat([d.T.reshape(-1) for d in grad(loss_of)(zeros, x, y)])  # vec, column-major

    # Memory per example: its kept gradient plus (roughly) the layers' activations.
    per_example = sum(r.numel() * c.numel() for r, c in units)
    per_example += sum(
        t * (b.input_dim + b.output_dim) for b, t in zip(blocks, locations, strict=True)
    )
    chunk = max(1, _CHUNK_ELEMENTS // per_example)
    handles = [
        b.module.register_forward_hook(hook_for(b, r, c))
        for b, (r, c) in zip(blocks, units, strict=True)
    ]
    try:
        fisher = 0
        for start in range(0, inputs.shape[0], chunk):
            stop = start + chunk
            rows = vmap(kept_gradient)(inputs[start:stop], targets[start:stop])
            fisher = fisher + rows.T @ rows
    finally:
        for handle in handles:
            handle.remove()
    return fisher / inputs.shape[0]
