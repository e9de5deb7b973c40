"""What the local stack's console shows: one line per job event (queued, started, segment done, succeeded,
failed) instead of Lambda's JSON logs and metrics, and in the worker processes neither Powertools nor
MediaPipe's native log lines unless asked for (-v)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from chalicelib.shared import telemetry


class LocalTelemetry:
    """The stack's stand-in for Powertools: metrics go nowhere (there is no CloudWatch here) and log lines
    keep standard logging's format; installing it keeps the handlers from setting up Powertools."""

    def append_keys(self, **keys: Any) -> None:
        pass

    def clear_keys(self) -> None:
        pass

    def add_metric(self, name: str, unit: str, value: float, **dimensions: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _Stream:
    """The stream as it is when a line is written (sys.stdout by default, whatever it is then)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return (self._stream or sys.stdout).write(text)

    def flush(self) -> None:
        (self._stream or sys.stdout).flush()


class JobEventFormatter(logging.Formatter):
    """`12:03:04 job job_… started: 3 segment(s)`: the event's message after the local time."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.getMessage()}"


class JobEventConsole:
    """Prints the job events ("handpipe.events") one line each, and only them, whatever else is quiet."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.handler = logging.StreamHandler(_Stream(stream))
        self.handler.setFormatter(JobEventFormatter())
        self._logger = telemetry.events_logger
        self._saved = (self._logger.level, self._logger.propagate)

    def start(self) -> None:
        self._logger.addHandler(self.handler)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False  # printed here once, not again by the root logger's handler

    def stop(self) -> None:
        self._logger.removeHandler(self.handler)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]


def init_worker_process(verbose: bool) -> None:
    """In each local worker process, before the worker's code runs: its logs in standard logging's format
    on stderr (warnings only unless verbose), and MediaPipe's native INFO and WARNING lines dropped."""
    telemetry.use_telemetry(LocalTelemetry())
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        from handpipe_worker.native_logs import filter_native_stderr

        filter_native_stderr()
