"""How long a run is: its mini-batch size at each step (fixed, or the paper's exponentially
growing schedule) and its number of steps (given, or from epochs over the training set).

Plain arithmetic, no torch: the API checks a spec's step count and the worker draws its
batches by the same rules (backend.spec's RunSpec holds the fields).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from backend.spec_base import SpecModel

MAX_STEPS = 100_000
MAX_BATCH_SIZE = 60_000
DEFAULT_STEPS = 1000  # a run that gives neither steps nor epochs


class ExponentialBatchSchedule(SpecModel):
    """Paper §13: m_k = min(m₁·exp((k − 1)/b), |S|), growing to the full training set."""

    kind: Literal["exponential"] = "exponential"
    initial: int = Field(1000, ge=1, le=MAX_BATCH_SIZE, description="m₁")
    growth: float = Field(125.0, gt=0, le=1e6, description="b, steps per e-fold of m")
    maximum: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, description="default: |S|")

    def size_at(self, step: int, n_train: int) -> int:
        cap = min(n_train, self.maximum or n_train)
        exponent = min((step - 1) / self.growth, 50.0)
        return max(1, min(cap, round(self.initial * math.exp(exponent))))


def batch_size_at(batch: int | ExponentialBatchSchedule, step: int, n_train: int) -> int:
    """The mini-batch size of step `step` (1-based); a fixed size never exceeds |S|."""
    if isinstance(batch, int):
        return min(batch, n_train)
    return batch.size_at(step, n_train)


def steps_for_epochs(epochs: float, batch: int | ExponentialBatchSchedule, n_train: int) -> int:
    """Steps needed to see epochs·|S| examples (each step sees one mini-batch); at most
    MAX_STEPS + 1, so that asking for too many epochs is cheap to refuse."""
    needed = epochs * n_train
    if isinstance(batch, int):
        return min(math.ceil(needed / batch_size_at(batch, 1, n_train)), MAX_STEPS + 1)
    cap = batch.size_at(MAX_STEPS + 1, n_train)  # the size once the schedule stops growing
    seen, step = 0, 0
    while seen < needed and step <= MAX_STEPS:
        step += 1
        size = batch.size_at(step, n_train)
        seen += size
        if size == cap:  # constant from here on
            step += max(0, math.ceil((needed - seen) / cap))
            break
    return min(step, MAX_STEPS + 1)


def total_steps_from(data: dict[str, Any]) -> int | None:
    """The steps of a run spec's fields `data` (validated so far); None while the dataset or
    the batch size that epochs need is missing."""
    if data.get("steps") is not None:
        return data["steps"]
    epochs, dataset, batch = data.get("epochs"), data.get("dataset"), data.get("batch_size")
    if epochs is None:
        return DEFAULT_STEPS
    if dataset is None or batch is None:
        return None
    return steps_for_epochs(epochs, batch, dataset.info.n_train)
