"""The detection options (`detection`, `detection_interval_ms`, `detection_scan_frames`): what
ProcessOptions accepts and refuses, and that a job's choice reaches every work item of the job."""

from __future__ import annotations

import re
from typing import Any

import pytest

from chalicelib.service.errors import InvalidInput
from chalicelib.shared.contracts import ContractError, ProcessOptions, WorkItem
from tests.unit.world import World


def test_exact_detection_is_the_default() -> None:
    options = ProcessOptions.from_dict({})
    assert (options.detection, options.detection_interval_ms, options.detection_scan_frames) == ("exact", 300, 1)


def test_adaptive_detection_with_its_interval_and_scan_stride() -> None:
    options = ProcessOptions.from_dict(
        {"detection": "adaptive", "detection_interval_ms": 500.0, "detection_scan_frames": 3}
    )
    assert (options.detection, options.detection_interval_ms, options.detection_scan_frames) == ("adaptive", 500, 3)
    assert isinstance(options.detection_interval_ms, int)
    assert ProcessOptions.from_dict(options.to_dict()) == options


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"detection": "fast"}, "detection must be one of exact, adaptive, got 'fast'"),
        ({"detection": 1}, "detection must be one of exact, adaptive"),
        ({"detection_interval_ms": 0}, "detection_interval_ms must be between 1 and 60000, got 0"),
        ({"detection_interval_ms": 60_001}, "detection_interval_ms must be between 1 and 60000"),
        ({"detection_interval_ms": 12.5}, "detection_interval_ms must be a whole number, got 12.5"),
        ({"detection_interval_ms": "300"}, "detection_interval_ms must be a number, got str"),
        ({"detection_scan_frames": True}, "detection_scan_frames must be a number, got bool"),
        ({"detection_scan_frames": 11}, "detection_scan_frames must be between 1 and 10, got 11"),
    ],
)
def test_bad_detection_options_are_refused_with_the_reason(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ContractError, match=re.escape(fragment)):
        ProcessOptions.from_dict(raw)


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ContractError) as raised:
        ProcessOptions.from_dict({"detection": "fast", "detection_scan_frames": 0})
    assert "detection must be one of" in str(raised.value) and "detection_scan_frames must be" in str(raised.value)


def test_a_bad_detection_option_is_a_400_for_the_job() -> None:
    world = World()
    video = world.uploaded()
    with pytest.raises(InvalidInput, match="detection must be one of exact, adaptive"):
        world.trigger(video["id"], options={"detection": "sometimes"})


def test_a_jobs_detection_options_reach_every_work_item() -> None:
    world = World()
    job = world.running_job(options={"detection": "adaptive", "detection_interval_ms": 250, "detection_scan_frames": 2})
    assert job.options["detection"] == "adaptive" and job.options["detection_interval_ms"] == 250
    items = world.work_items()
    assert items
    for item in items:
        carried = WorkItem.from_json(item.to_json()).options  # what the worker reads off the queue
        assert (carried.detection, carried.detection_interval_ms, carried.detection_scan_frames) == ("adaptive", 250, 2)
