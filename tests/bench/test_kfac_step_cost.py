"""bench.kfac_step_cost's probes run against the optimizer as it is (the fractions probe had
gone stale once already: it called the quadratic model with a signature it no longer had)."""

from __future__ import annotations

from bench.kfac_step_cost import FRACTIONS, fraction_quality


def test_the_fractions_probe_solves_the_model_on_every_share(capsys) -> None:
    fraction_quality(probe_steps=(2,), batch=16)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |"))
    assert row.count("%") == len(FRACTIONS) - 1  # every share but the whole batch, one cell each
