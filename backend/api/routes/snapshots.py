"""Curvature snapshots: a run's list, and one snapshot's matrices, spectra and errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from backend.api.cache import cached_json
from backend.api.data_schemas import SnapshotOut, SnapshotSummary
from backend.api.deps import ReaderDep, SessionDep, load_run, load_snapshot
from backend.api.errors import READ_ERRORS
from backend.store.queries import list_snapshots, read_snapshot
from backend.store.snapshots import decode_matrices, to_base64_matrix

router = APIRouter(tags=["snapshots"], responses=READ_ERRORS)


@router.get("/runs/{run_id}/snapshots")
def run_snapshots(
    run_id: Annotated[str, Path(max_length=64)], session: SessionDep, principal: ReaderDep
) -> list[SnapshotSummary]:
    """A run's snapshots by step, with the kind and stored shape of each matrix."""
    run = load_run(session, principal, run_id)
    return [SnapshotSummary.model_validate(item) for item in list_snapshots(session, run.id)]


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotOut)
def snapshot(
    snapshot_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    request: Request,
    session: SessionDep,
    principal: ReaderDep,
    names: Annotated[
        list[str] | None, Query(max_length=16, description="Only these matrices (default: all)")
    ] = None,
    encoding: Annotated[
        Literal["json", "base64"],
        Query(
            description="How matrices are written: `json`, nested lists of numbers; `base64`, "
            "`{dtype: float32, shape, data}` with the values' little-endian bytes in base64 "
            "(exact, half the size, no number parsing)"
        ),
    ] = "json",
) -> Response:
    """The matrices (2-D arrays, at most 512 x 512, ready for a heatmap), layer boundaries,
    block averages, spectra and relative errors of one snapshot. A snapshot never changes
    once written, so its answer is cached and revalidated by ETag."""
    stored = load_snapshot(session, principal, snapshot_id)
    key = ("snapshot", snapshot_id, tuple(names or ()), encoding)

    def answer() -> dict[str, Any] | None:
        if encoding == "json":
            return read_snapshot(session, snapshot_id, names)
        body = read_snapshot(session, snapshot_id, names=())  # all but the matrices
        matrices = decode_matrices(stored.payload, names)
        return {**body, "matrices": {name: to_base64_matrix(m) for name, m in matrices.items()}}

    return cached_json(request, key, answer)
