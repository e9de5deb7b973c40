"""chalicelib.shared.telemetry on its own: the keys read from a queue message, the queue's role from its ARN,
the queue-age metrics from a record's attributes, and that a failing metric sink never fails the work."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib.shared import telemetry
from chalicelib.shared.contracts import JobRequested


class Recording:
    """A telemetry that keeps what it was given."""

    def __init__(self, fail: bool = False) -> None:
        self.keys: dict[str, Any] = {}
        self.metrics: list[tuple[str, str, float, dict[str, str]]] = []
        self.fail = fail

    def append_keys(self, **keys: Any) -> None:
        self.keys.update(keys)

    def clear_keys(self) -> None:
        self.keys.clear()

    def add_metric(self, name: str, unit: str, value: float, **dimensions: str) -> None:
        if self.fail:
            raise RuntimeError("the sink is broken")
        self.metrics.append((name, unit, value, dimensions))

    def flush(self) -> None:
        pass


class Records(logging.Handler):
    """The records one logger handles, caught on that logger itself: once app.py is imported, Chalice's
    app.log ("handpipe", the parent of ours) no longer propagates to the root, where caplog listens."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("handpipe.events", "handpipe.telemetry")]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler
    for logger, level in zip(loggers, saved, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def recording() -> Iterator[Recording]:
    sink = Recording()
    telemetry.use_telemetry(sink)
    yield sink
    telemetry.use_telemetry(None)


def test_message_keys_come_from_a_contract_message_and_nothing_else() -> None:
    body = JobRequested(job_id="job_" + "a" * 32, video_id="vid_" + "b" * 32).to_json()
    assert telemetry.message_keys(body) == {"job_id": "job_" + "a" * 32, "video_id": "vid_" + "b" * 32}
    assert telemetry.message_keys('{"job_id": "j", "segment": 3}') == {"job_id": "j", "segment": 3}
    assert telemetry.message_keys('{"job_id": 5, "segment": true}') == {}
    assert telemetry.message_keys("not json") == {} and telemetry.message_keys("[1, 2]") == {}


def test_the_queue_role_is_the_last_part_of_the_queue_name() -> None:
    assert (
        telemetry.queue_name({"eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:handpipe-prod-events"}) == "events"
    )
    assert telemetry.queue_name({}) == "unknown"


def test_queue_age_and_wait_come_from_the_records_timestamps(recording: Recording) -> None:
    record = {"attributes": {"SentTimestamp": "1000", "ApproximateFirstReceiveTimestamp": "1250"}}
    telemetry.queue_age_metrics(record, "work", now_ms=4000)
    assert recording.metrics == [
        ("QueueAge", "Milliseconds", 3000, {"queue": "work"}),
        ("QueueWait", "Milliseconds", 250, {"queue": "work"}),
    ]
    recording.metrics.clear()
    telemetry.queue_age_metrics({"attributes": {}}, "work", now_ms=4000)  # Chalice's test events have none
    assert recording.metrics == []


def test_record_keys_hold_for_the_block_only(recording: Recording) -> None:
    with telemetry.record_keys(job_id="job_1", video_id=None, segment=0):
        assert recording.keys == {"job_id": "job_1", "segment": 0}
    assert recording.keys == {}


def test_a_job_event_is_one_log_line_and_its_metric(recording: Recording, records: Records) -> None:
    telemetry.job_event("job.started", "job %s started", "job_1", metric_name=telemetry.JOBS_STARTED, job_id="job_1")
    [line] = records.records
    assert line.getMessage() == "job job_1 started"
    assert (getattr(line, "event"), getattr(line, "job_id")) == ("job.started", "job_1")  # noqa: B009
    assert recording.metrics == [("JobsStarted", "Count", 1, {})]


def test_a_broken_sink_never_fails_the_work(records: Records) -> None:
    telemetry.use_telemetry(Recording(fail=True))
    try:
        telemetry.metric(telemetry.FRAMES_PROCESSED, 10)
    finally:
        telemetry.use_telemetry(None)
    [warning] = records.records
    assert warning.getMessage() == "could not record metric FramesProcessed" and warning.levelno == logging.WARNING
