"""Models built from a run spec: the paper's deep autoencoders, MLP classifiers and conv nets.

Every model is an `nn.Sequential`, so K-FAC sees each Linear / Conv2d layer once per forward
pass. The layer shapes come from the spec (`RunSpec.layer_shapes`), the same arithmetic the API
uses to enforce the size limit, so the two can never disagree (the tests check it). Conv nets
take image batches (N, C, H, W), dense models flat ones (N, D).

Construction is deterministic from the seed and leaves the global RNG alone: modules are created
on the meta device (no default initialisation runs) and then initialised from a private
`torch.Generator`.
"""

from __future__ import annotations

import torch
from torch import nn

from backend.architectures import POOL_KERNEL, POOL_PADDING, POOL_STRIDE
from backend.spec import AutoencoderSpec, ConvNetSpec, MLPSpec, RunSpec
from worker import plugins

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}

SPARSE_FAN_IN = 15  # Martens (2010): each unit gets 15 non-zero incoming weights


def build_model(spec: RunSpec, *, device: torch.device | str = "cpu") -> nn.Module:
    """The model of `spec`, initialised from `spec.seed`, in `spec.dtype` on `device`, built by
    the builder its spec names (`build_dense`, `build_convnet`, or a plugin's)."""
    return plugins.builder("model", spec.model.name)(spec, device)


def build_dense(spec: RunSpec, device: torch.device | str) -> nn.Sequential:
    """An autoencoder or MLP: Linear layers of `spec.layer_dims()` with the activations."""
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


POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def build_convnet(spec: RunSpec, device: torch.device | str) -> nn.Sequential:
    """Conv → [BN] → activation → pool stages, then Flatten and Linear layers (ConvNetSpec)."""
    model_spec: ConvNetSpec = spec.model
    info = spec.dataset.info
    dtype = getattr(torch, spec.dtype)
    activation = ACTIVATIONS[model_spec.activation]
    size, padding = model_spec.kernel_size, model_spec.kernel_size // 2
    layers: list[nn.Module] = []
    with torch.device("meta"):
        stages = model_spec.stages(info.image_shape)
        for (c_in, c_out, _, _), pool in zip(stages, model_spec.pooling, strict=True):
            bias = not model_spec.batch_norm
            layers.append(nn.Conv2d(c_in, c_out, size, padding=padding, bias=bias, dtype=dtype))
            if model_spec.batch_norm:
                layers.append(nn.BatchNorm2d(c_out, dtype=dtype))
            layers.append(activation())
            if pool != "none":
                layers.append(POOLS[pool](POOL_KERNEL, POOL_STRIDE, POOL_PADDING))
        layers.append(nn.Flatten())
        dense = spec.layer_shapes()[len(stages) :]
        for i, shape in enumerate(dense):
            layers.append(nn.Linear(shape.inputs, shape.outputs, dtype=dtype))
            if i < len(dense) - 1:
                layers.append(activation())
    model = nn.Sequential(*layers).to_empty(device=device)
    generator = torch.Generator().manual_seed(spec.seed)
    for module in model:
        if isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()  # scale 1, shift 0, fresh running statistics
        elif isinstance(module, nn.Conv2d | nn.Linear):
            _initialise(module, model_spec.init, generator)
    return model


def _hidden_activation_mask(model: AutoencoderSpec | MLPSpec, n_layers: int) -> list[bool]:
    """Which Linear layers are followed by the nonlinearity: all but the output layer, and in
    an autoencoder also not the code layer, which is linear (Hinton & Salakhutdinov 2006)."""
    mask = [True] * (n_layers - 1) + [False]
    if isinstance(model, AutoencoderSpec):
        mask[len(model.encoder) - 1] = False
    return mask


@torch.no_grad()
def _initialise(layer: nn.Linear | nn.Conv2d, scheme: str, generator: torch.Generator) -> None:
    """`sparse`: the sparse initialisation of Martens (2010) used by the paper (§13), 15 unit
    Gaussian incoming weights per unit; `glorot`: uniform ±√(6/(fan_in + fan_out)); `he`:
    Gaussian with variance 2/fan_in (for ReLU). A conv layer's fans count its kernel taps.
    Biases 0. Drawn on the CPU in float64 then cast, so a seed gives the same model on every
    device."""
    n_out, n_in = layer.weight.shape[0], layer.weight[0].numel()
    taps = layer.weight[0, 0].numel()  # kh·kw for a conv layer, 1 for a Linear one
    if scheme == "sparse":
        fan_in = min(SPARSE_FAN_IN, n_in)
        inputs = torch.rand(n_out, n_in, generator=generator).argsort(dim=1)[:, :fan_in]
        values = torch.randn(n_out, fan_in, generator=generator, dtype=torch.float64)
        weight = torch.zeros(n_out, n_in, dtype=torch.float64).scatter_(1, inputs, values)
    elif scheme == "he":
        weight = torch.randn(n_out, n_in, generator=generator, dtype=torch.float64)
        weight = weight * (2.0 / n_in) ** 0.5
    else:
        bound = (6.0 / (n_in + n_out * taps)) ** 0.5
        weight = torch.rand(n_out, n_in, generator=generator, dtype=torch.float64)
        weight = (2 * weight - 1) * bound
    layer.weight.copy_(weight.reshape(layer.weight.shape))
    if layer.bias is not None:
        layer.bias.zero_()


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers in model order."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def kfac_layers(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    """The model's Linear and Conv2d layers in model order (the indices a probe's `layers`
    refer to; `RunSpec.layer_shapes` describes them)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
