"""A run's log in the store: what its worker logged while training it (start, checkpoints,
resume) and, when it fails, the traceback; nothing of the recorder's own complaints."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.store.db import session_scope
from backend.store.run_logs import read_log_lines
from tests.worker.labs import Lab, lab, run_spec
from worker import training
from worker.recording import StoreRecorder
from worker.run_logs import capture_run_logs
from worker.tasks import execute_run


@pytest.fixture
def store(tmp_path, monkeypatch) -> Iterator[Lab]:
    monkeypatch.setattr(training, "STOP_CHECK_SECONDS", 0.0)
    with lab(tmp_path) as the_lab:
        yield the_lab


def logged(store: Lab, run_id: str) -> list[dict]:
    with session_scope(store.url) as session:
        return read_log_lines(session, run_id)


def test_a_failing_run_stores_its_traceback(store):
    (run_id,) = store.create(run_spec(dataset="mnist"))  # no MNIST files in this lab
    assert execute_run(run_id, store.settings, worker_id="w") == "failed"
    lines = logged(store, run_id)
    failure = next(line for line in lines if line["level"] == "ERROR")
    assert failure["message"].startswith("worker.training: run failed\nTraceback (most recent")
    assert "FileNotFoundError: mnist: files missing in DATA_DIR" in failure["message"]
    assert "load_dataset" in failure["message"]  # the frames, not just the message
    assert [line["seq"] for line in lines] == list(range(len(lines)))


def test_a_run_logs_its_start_and_checkpoints_and_goes_on_after_a_resume(store):
    (run_id,) = store.create(run_spec(steps=40, checkpoint_interval=10))
    assert execute_run(run_id, store.settings, worker_id="w") == "succeeded"
    messages = [line["message"] for line in logged(store, run_id)]
    assert any(m.startswith("worker.training: starts on cpu: ") for m in messages), messages
    assert "worker.checkpoints: checkpoint of step 10 written" in messages
    # A second start (as a redelivered run resumes) numbers its lines after the stored ones.
    with session_scope(store.url) as session:
        before = len(read_log_lines(session, run_id))
    recorder = StoreRecorder(run_id, store.url)
    with capture_run_logs(recorder):
        logging.getLogger("worker.training").info("resumed from the checkpoint of step %d", 30)
    assert recorder.close(30.0)
    lines = logged(store, run_id)
    assert len(lines) == before + 1 and lines[-1]["seq"] == before
    assert lines[-1]["message"] == "worker.training: resumed from the checkpoint of step 30"


class Sink:
    """Stands in for a recorder: collects lines; its writer thread logs a complaint."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str, str]] = []
        self.writer_thread = threading.Thread(
            target=lambda: logging.getLogger("worker.recording").warning("the writer's own")
        )

    def log(self, lines: list[tuple[float, str, str]]) -> None:
        self.lines.extend(lines)


def test_only_the_run_s_records_are_captured():
    sink = Sink()
    with capture_run_logs(sink), warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.getLogger("kfac.optimizer").info("kept: kfac-lab's own INFO")
        logging.getLogger("urllib3").info("left out: a library's INFO")
        logging.getLogger("urllib3").warning("kept: a library's warning")
        warnings.warn("kept: a Python warning", RuntimeWarning, stacklevel=1)
        sink.writer_thread.start()
        sink.writer_thread.join()
    logging.getLogger("worker").warning("left out: after the run")
    levels, messages = zip(*((level, message) for _, level, message in sink.lines), strict=True)
    assert levels == ("INFO", "WARNING", "WARNING")
    assert messages[:2] == (
        "kfac.optimizer: kept: kfac-lab's own INFO",
        "urllib3: kept: a library's warning",
    )
    assert messages[2].startswith("py.warnings: ")
    assert "RuntimeWarning: kept: a Python warning" in messages[2]


def test_a_process_without_logging_set_up_still_prints_warnings():
    script = (
        "import logging, threading\n"
        "from worker.run_logs import capture_run_logs\n"
        "class Sink:\n"
        "    writer_thread = None\n"
        "    def log(self, lines): print('stored', lines[0][2])\n"
        "with capture_run_logs(Sink()):\n"
        "    logging.getLogger('worker.x').warning('watch out')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stored worker.x: watch out\n"
    assert done.stderr == "watch out\n"  # as logging's last resort prints it
