"""kfac.gamma: when γ is searched (§6.6), among which candidates, in which order.

That the optimizer keeps the candidate whose step has the lowest quadratic model, with the
right model values, is checked against brute force in tests/kfac/test_adaptive_step.py.
"""

from __future__ import annotations

import math

import pytest

from kfac.gamma import gamma_search_due, search_gamma, tied_gamma
from kfac.settings import KFACSettings


def group(**options) -> dict:
    settings = {"gamma_search": True, "gamma_interval": 4, "inverse_interval": 2, **options}
    return KFACSettings(**settings).group_defaults()


def test_gamma_is_searched_every_interval_after_the_first_step_with_the_quadratic_model():
    assert [s for s in range(1, 14) if gamma_search_due(group(), s)] == [5, 9, 13]
    assert not any(gamma_search_due(group(lr=0.1), s) for s in range(1, 14))  # no model
    assert not any(gamma_search_due(group(gamma_search=False), s) for s in range(1, 14))


def test_the_candidates_are_tried_low_to_high_and_the_first_of_equals_is_kept():
    omega = math.sqrt(0.9) ** 4  # ω₂ = sqrt(ω)^T₂
    tried = []

    def flat(candidate: float) -> float:
        tried.append(candidate)
        return -1.0

    kept = search_gamma(2.0, group(damping_decay=0.9), flat)
    assert tried == pytest.approx([2.0 * omega, 2.0, 2.0 / omega], rel=1e-15)
    assert kept == tried[0]


def test_the_tied_gamma_is_the_root_of_damping_plus_weight_decay():
    assert tied_gamma(0.5, 0.25) == math.sqrt(0.75)
