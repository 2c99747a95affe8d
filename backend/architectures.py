"""The model part of the run spec: architectures and their size arithmetic, without torch.

Each model spec knows its layers as `LayerShape`s — the K-FAC view of a layer, the matrix
W̄ = [W b] of shape (outputs, inputs + bias) — so the API can check sizes (parameter count,
factor sides, curvature probes) with plain arithmetic, and `worker.zoo.models` builds exactly
these layers. Re-exported by `backend.spec`, where the run spec lives.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, NamedTuple

from pydantic import Field, field_validator

from backend.spec_base import TaggedSpec

Activation = Literal["sigmoid", "tanh", "relu"]


class LayerShape(NamedTuple):
    """One K-FAC layer: W̄ is (outputs, inputs + bias). `inputs` is in_features for a Linear
    layer and in_channels·kh·kw (the patch) for a Conv2d layer; `outputs` its units/channels."""

    inputs: int
    outputs: int
    bias: bool = True

    @property
    def parameters(self) -> int:
        return (self.inputs + int(self.bias)) * self.outputs


def dense_shapes(dims: list[int]) -> list[LayerShape]:
    """The Linear layers of a stack with these widths."""
    return [LayerShape(n_in, n_out) for n_in, n_out in zip(dims, dims[1:], strict=False)]


def parameter_count(dims: list[int]) -> int:
    """Weights and biases of a stack of Linear layers with these widths."""
    return sum(shape.parameters for shape in dense_shapes(dims))


def _scaled(widths: list[int], scale: float) -> list[int]:
    return [max(1, round(w * scale)) for w in widths]


class DenseModelSpec(TaggedSpec):
    """Models made of Linear layers only, on flat inputs.

    Also the base of a plugin's model spec (entry point group `kfac_lab.models`): a subclass
    with `name: Literal[...]`, its hyper-parameters as fields, `loss` ("cross_entropy", "bce"
    or "mse"), `layer_dims` and `builder`, the worker function (RunSpec, device) -> nn.Module
    that builds exactly these Linear layers in this order."""

    takes_images: ClassVar[bool] = False
    builder: ClassVar[str] = "worker.zoo.models:build_dense"

    def layer_dims(self, input_dim: int, n_classes: int) -> list[int]:
        raise NotImplementedError

    def is_chain(self) -> bool:
        """Whether the built model is a chain of its K-FAC layers joined by parameter-free
        per-example modules (`kfac.linearisation`), so that K-FAC reads the quadratic model's
        J·Δ, J·δ₀ off the training pass (§7). A plugin's builder may build anything: no."""
        return False

    def layer_shapes(
        self, input_dim: int, n_classes: int, image_shape: tuple[int, int, int] | None = None
    ) -> list[LayerShape]:
        return dense_shapes(self.layer_dims(input_dim, n_classes))

    def parameter_count(
        self, input_dim: int, n_classes: int, image_shape: tuple[int, int, int] | None = None
    ) -> int:
        return parameter_count(self.layer_dims(input_dim, n_classes))


class AutoencoderSpec(DenseModelSpec):
    """The deep autoencoders of paper §13 (after Hinton & Salakhutdinov 2006).

    Encoder widths are mirrored into the decoder; the code layer (last encoder width) is linear,
    the other hidden units use `activation`, and the output layer gives logits of independent
    Bernoullis (`bce`, the paper's MNIST and CURVES) or Gaussian means (`mse`, as for FACES).
    """

    name: Literal["autoencoder"] = "autoencoder"
    encoder: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1000, 500, 250, 30], min_length=1, max_length=12
    )
    width_scale: float = Field(1.0, gt=0, le=8)
    activation: Activation = "sigmoid"
    loss: Literal["bce", "mse"] = "bce"
    init: Literal["sparse", "glorot"] = "sparse"

    def layer_dims(self, input_dim: int, n_classes: int) -> list[int]:
        enc = _scaled(self.encoder, self.width_scale)
        return [input_dim, *enc, *reversed(enc[:-1]), input_dim]

    def is_chain(self) -> bool:  # Linear layers and activations (worker.zoo.models)
        return True


class MLPSpec(DenseModelSpec):
    """A fully-connected classifier: hidden layers with `activation`, then class logits."""

    name: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 128], max_length=12
    )
    width_scale: float = Field(1.0, gt=0, le=8)
    activation: Activation = "tanh"
    init: Literal["sparse", "glorot"] = "glorot"
    loss: Literal["cross_entropy"] = "cross_entropy"

    def layer_dims(self, input_dim: int, n_classes: int) -> list[int]:
        return [input_dim, *_scaled(self.hidden, self.width_scale), n_classes]

    def is_chain(self) -> bool:  # Linear layers and activations (worker.zoo.models)
        return True


