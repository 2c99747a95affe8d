"""Curvature snapshots of a run: the paper's Fig. 2/3 matrices over a probe, as numpy.

A snapshot is `kfac.curvature.fisher_matrices` on a probe of the model: the Linear layers
`spec.probe.layer_indices(...)` (the middle four by default, like the paper's Fig. 2), keeping
at every layer boundary the same `spec.probe.units` evenly spaced units (`backend.spec.
probe_units`), so that the output units of one probed layer are the input units of the next and
the off-diagonal blocks of F and F̃ couple the same neurons. The spec validated that this probe
stays within the parameter limit, by the same arithmetic.

For a K-FAC run the matrices are damped with the optimizer's current λ + η, so the inverses are
the ones it applies; other runs use `spec.probe.damping`. The payload has exactly the keyword
arguments of the store's `write_snapshot` (matrices, blocks, spectra, relative_errors,
block_averages, extras): plain numpy and Python, no torch, so the store needs no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from backend.spec import RunSpec, probe_units
from kfac.curvature import fisher_matrices
from worker.zoo.models import linear_layers


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
    layers = linear_layers(model)
    dims = spec.layer_dims()
    kept = [probe_units(width, spec.probe.units) for width in dims]
    selected = spec.probe.layer_indices(len(layers))
    probe = {names[layers[i]]: (kept[i + 1], kept[i]) for i in selected}
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    result = fisher_matrices(
        model,
        inputs,
        targets,
        spec.loss,
        layers=list(probe),
        damping=damping,
        probe=probe,
        generator=generator,
    )
    matrices = {name: _numpy(matrix) for name, matrix in result.matrices.items()}
    return {
        "matrices": matrices,
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
            "layers": selected,
            "layer_names": result.layer_names,
            "units": [{"layer": i, "outputs": kept[i + 1], "inputs": kept[i]} for i in selected],
            "damping": result.damping,
            "examples": int(inputs.shape[0]),
            "fisher": "empirical" if isinstance(targets, torch.Tensor) else "true",
            "notes": list(result.notes),
        },
    }


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()
