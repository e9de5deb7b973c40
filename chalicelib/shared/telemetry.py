"""The port through which the services and the worker say what happened to a job: metrics, the keys every
log line of a record carries, and the job events. The app (chalicelib/runtime.py) and the worker
(handpipe_worker/handler.py) plug in Powertools behind it, the local stack its console (handpipe/local).
Standard library only, as everything in shared/."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

NAMESPACE = "handpipe"  # the CloudWatch namespace; every metric has the dimension "stage"

# Metric names (infra/handpipe.yaml's alarms name them too) and their units.
JOBS_QUEUED = "JobsQueued"
JOBS_STARTED = "JobsStarted"
JOBS_SUCCEEDED = "JobsSucceeded"
JOBS_FAILED = "JobsFailed"
JOBS_CANCELLED = "JobsCancelled"
SEGMENTS_SUCCEEDED = "SegmentsSucceeded"
FRAMES_PROCESSED = "FramesProcessed"
SEGMENT_SECONDS = "SegmentSeconds"  # a worker's wall time on one segment
QUEUE_AGE = "QueueAge"  # ms from SentTimestamp to the handler, with the dimension "queue"
QUEUE_WAIT = "QueueWait"  # ms from SentTimestamp to ApproximateFirstReceiveTimestamp, dimension "queue"
COUNT, SECONDS, MILLISECONDS = "Count", "Seconds", "Milliseconds"

events_logger = logging.getLogger("handpipe.events")  # one line per job event, with `event` and the keys


class Telemetry(Protocol):
    def append_keys(self, **keys: Any) -> None:
        """Keys for every log line this thread writes until clear_keys."""

    def clear_keys(self) -> None: ...

    def add_metric(self, name: str, unit: str, value: float, **dimensions: str) -> None:
        """Recorded now; sent with the invocation's flush (or at once when it has its own dimensions)."""

    def flush(self) -> None:
        """Send the invocation's metrics; never raises, and sends nothing when there are none."""


