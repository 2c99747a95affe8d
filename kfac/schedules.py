"""The experiment knobs of paper §13: a growing mini-batch and averaged iterates."""

from __future__ import annotations

import math

import torch
from torch import nn


def exponential_batch_size(step: int, initial: int, final: int, steps_to_final: int) -> int:
    """m_k = min(m₁·exp(c·(k − 1)), m_final) with c chosen so that m reaches m_final at
    `steps_to_final` (§13: K-FAC's estimates need bigger batches as the optimum nears)."""
    if step < 1 or initial < 1 or final < initial or steps_to_final < 1:
        raise ValueError("need step >= 1, 1 <= initial <= final and steps_to_final >= 1")
    rate = math.log(final / initial) / max(steps_to_final - 1, 1)
    return min(final, round(initial * math.exp(rate * (step - 1))))


class IterateAverage:
    """θ̄ₖ = ξₖ θ̄ₖ₋₁ + (1 − ξₖ) θₖ with ξₖ = min(1 − 1/k, decay) (§13), for evaluation only.

    `swap_into(model)` is a context manager that evaluates with θ̄ and restores θ afterwards.
    """

    def __init__(self, model: nn.Module, decay: float = 0.99):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = decay
        self.count = 0
        self.average = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.count += 1
        xi = min(1.0 - 1.0 / self.count, self.decay)
        for average, p in zip(self.average, model.parameters(), strict=True):
            average.mul_(xi).add_(p.detach(), alpha=1.0 - xi)

    def swap_into(self, model: nn.Module):
        return _Swapped(model, self.average)

    def state_dict(self) -> dict:
        return {"count": self.count, "decay": self.decay, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.decay = state["count"], state["decay"]
        for average, saved in zip(self.average, state["average"], strict=True):
            average.copy_(saved)


class _Swapped:
    def __init__(self, model: nn.Module, values: list[torch.Tensor]):
        self.params = list(model.parameters())
        self.values = values
        self.saved: list[torch.Tensor] = []

    def __enter__(self):
        with torch.no_grad():
            self.saved = [p.detach().clone() for p in self.params]
            for p, v in zip(self.params, self.values, strict=True):
                p.copy_(v)

    def __exit__(self, *exc):
        with torch.no_grad():
            for p, v in zip(self.params, self.saved, strict=True):
                p.copy_(v)
        return False
