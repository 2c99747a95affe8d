"""Models built from a run spec: the paper's deep autoencoders and MLP classifiers.

Every model is an `nn.Sequential` of `nn.Linear` layers and activations, so K-FAC sees each
Linear once per forward pass. The layer widths come from the spec (`RunSpec.layer_dims`), the
same arithmetic the API uses to enforce the size limit, so the two can never disagree.

Construction is deterministic from the seed and leaves the global RNG alone: modules are created
on the meta device (no default initialisation runs) and then initialised from a private
`torch.Generator`.
"""

from __future__ import annotations

import torch
from torch import nn

from backend.spec import AutoencoderSpec, MLPSpec, RunSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}

SPARSE_FAN_IN = 15  # Martens (2010): each unit gets 15 non-zero incoming weights


def build_model(spec: RunSpec, *, device: torch.device | str = "cpu") -> nn.Sequential:
    """The model of `spec`, initialised from `spec.seed`, in `spec.dtype` on `device`."""
    dims = spec.layer_dims()
    linear_activation = _hidden_activation_mask(spec.model, len(dims) - 1)
    dtype = getattr(torch, spec.dtype)
    layers: list[nn.Module] = []
    with torch.device("meta"):
        for i, (n_in, n_out) in enumerate(zip(dims, dims[1:], strict=False)):
            layers.append(nn.Linear(n_in, n_out, dtype=dtype))
            if linear_activation[i]:
                layers.append(ACTIVATIONS[spec.model.activation]())
    model = nn.Sequential(*layers).to_empty(device=device)
    generator = torch.Generator().manual_seed(spec.seed)
    for layer in linear_layers(model):
        _initialise(layer, spec.model.init, generator)
    return model


def _hidden_activation_mask(model: AutoencoderSpec | MLPSpec, n_layers: int) -> list[bool]:
    """Which Linear layers are followed by the nonlinearity: all but the output layer, and in
    an autoencoder also not the code layer, which is linear (Hinton & Salakhutdinov 2006)."""
    mask = [True] * (n_layers - 1) + [False]
    if isinstance(model, AutoencoderSpec):
        mask[len(model.encoder) - 1] = False
    return mask


@torch.no_grad()
def _initialise(layer: nn.Linear, scheme: str, generator: torch.Generator) -> None:
    """`sparse`: the sparse initialisation of Martens (2010) used by the paper (§13), 15 unit
    Gaussian incoming weights per unit; `glorot`: uniform ±√(6/(fan_in + fan_out)). Biases 0.
    Drawn on the CPU in float64 then cast, so a seed gives the same model on every device."""
    n_out, n_in = layer.weight.shape
    if scheme == "sparse":
        fan_in = min(SPARSE_FAN_IN, n_in)
        inputs = torch.rand(n_out, n_in, generator=generator).argsort(dim=1)[:, :fan_in]
        values = torch.randn(n_out, fan_in, generator=generator, dtype=torch.float64)
        weight = torch.zeros(n_out, n_in, dtype=torch.float64).scatter_(1, inputs, values)
    else:
        bound = (6.0 / (n_in + n_out)) ** 0.5
        weight = torch.rand(n_out, n_in, generator=generator, dtype=torch.float64)
        weight = (2 * weight - 1) * bound
    layer.weight.copy_(weight)
    layer.bias.zero_()


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers in model order (the indices a probe's `layers` refer to)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