POOL_KERNEL, POOL_STRIDE, POOL_PADDING = 3, 2, 1
"""Every pooling layer is 3×3 with stride 2 (cuda-convnet's overlapping pooling), padded by 1
so that 32 → 16 → 8 → 4 and 28 → 14 → 7 → 4."""


def _pooled(size: int) -> int:
    return (size + 2 * POOL_PADDING - POOL_KERNEL) // POOL_STRIDE + 1


class ConvNetSpec(TaggedSpec):
    """A conv net of the kind trained in the KFC paper (Grosse & Martens 2016, §6).

    Each stage is Conv2d(k×k, stride 1, zero padding k//2, so the size is kept) → [BatchNorm2d]
    → activation → 3×3/2 pooling (`pooling[i]`: max, avg or none); then the flattened maps go
    through fully-connected `hidden` layers to the class logits. The defaults are the paper's
    CIFAR-10 net as we read it — three 5×5 layers of 32, 32 and 64 filters, each pooled 3×3
    with stride 2 (max, then average, average: the cuda-convnet layout), and a softmax layer —
    about 90k parameters on 32×32×3. With `batch_norm` the conv layers have no bias (BN's shift
    replaces it) and BN's scale and shift get the plain update of non-KFC parameters.
    """

    name: Literal["convnet"] = "convnet"
    builder: ClassVar[str] = "worker.zoo.models:build_convnet"
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [32, 32, 64], min_length=1, max_length=8
    )
    kernel_size: int = Field(5, ge=1, le=11)
    pooling: list[Literal["max", "avg", "none"]] = Field(
        default_factory=lambda: ["max", "avg", "avg"], max_length=8, validate_default=True
    )
    batch_norm: bool = False
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, max_length=4)
    width_scale: float = Field(1.0, gt=0, le=8)
    activation: Activation = "relu"
    init: Literal["he", "glorot"] = "he"
    loss: Literal["cross_entropy"] = "cross_entropy"
    takes_images: ClassVar[bool] = True

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size % 2 == 0:
            raise ValueError("must be odd (the padding k//2 keeps the image size)")
        return size

    @field_validator("pooling")
    @classmethod
    def _one_per_stage(cls, pooling: list[str], info) -> list[str]:
        channels = info.data.get("channels")
        if channels is not None and len(pooling) != len(channels):
            raise ValueError(f"needs one entry per conv layer ({len(channels)})")
        return pooling

    def scaled_channels(self) -> list[int]:
        return _scaled(self.channels, self.width_scale)

    def stages(self, image_shape: tuple[int, int, int]) -> list[tuple[int, int, int, int]]:
        """(in_channels, out_channels, height, width) of every stage, sizes after pooling."""
        channels, height, width = image_shape
        stages = []
        for out, pool in zip(self.scaled_channels(), self.pooling, strict=True):
            if pool != "none":
                height, width = _pooled(height), _pooled(width)
            stages.append((channels, out, height, width))
            channels = out
        return stages

    def layer_dims(self, input_dim: int, n_classes: int) -> list[int]:
        raise ValueError("a conv net has no list of layer widths; use layer_shapes")

    def is_chain(self) -> bool:
        """Conv, activation, pooling, Flatten and Linear layers are a chain; batch norm couples
        the examples of the batch and has parameters outside the K-FAC layers."""
        return not self.batch_norm

    def layer_shapes(
        self, input_dim: int, n_classes: int, image_shape: tuple[int, int, int] | None = None
    ) -> list[LayerShape]:
        if image_shape is None:
            raise ValueError("a conv net needs an image dataset (one with an image shape)")
        patch = self.kernel_size**2
        shapes = [
            LayerShape(c_in * patch, c_out, not self.batch_norm)
            for c_in, c_out, _, _ in self.stages(image_shape)
        ]
        _, channels, height, width = self.stages(image_shape)[-1]
        widths = [channels * height * width, *_scaled(self.hidden, self.width_scale), n_classes]
        return shapes + dense_shapes(widths)

    def parameter_count(
        self, input_dim: int, n_classes: int, image_shape: tuple[int, int, int] | None = None
    ) -> int:
        """Conv and Linear weights and biases, plus BN's scale and shift per channel."""
        shapes = self.layer_shapes(input_dim, n_classes, image_shape)
        norm = 2 * sum(self.scaled_channels()) if self.batch_norm else 0
        return sum(shape.parameters for shape in shapes) + norm
