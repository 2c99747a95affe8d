"""The client's spool: ordered, bounded, crash-safe, and sync takes only orphaned spools."""

from __future__ import annotations

import socket
from pathlib import Path

from kfac_lab.spool import Spool, owned_by_live_process


def test_requests_come_back_in_order_and_survive_a_new_process(tmp_path: Path):
    spool = Spool(tmp_path / "run", max_bytes=10_000)
    for i in range(3):
        assert spool.put("/p", {"i": i})
    reopened = Spool(tmp_path / "run", max_bytes=10_000)  # a later process, after a crash
    seen = []
    while (oldest := reopened.oldest()) is not None:
        path, request = oldest
        seen.append(request["body"]["i"])
        reopened.remove(path)
    assert seen == [0, 1, 2]
    assert reopened.put("/p", {"i": 3}) and reopened.files()[0].stem == "000000000003"


def test_the_spool_is_bounded(tmp_path: Path):
    spool = Spool(tmp_path / "run", max_bytes=200)
    assert spool.put("/p", {"x": "a" * 100})
    assert not spool.put("/p", {"x": "b" * 100})  # would exceed 200 bytes: refused
    assert len(spool.files()) == 1
    path, _ = spool.oldest()
    spool.remove(path)
    assert spool.put("/p", {"x": "c" * 100})  # room again once sent


def test_a_record_that_is_not_json_is_dropped_alone(tmp_path: Path):
    spool = Spool(tmp_path / "run", max_bytes=10_000)
    assert not spool.put("/p", {"x": float("nan")})
    assert not spool.put("/p", {"x": object()})
    assert spool.put("/p", {"x": 1.0}) and len(spool.files()) == 1


def test_only_spools_of_ended_processes_are_orphans(tmp_path: Path):
    spool = Spool(tmp_path / "run")
    spool.claim()
    assert owned_by_live_process(spool.directory)  # this process
    above_pid_max = 2**22 + 12345
    (spool.directory / "owner").write_text(f"{socket.gethostname()} {above_pid_max}")
    assert not owned_by_live_process(spool.directory)  # no such process
    spool.release()
    assert not owned_by_live_process(spool.directory)
