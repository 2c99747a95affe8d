"""The memory estimate (backend/estimate.py) against the memory a run really takes.

Each spec trains a few steps in a fresh process that has imported everything a worker imports
(torch, the zoo's data libraries); the peak resident memory while training (the kernel's
high-water mark VmHWM, reset through /proc/self/clear_refs once the imports are done, since
importing can peak higher than a small run does) minus the resident memory before it is the
run's own peak, which the estimate must match within a factor of 2. The
specs are wide enough that the run's memory dominates the allocator's noise, and short (three
steps, no evaluation or checkpoints, which the estimate would count).
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
import importlib, json, sys
from worker.celery_app import PRELOAD
for module in PRELOAD:
    importlib.import_module(module)
from backend.spec import RunSpec
from worker.run_types import MemoryRecorder
from worker.training import train

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

spec = RunSpec.model_validate(json.loads(sys.argv[1]))
before = status_kib("VmRSS")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # resets VmHWM to the current resident size
result = train(spec, MemoryRecorder())
peak = status_kib("VmHWM")
print(json.dumps({"status": result.status, "reason": result.reason,
                  "peak_bytes": (peak - before) * 1024}))
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


def measured_peak(spec: dict) -> int:
    """The peak memory of training `spec` in a fresh process (see the module doc)."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(spec)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "succeeded", outcome
    return outcome["peak_bytes"]


@pytest.mark.parametrize("name", SPECS)
def test_the_memory_estimate_is_within_2x_of_the_measured_peak(name: str) -> None:
    spec = {**SPECS[name], **SHORT}
    estimated = memory_bytes(RunSpec.model_validate(spec))
    measured = measured_peak(spec)
    assert measured > 50e6, f"{name}: {measured / 1e6:.0f} MB is too little to compare"
    ratio = estimated / measured
    assert 0.5 <= ratio <= 2.0, (
        f"{name}: estimated {estimated / 1e6:.0f} MB, measured {measured / 1e6:.0f} MB"
    )
