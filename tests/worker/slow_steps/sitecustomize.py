"""Slow training steps for tests with real workers (tests/worker/test_long_steps.py).

Put this directory first on a worker's PYTHONPATH: Python imports `sitecustomize` at start-up,
and this one wraps `worker.training.build_optimizer` (the one place a run builds its optimizer,
whichever builder its spec names; the wrapper keeps that function's signature) so that a run
labelled `slow SECONDS from K` sleeps SECONDS in each of its steps from the K-th on (the others
train normally), as a K-FAC step that inverts huge factors would block the loop.
"""

from __future__ import annotations

import re
import time

from worker import training

_build_optimizer = training.build_optimizer
_LABEL = re.compile(r"^slow (?P<seconds>[\d.]+) from (?P<first>\d+)$")


def _slow_build_optimizer(spec, model, communicator=None):
    optimizer, step = _build_optimizer(spec, model, communicator)
    match = _LABEL.match(spec.label or "")
    if match is None:
        return optimizer, step
    seconds, first = float(match["seconds"]), int(match["first"])
    calls = 0

    def slow_step(inputs, targets):
        nonlocal calls
        calls += 1
        if calls >= first:
            time.sleep(seconds)
        return step(inputs, targets)

    return optimizer, slow_step


training.build_optimizer = _slow_build_optimizer
