"""System metrics: sampled at a low rate, CPU % of the process, its resident memory."""

from __future__ import annotations

import mmap
import time

from kfac_lab.system import SystemSampler, rss_bytes


def test_nothing_until_the_interval_has_passed_then_cpu_and_memory():
    sampler = SystemSampler(interval=3600)
    assert sampler.sample() == {}
    sampler = SystemSampler(interval=0.05)
    end = time.process_time() + 0.2
    while time.process_time() < end:  # keep one core busy
        pass
    values = sampler.sample()
    # One busy thread: about 100% of a core, whatever the machine's load makes the wall time.
    assert 0 < values["cpu_percent"] <= 100 * 64
    assert values["rss_mb"] > 1
    assert sampler.sample() == {}  # the next one waits for the interval again


def test_rss_follows_what_the_process_holds():
    # A fresh anonymous mapping, every page written: memory the process did not hold before.
    # (A malloc'd array may be carved from freed heap pages that are still resident, which in
    # a long test session left the reading unchanged.)
    size = 64 * 2**20
    before = rss_bytes()
    with mmap.mmap(-1, size) as block:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        assert rss_bytes() - before > 32 * 2**20
