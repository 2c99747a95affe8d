"""Encoding of curvature snapshots: block pooling, compact float32 storage, JSON-ready decoding.

For JSON, a matrix is either nested lists of numbers (`to_json_matrix`, what the design's API
contract shows) or, on request, its float32 bytes in base64 with dtype and shape
(`to_base64_matrix`): 4 bytes a value exactly instead of ~9 characters of decimal text, about
half the size, and decoded by a browser without parsing a number at all.

A snapshot holds a few dense n x n matrices over the probe's parameters (exact Fisher, its
Kronecker approximation, three inverses). The dashboard draws them as heatmaps, for which
512 x 512 cells are plenty, so larger matrices are block-averaged down to at most that size
before storage; the layer boundaries (`blocks`) are rescaled along with them. Matrices are kept
as float32 in a deflate-compressed `.npz` archive: compact, and readable with numpy alone.

Only numpy is used here; nothing in this module touches the database.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MAX_SIDE = 512
SIGNIFICANT_DIGITS = 7  # float32 carries about 7 significant decimal digits


def pool_factor(size: int, max_side: int = MAX_SIDE) -> int:
    """The smallest integer factor that brings `size` down to at most `max_side`."""
    return max(1, math.ceil(size / max_side))


def pooled_side(size: int, max_side: int = MAX_SIDE) -> int:
    """The side that `block_pool` makes of a side of `size` (the last group may be short)."""
    return math.ceil(size / pool_factor(size, max_side))


def block_pool(matrix: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Average `matrix` over blocks so that neither side exceeds `max_side`.

    Each side is cut into groups of `pool_factor(side)` consecutive indices (the last group may
    be shorter) and every block of the grid is replaced by its mean, so a heatmap of the result
    shows the same structure as the full matrix. Accumulates in float64, returns float32.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {m.shape}")
    row_starts = np.arange(0, m.shape[0], pool_factor(m.shape[0], max_side))
    col_starts = np.arange(0, m.shape[1], pool_factor(m.shape[1], max_side))
    if len(row_starts) == m.shape[0] and len(col_starts) == m.shape[1]:
        return m.astype(np.float32)
    sums = np.add.reduceat(np.add.reduceat(m, row_starts, axis=0), col_starts, axis=1)
    counts = np.outer(
        np.diff(np.append(row_starts, m.shape[0])), np.diff(np.append(col_starts, m.shape[1]))
    )
    return (sums / counts).astype(np.float32)


def encode_matrices(
    matrices: Mapping[str, np.ndarray],
    max_side: int = MAX_SIDE,
    original_shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Pool and compress `matrices`; returns the payload and a description of each matrix.

    `original_shapes` gives the size of matrices that were pooled already (`block_pool` with
    the same `max_side`, as the tracking client does before sending them), so that their
    description, and the layer boundaries read with it, refer to the full matrices.
    """
    pooled: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, matrix in matrices.items():
        original = tuple((original_shapes or {}).get(name, np.shape(matrix)))
        pooled[name] = block_pool(matrix, max_side)
        meta[name] = {
            "shape": list(pooled[name].shape),
            "original_shape": list(original),
            "pool": [pool_factor(side, max_side) for side in original],
        }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **pooled)
    return buffer.getvalue(), meta


def decode_matrices(payload: bytes, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The stored float32 matrices (all, or only `names`), as numpy arrays."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        wanted = archive.files if names is None else [n for n in names if n in archive.files]
        return {name: archive[name] for name in wanted}


def scale_blocks(blocks: Iterable[Iterable[int]], factor: int) -> list[list[float]]:
    """Layer boundaries `[start, stop]` in the coordinates of a matrix pooled by `factor`."""
    if factor == 1:
        return [[start, stop] for start, stop in blocks]
    return [[start / factor, stop / factor] for start, stop in blocks]


def to_json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    """Nested lists ready for JSON: values cut to float32's precision, NaN/Inf as None.

    Rounding to 7 significant digits keeps every bit float32 had while making the decimal text
    (and so the HTTP response) about half as long as the float64 rendering of float32 values.
    """
    m = np.asarray(matrix, dtype=np.float64)
    finite = np.isfinite(m)
    magnitude = np.where(finite & (m != 0), np.abs(m), 1.0)
    scale = 10.0 ** (SIGNIFICANT_DIGITS - 1 - np.floor(np.log10(magnitude)))
    rounded = np.where(finite, np.round(m * scale) / scale, 0.0)
    if finite.all():
        return rounded.tolist()
    as_objects = rounded.astype(object)
    as_objects[~finite] = None
    return as_objects.tolist()


def to_base64_matrix(matrix: np.ndarray) -> dict[str, Any]:
    """`{"dtype": "float32", "shape": [rows, cols], "data": base64}` of a 2-D matrix.

    `data` is the little-endian float32 values in row-major order, exactly as stored (no
    rounding); NaN and infinities stay what they are, where nested lists would say null.
    """
    m = np.ascontiguousarray(matrix, dtype="<f4")
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {m.shape}")
    return {
        "dtype": "float32",
        "shape": list(m.shape),
        "data": base64.b64encode(m.tobytes()).decode("ascii"),
    }


def to_jsonable(value: Any) -> Any:
    """Numpy arrays and scalars (also inside dicts and lists) as plain Python for JSON columns.

    Non-finite floats become None, since JSON has no NaN.
    """
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
