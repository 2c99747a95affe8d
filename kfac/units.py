"""Which units of a layer a curvature probe keeps: evenly spaced indices.

One rule for the maths (`kfac.probe`) and the worker's snapshots (`worker.snapshots`).  The
API only counts the units (`backend.spec.ProbeSpec`: min(count, total), as the indices are
distinct) and so needs no import of kfac.
"""

from __future__ import annotations

from fractions import Fraction


def evenly_spaced(count: int, total: int) -> list[int]:
    """`count` indices out of range(total) from 0 to total − 1, evenly spaced:
    round(i·(total − 1)/(count − 1)) for i = 0 … count − 1, a half rounded to even, in exact
    arithmetic (so that a float's last bit cannot move a unit); every index when
    count >= total.  Distinct, as the spacing is at least 1."""
    if count < 1 or total < 1:
        raise ValueError(f"need at least one unit out of at least one, got {count} of {total}")
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return [round(Fraction(i * (total - 1), count - 1)) for i in range(count)]
