"""A tracked run's curvature snapshot as the body of `POST /api/tracking/runs/{id}/snapshots`.

The matrices come from `kfac.snapshot.snapshot_payload`, the code the lab's workers use, so
a tracked run's heatmaps mean what a worker run's do. Each is block-pooled here exactly as the
store would pool it (`backend.store.snapshots.block_pool`, at most `MAX_SIDE` per side) and
sent as base64 float32 with its original shape: a snapshot of a 4096-parameter probe is then a
few MB, not hundreds. A matrix that could not be formed (an inverse of a factor that is not
positive definite: NaN) is left out, with the reason kept in `extras["notes"]`.

Imported by `Run.snapshot` only, so `import kfac_lab` does not import torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from backend.store.snapshots import MAX_SIDE, block_pool, to_base64_matrix, to_jsonable
from kfac.snapshot import optimizer_damping, snapshot_payload


def snapshot_body(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | str,
    loss: str,
    optimizer: Any,
    *,
    step: int,
    layers: list[str] | None,
    probe: int | dict[str, tuple] | None,
    damping: float,
) -> dict[str, Any]:
    payload = snapshot_payload(
        model,
        inputs,
        targets,
        loss,
        layers=layers,
        probe=probe,
        damping=optimizer_damping(optimizer, damping),
    )
    return payload_body(payload, step)


def payload_body(payload: dict[str, Any], step: int) -> dict[str, Any]:
    """The request body of a `snapshot_payload` at `step`: matrices pooled, base64."""
    matrices, notes = {}, list(payload["extras"]["notes"])
    for name, matrix in payload["matrices"].items():
        if not np.isfinite(matrix).all():
            notes.append(f"{name} left out: not finite")
            continue
        matrices[name] = {
            **to_base64_matrix(block_pool(matrix, MAX_SIDE)),
            "original_shape": list(matrix.shape),
        }
    return {
        "step": int(step),
        "blocks": payload["blocks"],
        "matrices": matrices,
        "spectra": to_jsonable(payload["spectra"]),
        "relative_errors": to_jsonable(payload["relative_errors"]),
        "block_averages": to_jsonable(payload["block_averages"]),
        "extras": to_jsonable({**payload["extras"], "notes": notes}),
    }
