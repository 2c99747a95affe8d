"""The probe's units rule (kfac.units): the units the maths keeps are as many as the API counts."""

import pytest

from backend.spec import ProbeSpec
from kfac.units import evenly_spaced


def nearest_by_search(count: int, total: int) -> list[int]:
    """Brute force: for each ideal point i·(total − 1)/(count − 1), the index of range(total)
    nearest to it, the even one on a tie. Distances are compared exactly in integers, scaled
    by count − 1: |j − i(total − 1)/(count − 1)|·(count − 1) = |j(count − 1) − i(total − 1)|
    (Fractions cost 15 s of the suite at total = 1000)."""
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return [
        min(range(total), key=lambda j, i=i: (abs(j * (count - 1) - i * (total - 1)), j % 2))
        for i in range(count)
    ]


@pytest.mark.parametrize("total", [1, 2, 3, 7, 10, 63, 64, 251, 1000])
def test_evenly_spaced_is_the_nearest_index_to_each_ideal_point(total):
    for count in range(1, min(total, 70) + 3):
        units = evenly_spaced(count, total)
        assert units == nearest_by_search(count, total), (count, total)
        assert len(units) == min(count, total) and len(set(units)) == len(units)
        assert units[0] == 0 and (count == 1 or units[-1] == total - 1)


def test_ties_go_to_the_even_index_in_exact_arithmetic():
    """7 of 10: the ideal point 4.5 is a tie and goes to 4; 27 of 28 has the tie 13.5 (→ 14)."""
    assert evenly_spaced(7, 10) == [0, 2, 3, 4, 6, 8, 9]
    assert evenly_spaced(27, 28)[13] == 14


def test_the_maths_keeps_the_units_the_api_counted():
    """kfac.probe picked its units with a float linspace, which disagreed with the API's rule
    on 655 (count, total) pairs below 300 — e.g. 27 of 28 — so an int probe kept other units
    than a spec of the same size counts; both now ask kfac.units."""
    from kfac.probe import _unit_range

    for total in range(1, 120):
        for count in range(1, total + 1):
            assert _unit_range(count, total).tolist() == evenly_spaced(count, total)


@pytest.mark.parametrize(("count", "total"), [(0, 5), (3, 0), (-1, 4)])
def test_no_units_is_an_error(count, total):
    with pytest.raises(ValueError, match="at least one unit"):
        evenly_spaced(count, total)


def test_the_api_sizes_the_probe_by_the_same_units():
    """ProbeSpec's parameter count is (|kept inputs| + bias)·|kept outputs| per probed layer."""
    widths = [784, 250, 125, 62, 8]
    spec = ProbeSpec(units=16, layers=[0, 3])
    expected = (len(evenly_spaced(16, 784)) + 1) * len(evenly_spaced(16, 250)) + (
        len(evenly_spaced(16, 62)) + 1
    ) * len(evenly_spaced(16, 8))
    assert spec.parameter_count(widths) == expected == 17 * 16 + 17 * 8
