"""Curvature snapshots of a run: the paper's Fig. 2/3 matrices over a probe, as numpy.

A snapshot is `kfac.curvature.fisher_matrices` on a probe of the model: the K-FAC layers
(Linear and Conv2d) `spec.probe.layer_indices(...)` (the middle four by default, like the
paper's Fig. 2), keeping `spec.probe.units` evenly spaced output and input units of each
(`kfac.units.evenly_spaced`, the rule the spec sized the probe by). In a stack of Linear layers
these are the same units at every layer boundary, so that the output units of one probed layer
are the input units of the next and the off-diagonal blocks of F and F̃ couple the same
neurons; a conv layer keeps output channels and patch coordinates. The spec validated that this
probe stays within the parameter limit, by the same arithmetic. The model is evaluated in eval
mode (batch norm with its running statistics), so that every example's gradient is its own.

For a K-FAC run the matrices are damped with the optimizer's current λ + η, so the inverses are
the ones it applies; other runs use `spec.probe.damping`. The payload has exactly the keyword
arguments of the store's `write_snapshot`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from backend.spec import RunSpec
from kfac.snapshot import snapshot_payload
from kfac.units import evenly_spaced
from worker.zoo.models import kfac_layers


def curvature_snapshot(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | str,
    spec: RunSpec,
    *,
    damping: float,
    seed: int,
) -> dict[str, Any]:
    """The snapshot payload; `targets` is "sampled" (true Fisher) or the training targets."""
    names = {module: name for name, module in model.named_modules()}
    layers = kfac_layers(model)
    units = spec.probe.units
    kept = [
        (evenly_spaced(units, shape.outputs), evenly_spaced(units, shape.inputs))
        for shape in spec.layer_shapes()
    ]
    selected = spec.probe.layer_indices(len(layers))
    probe = {names[layers[i]]: kept[i] for i in selected}
    payload = snapshot_payload(
        model,
        inputs,
        targets,
        spec.loss,
        layers=list(probe),
        probe=probe,
        damping=damping,
        generator=torch.Generator(device=inputs.device).manual_seed(seed),
    )
    payload["extras"] = {
        "layers": selected,
        **payload["extras"],
        "units": [{"layer": i, "outputs": kept[i][0], "inputs": kept[i][1]} for i in selected],
    }
    return payload
