"""A curvature snapshot as plain numpy: what the lab stores for a run at one step.

`snapshot_payload` runs `kfac.curvature.fisher_matrices` on a batch and returns exactly the
keyword arguments of the store's `write_snapshot` (matrices, blocks, spectra, relative_errors,
block_averages, extras) as numpy arrays and Python values, so that the store needs no torch.
The worker (worker/snapshots.py, with the run spec's probe) and the tracking client
(`kfac_lab.Run.snapshot`, in a user's own script) both build their snapshots with it, so a
tracked run's heatmaps mean exactly what a worker run's do.

The model is evaluated in eval mode (batch norm with its running statistics), so that every
example's gradient is its own (per-example gradients under torch.func.vmap).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kfac.curvature import fisher_matrices
from kfac.optimizer import KFAC


def snapshot_payload(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | str,
    loss: str,
    *,
    layers: list[str] | None = None,
    probe: int | dict[str, tuple] | None = None,
    damping: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """F, F̃ and the inverses (paper §4.2, §4.3; damping as in §6.3) of `layers` on this batch.

    `targets` is a tensor (the empirical Fisher at those targets) or "sampled" (the true
    Fisher, §5); `layers`, `probe`, `damping` and `generator` are those of `fisher_matrices`.
    `extras` describes the snapshot: layer names (and `layer_labels`, as a person names them),
    damping, number of examples, which Fisher, and any numerical fall-back taken by an
    inversion.
    """
    training = model.training
    model.eval()
    try:
        result = fisher_matrices(
            model,
            inputs,
            targets,
            loss,
            layers=layers,
            damping=damping,
            probe=probe,
            generator=generator,
        )
    finally:
        model.train(training)
    return {
        "matrices": {name: _numpy(matrix) for name, matrix in result.matrices.items()},
        "blocks": [[int(start), int(stop)] for start, stop in result.blocks],
        "spectra": {
            name: {factor: _numpy(values) for factor, values in pair.items()}
            for name, pair in result.spectra.items()
        },
        "relative_errors": {"kronecker_vs_exact": _numpy(result.relative_errors)},
        "block_averages": {
            name: _numpy(result.block_averages(matrix)) for name, matrix in result.matrices.items()
        },
        "extras": {
            "layer_names": result.layer_names,
            "layer_labels": layer_labels(model, result.layer_names),
            "damping": result.damping,
            "examples": int(inputs.shape[0]),
            "fisher": "empirical" if isinstance(targets, torch.Tensor) else "true",
            "notes": list(result.notes),
        },
    }


def layer_labels(model: nn.Module, names: list[str]) -> list[str]:
    """How a person names each of the layers `names` of `model`, with its shape.

    A layer the model named (`encoder.proj`) keeps its name; a layer of an `nn.Sequential`,
    named by its position ("4", "1.2"), is called by its kind and rank among the model's layers
    of that kind: `fc2` is the second `nn.Linear`, `conv1` the first `nn.Conv2d`. The shape is
    `in→out` features of a Linear (`fc2 250→125`), `in→out k×k` channels of a Conv2d.
    """
    ranks: dict[str, str] = {}
    counts = {"fc": 0, "conv": 0}
    for name, module in model.named_modules():
        kind = (
            "conv"
            if isinstance(module, nn.Conv2d)
            else "fc"
            if isinstance(module, nn.Linear)
            else None
        )
        if kind is not None:
            counts[kind] += 1
            ranks[name] = f"{kind}{counts[kind]}"
    modules = dict(model.named_modules())
    labels = []
    for name in names:
        module = modules[name]
        positional = all(part.isdigit() for part in name.split("."))
        if isinstance(module, nn.Conv2d):
            height, width = module.kernel_size
            shape = f"{module.in_channels}→{module.out_channels} {height}×{width}"
        else:
            shape = f"{module.in_features}→{module.out_features}"
        labels.append(f"{ranks[name] if positional else name} {shape}")
    return labels


def optimizer_damping(optimizer: Any, default: float) -> float:
    """The damping a snapshot's inverses should use: for a `kfac.KFAC` its current λ + η (the
    inverses it applies, §6.3), for any other optimizer `default`."""
    if isinstance(optimizer, KFAC):
        eta = optimizer.weight_decay(optimizer.counters["step"])
        return float(optimizer.param_groups[0]["damping"] + eta)
    return default


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()
