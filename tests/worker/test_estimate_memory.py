"""The memory estimate (backend/estimate.py) against the memory a run really takes.

One fresh process imports everything a worker imports (torch, the zoo's data libraries) and,
as a worker's pool does, forks a child per run (worker/celery_app.py): each spec trains a few
steps in a child of its own. The peak resident memory while training (the kernel's high-water
mark VmHWM, reset in the child through /proc/self/clear_refs, since importing can peak higher
than a small run does) minus the child's resident memory before it is the run's own peak,
which the estimate must match within a factor of 2. One process for the four specs instead of
one each saves three imports of torch. The specs are wide enough that the run's memory
dominates the allocator's noise, and short (three steps, no evaluation or checkpoints, which
the estimate would count).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from backend.estimate import memory_bytes
from backend.spec import RunSpec
from tests.worker.labs import REPO

pytestmark = pytest.mark.slow

MEASURE = """
import gc, importlib, json, os, sys
from worker.celery_app import PRELOAD
for module in PRELOAD:
    importlib.import_module(module)
from backend.spec import RunSpec
from worker.run_types import MemoryRecorder
from worker.training import train
gc.freeze()

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

def measure(spec):
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size
    result = train(spec, MemoryRecorder())
    peak = status_kib("VmHWM")
    return {"status": result.status, "reason": result.reason, "peak_bytes": (peak - before) * 1024}

for name, data in json.loads(sys.argv[1]).items():
    spec = RunSpec.model_validate(data)
    child = os.fork()
    if child == 0:
        print(json.dumps({name: measure(spec)}), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
"""

SHORT = {"steps": 3, "eval_interval": None, "checkpoint_interval": None, "device": "cpu"}
SPECS = {
    "mlp-kfac": {
        "dataset": "synthetic",
        "model": {"name": "mlp", "hidden": [1500, 1500]},
        "optimizer": {"name": "kfac"},
        "batch_size": 2000,
    },
    "autoencoder-kfac": {
        "dataset": "synthetic",
        "model": {"name": "autoencoder", "encoder": [1000, 500, 30]},
        "optimizer": {"name": "kfac"},
        "batch_size": 4000,
    },
    "convnet-kfc": {
        "dataset": "digits8x8",
        "model": {"name": "convnet", "channels": [32, 32], "pooling": ["none", "max"]},
        "optimizer": {"name": "kfc"},
        "batch_size": 1000,
    },
    "mlp-adam": {
        "dataset": "synthetic",
        "model": {"name": "mlp", "hidden": [2000, 2000]},
        "optimizer": {"name": "adam"},
        "batch_size": 4000,
    },
}


@pytest.fixture(scope="module")
def measured_peaks() -> dict[str, dict]:
    """Each spec's outcome and peak memory, trained as described in the module doc."""
    specs = {name: {**spec, **SHORT} for name, spec in SPECS.items()}
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(specs)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes: dict[str, dict] = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            outcomes.update(json.loads(line))
    return outcomes


@pytest.mark.parametrize("name", SPECS)
def test_the_memory_estimate_is_within_2x_of_the_measured_peak(
    name: str, measured_peaks: dict[str, dict]
) -> None:
    estimated = memory_bytes(RunSpec.model_validate({**SPECS[name], **SHORT}))
    outcome = measured_peaks.get(name)
    assert outcome is not None and outcome["status"] == "succeeded", (outcome, measured_peaks)
    measured = outcome["peak_bytes"]
    assert measured > 50e6, f"{name}: {measured / 1e6:.0f} MB is too little to compare"
    ratio = estimated / measured
    assert 0.5 <= ratio <= 2.0, (
        f"{name}: estimated {estimated / 1e6:.0f} MB, measured {measured / 1e6:.0f} MB"
    )