class NoTelemetry:
    """Until an entry point installs its own: keys and metrics go nowhere, logs go to standard logging."""

    def append_keys(self, **keys: Any) -> None:
        pass

    def clear_keys(self) -> None:
        pass

    def add_metric(self, name: str, unit: str, value: float, **dimensions: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _Stdout:
    """Whatever sys.stdout is when a line is written (Lambda's, or a test's capture), not the one at setup."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


class PowertoolsTelemetry:
    """Powertools' Logger and Metrics (CloudWatch EMF on stdout) behind the port. The module is passed in
    by the entry point that has it installed (the app's runtime, the worker's handler): shared/ imports
    nothing but the standard library and boto3."""

    def __init__(self, powertools: Any, *, stage: str, level: str = "INFO") -> None:
        self.stage = stage
        self._single_metric = powertools.single_metric
        # Named "handpipe": the parent of every logger of ours ("handpipe.service", "handpipe.worker", ...)
        # and Chalice's app.log, so all of their lines come out as JSON through this one handler.
        self.logger = powertools.Logger(service=NAMESPACE, level=level, logger_handler=logging.StreamHandler(_Stdout()))
        own = self.logger.registered_handler
        self._foreign = [h for h in logging.getLogger(NAMESPACE).handlers if h is not own]
        for handler in self._foreign:  # Chalice's plain-text handler on app.log would repeat every line
            logging.getLogger(NAMESPACE).removeHandler(handler)
        self.metrics = powertools.Metrics(namespace=NAMESPACE)
        self.metrics.clear_default_dimensions()  # Powertools keeps them per process, not per instance
        self.metrics.clear_metrics()
        self.metrics.set_default_dimensions(stage=stage)

    def append_keys(self, **keys: Any) -> None:
        self.logger.thread_safe_append_keys(**keys)

    def clear_keys(self) -> None:
        self.logger.thread_safe_clear_keys()

    def add_metric(self, name: str, unit: str, value: float, **dimensions: str) -> None:
        if not dimensions:
            self.metrics.add_metric(name=name, unit=unit, value=value)
            return
        with self._single_metric(
            name=name, unit=unit, value=value, namespace=NAMESPACE, default_dimensions={"stage": self.stage}
        ) as single:
            for key, dimension in dimensions.items():
                single.add_dimension(name=key, value=dimension)

    def flush(self) -> None:
        try:
            if self.metrics.metric_set:  # Powertools warns when asked to flush nothing
                self.metrics.flush_metrics()
        except Exception:  # metrics must never fail an invocation
            logging.getLogger("handpipe.telemetry").warning("could not send the metrics", exc_info=True)
            self.metrics.clear_metrics()

    def close(self) -> None:
        """Undo the logging setup (for tests that install it for a while)."""
        handpipe = logging.getLogger(NAMESPACE)
        handpipe.removeHandler(self.logger.registered_handler)
        for handler in self._foreign:
            handpipe.addHandler(handler)
        for attribute in ("init", "powertools_handler"):
            if hasattr(handpipe, attribute):
                delattr(handpipe, attribute)
        self.metrics.clear_metrics()


def install_powertools(powertools: Any, *, stage: str) -> Telemetry:
    """The process's telemetry: Powertools, unless an entry point (the local stack, a test) installed its own."""
    global _current
    with _lock:
        if isinstance(_current, NoTelemetry):
            _current = PowertoolsTelemetry(powertools, stage=stage)
        return _current


_lock = threading.Lock()
_current: Telemetry = NoTelemetry()


def use_telemetry(telemetry: Telemetry | None) -> None:
    """Install the process's telemetry (None: none)."""
    global _current
    with _lock:
        _current = telemetry if telemetry is not None else NoTelemetry()


def telemetry() -> Telemetry:
    return _current


def metric(name: str, value: float = 1, unit: str = COUNT, **dimensions: str) -> None:
    try:
        _current.add_metric(name, unit, value, **dimensions)
    except Exception:  # a metric must never fail the work it describes
        logging.getLogger("handpipe.telemetry").warning("could not record metric %s", name, exc_info=True)


def known_keys(**keys: Any) -> dict[str, Any]:
    """The record keys given, without those not known (None)."""
    return {name: value for name, value in keys.items() if value is not None}


@contextmanager
def record_keys(**keys: Any) -> Iterator[None]:
    """Every log line of the block (in this thread) carries the keys that are known."""
    current = _current
    current.clear_keys()
    current.append_keys(**known_keys(**keys))
    try:
        yield
    finally:
        current.clear_keys()


def job_event(event: str, message: str, *args: Any, metric_name: str | None = None, **keys: Any) -> None:
    """A job event (job.queued, job.started, segment.succeeded, job.succeeded, job.failed, job.cancelled): one log
    line on "handpipe.events" with `event` and the keys, and its metric when it has one."""
    events_logger.info(message, *args, extra={"event": event, **known_keys(**keys)})
    if metric_name is not None:
        metric(metric_name)


def queue_age_metrics(record: Mapping[str, Any], queue: str, now_ms: int | None = None) -> None:
    """How long an SQS record waited: since it was sent (QueueAge) and until its first receive (QueueWait)."""
    attributes = record.get("attributes") or {}
    try:
        sent = int(attributes["SentTimestamp"])
    except (KeyError, TypeError, ValueError):
        return
    clock = now_ms if now_ms is not None else int(time.time() * 1000)
    metric(QUEUE_AGE, max(0, clock - sent), MILLISECONDS, queue=queue)
    try:
        first = int(attributes["ApproximateFirstReceiveTimestamp"])
    except (KeyError, TypeError, ValueError):
        return
    metric(QUEUE_WAIT, max(0, first - sent), MILLISECONDS, queue=queue)


def message_keys(body: str) -> dict[str, Any]:
    """job_id, video_id and segment of a queue message, as far as it is readable (a malformed one has none)."""
    try:
        message = json.loads(body)
    except (TypeError, ValueError, RecursionError):
        return {}
    if not isinstance(message, dict):
        return {}
    keys = {name: message.get(name) for name in ("job_id", "video_id") if isinstance(message.get(name), str)}
    segment = message.get("segment")
    if isinstance(segment, int) and not isinstance(segment, bool):
        keys["segment"] = segment
    return keys


def queue_name(record: Mapping[str, Any]) -> str:
    """The queue's role (jobs, work, events) from the record's eventSourceARN (…:handpipe-STAGE-work)."""
    name = str(record.get("eventSourceARN") or "").rsplit(":", 1)[-1]
    return name.rsplit("-", 1)[-1] if name else "unknown"
