"""Which parameters a run's curvature snapshots cover: `ProbeSpec`, a field of the run spec
(import it from `backend.spec`, with the rest of the spec). Like the spec, it imports no torch:
the probe's size is counted from the layer shapes."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from backend.architectures import LayerShape, dense_shapes
from backend.spec_base import SpecModel


class ProbeSpec(SpecModel):
    """Which parameters a curvature snapshot covers (the paper's Fig. 2 shows the middle 4
    layers of its MNIST autoencoder with a subset of units): of each K-FAC layer `layers`
    (Linear and Conv2d in model order, 0-based; default: the middle 4), `units` evenly spaced
    output units (features or channels) and input units (features, or a conv layer's patch
    coordinates), plus the bias. In a stack of Linear layers these are the same units at every
    layer boundary, so the off-diagonal blocks couple the same neurons."""

    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, max_length=12)
    units: int = Field(16, ge=1, le=256)
    examples: int = Field(256, ge=1, le=4096, description="examples used by the snapshot")
    damping: float = Field(
        1e-3, ge=0, le=1e6, description="λ of the inverses shown for runs without K-FAC"
    )

    def layer_indices(self, n_layers: int) -> list[int]:
        if self.layers is not None:
            return sorted(set(self.layers))
        count = min(4, n_layers)
        start = (n_layers - count) // 2
        return list(range(start, start + count))

    def parameter_count(self, layers: list[int] | list[LayerShape]) -> int:
        """P: the probe keeps (|in| + bias)·|out| parameters of each selected layer, where a
        side keeps min(units, width) units (`kfac.units.evenly_spaced` picks which, distinct;
        only their number matters here); `layers` are the model's layer shapes, or the widths
        of a stack of Linear layers."""
        shapes = dense_shapes(layers) if layers and isinstance(layers[0], int) else layers
        return sum(
            (min(self.units, s.inputs) + s.bias) * min(self.units, s.outputs)
            for s in (shapes[i] for i in self.layer_indices(len(shapes)))
        )
