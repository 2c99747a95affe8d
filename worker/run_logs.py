"""A run's log: the worker's log records while it trains that run, sent to its recorder.

A pool process trains one run at a time, so every record of kfac-lab's own loggers (`worker`,
`kfac`, `backend`) at INFO and above, and any other logger's at WARNING and above, emitted
while `capture_run_logs` is active belongs to that run. Python warnings (`warnings.warn`, e.g.
a numerical warning from torch) are routed through logging (`py.warnings`) meanwhile, so they
are kept too. A record with an exception (the training loop's `logger.exception("run
failed")`) carries its traceback into the line. The recorder's own writer thread, and the
tracking client's logger (`kfac_lab`, which `kfac-lab run` reports through), are left out:
their complaints about the store or the server would otherwise feed the very queue they are
failing to send.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Protocol

OWN_LOGGERS = ("worker", "kfac", "backend")


class LogSink(Protocol):
    writer_thread: threading.Thread | None  # whose records are not the run's

    def log(self, lines: list[tuple[float, str, str]]) -> None: ...


class RunLogHandler(logging.Handler):
    def __init__(self, sink: LogSink):
        super().__init__(logging.INFO)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.current_thread() is self.sink.writer_thread or record.name == "kfac_lab":
            return False
        own = record.name.split(".")[0] in OWN_LOGGERS
        return own or record.levelno >= logging.WARNING

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (record.created, record.levelname, self.format(record))
        except Exception:  # noqa: BLE001 - logging's own convention for a record it cannot format
            self.handleError(record)
            return
        with contextlib.suppress(RuntimeError):  # the recorder is closed: the run is over
            self.sink.log([line])


@contextlib.contextmanager
def capture_run_logs(sink: LogSink) -> Iterator[None]:
    """Send the run's log records and warnings to `sink` while the block runs (see the module
    doc); kfac-lab's loggers log at INFO at least meanwhile, whatever the process's level."""
    root = logging.getLogger()
    handler = RunLogHandler(sink)
    own = [logging.getLogger(name) for name in OWN_LOGGERS]
    levels = [logger.level for logger in own]
    for logger in own:
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    # A process that configured no logging (`kfac-lab run`) prints warnings through logging's
    # last resort, which stops once the root has any handler: keep it for the console.
    console = None if root.handlers or logging.lastResort is None else logging.lastResort
    for added in (handler, console):
        if added is not None:
            root.addHandler(added)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for added in (handler, console):
            if added is not None:
                root.removeHandler(added)
        for logger, level in zip(own, levels, strict=True):
            logger.setLevel(level)
