"""System metrics of the process that trains a run, at a low rate: CPU %, RSS and, for CUDA
runs, GPU memory and utilisation.

One sampler for both kinds of run: the worker's training loop and the tracking client's
sender thread (which lives in the training script's process) call `sample()` as often as they
like; it answers with new values once every `interval` seconds and with nothing in between,
so the cost per call is one clock read. Standard library only; torch's CUDA figures are read
when torch is loaded already.

* `cpu_percent`: the process's CPU time (all threads) over the wall time since the previous
  sample, in % of one core (200 = two cores busy);
* `rss_mb`: resident memory now (Linux `/proc/self/statm`; elsewhere the peak, `ru_maxrss`);
* `gpu_memory_mb`, `gpu_percent`: memory held by torch's CUDA allocator, and the device's
  utilisation as NVML reports it (when `torch.cuda.utilization` can read it).
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from pathlib import Path

INTERVAL_S = 5.0
STATM = Path("/proc/self/statm")


class SystemSampler:
    def __init__(self, interval: float = INTERVAL_S, cuda: bool = False):
        self.interval = interval
        self.cuda = cuda
        self._wall, self._cpu = time.monotonic(), time.process_time()

    def sample(self) -> dict[str, float]:
        """The metrics, if `interval` seconds have passed since the last ones; else {}."""
        wall = time.monotonic()
        if wall - self._wall < self.interval:
            return {}
        cpu = time.process_time()
        values = {
            "cpu_percent": 100.0 * (cpu - self._cpu) / max(wall - self._wall, 1e-9),
            "rss_mb": rss_bytes() / 2**20,
        }
        self._wall, self._cpu = wall, cpu
        if self.cuda:
            values.update(_cuda_metrics())
        return values


def rss_bytes() -> int:
    try:
        resident_pages = int(STATM.read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, else KiB


def _cuda_metrics() -> dict[str, float]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {}
    values = {"gpu_memory_mb": torch.cuda.memory_allocated() / 2**20}
    with contextlib.suppress(Exception):  # NVML missing: memory only
        values["gpu_percent"] = float(torch.cuda.utilization())
    return values
