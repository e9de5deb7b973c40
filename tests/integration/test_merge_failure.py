"""A merge that cannot succeed is deterministic: the recorder fails the job at once with the reason,
naming both segments, and a redelivered event changes nothing (no loop at 95 % until the sweeper).
Real parts from the engine, real S3 (moto) and the real database (SQLite and MariaDB)."""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any

from handpipe_worker.engine import process_video
from handpipe_worker.models import ModelCache

from chalicelib.adapters.database import Database
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job, Segment, Video
from chalicelib.service.common import new_id, now_ms
from chalicelib.service.orchestration import record_event
from chalicelib.shared.contracts import SEGMENT_SUCCEEDED, ProcessOptions, SegmentEvent, part_key
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.results import merge_parts
from chalicelib.shared.storage import ObjectStore
from handpipe.local.aws import aws_clients
from tests.support.paths import data_path

CLIP = "videos/asl_thanks_two_hands.mkv"
CUT_MS = 900


@cache
def parts() -> tuple[dict[str, Any], dict[str, Any]]:
    models = ModelCache()
    first = process_video(data_path(CLIP), ProcessOptions(end_ms=CUT_MS), models=models)
    second = process_video(data_path(CLIP), ProcessOptions(start_ms=CUT_MS), models=models, warmup_ms=500)
    return first, second


def test_parts_that_cannot_merge_fail_the_job_once(db: Database, moto_endpoint: str) -> None:
    database = db
    s3, sqs = aws_clients(moto_endpoint)
    bucket = f"merge-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    work_url = sqs.create_queue(QueueName=f"work-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    objects, work = ObjectStore(s3, bucket), MessageQueue(sqs, work_url)
    settings = Settings(bucket=bucket, jobs_queue_url="unused", work_queue_url=work_url)
    videos, jobs = VideoRepository(database), JobRepository(database)
    now = now_ms()
    video = Video(
        id=new_id("vid"), title="t", filename="a.mkv", content_type="video/x-matroska",
        s3_key="videos/x/a.mkv", status="PROCESSING", created_at=now, updated_at=now,
    )  # fmt: skip
    videos.add(video)
    job, _ = jobs.create(
        Job(id=new_id("job"), video_id=video.id, status="QUEUED", options={}, created_at=now, updated_at=now)
    )
    segments = [
        Segment(job_id=job.id, segment_index=i, part_key=part_key(video.id, job.id, i), updated_at=now,
                start_ms=start, end_ms=end)
        for i, (start, end) in enumerate([(None, CUT_MS), (CUT_MS, None)])
    ]  # fmt: skip
    jobs.add_segments(job.id, segments)
    assert jobs.transition(job.id, from_statuses=("QUEUED",), to_status="IN_PROGRESS", segments_total=2)
    first, second = parts()
    # The second segment claims to start two frames later than the first one ends: a gap.
    broken = {**second, "range": {**second["range"], "first_index": second["range"]["first_index"] + 2}}
    objects.put_result(segments[0].part_key, first)
    objects.put_result(segments[1].part_key, broken)
    events = [
        SegmentEvent(type=SEGMENT_SUCCEEDED, job_id=job.id, video_id=video.id, segment=i, part_key=s.part_key)
        for i, s in enumerate(segments)
    ]
    outcomes = [record_event(videos, jobs, objects, work, settings, e) for e in events]
    assert outcomes == ["waiting for parts", "failed"]
    failed = jobs.get(job.id)
    assert failed is not None and failed.status == "FAILED" and failed.error_code == "merge_error"
    assert "segments 0 and 1" in (failed.error or "") and "gap" in (failed.error or "")
    # the same event again (SQS redelivers): nothing changes, nothing is retried
    assert record_event(videos, jobs, objects, work, settings, events[1]) == "already finished"
    assert jobs.get(job.id) == failed
    assert objects.head(f"results/{video.id}/{job.id}/result.json.gz") is None


def test_the_same_parts_unbroken_merge_into_the_single_pass() -> None:
    """The control: the parts above, left as the engine wrote them, merge into a single pass."""
    first, second = parts()
    whole = process_video(data_path(CLIP), ProcessOptions(), models=ModelCache())
    merged = merge_parts([second, first])
    assert [f["index"] for f in merged["frames"]] == [f["index"] for f in whole["frames"]]
    assert [f["timestamp_ms"] for f in merged["frames"]] == [f["timestamp_ms"] for f in whole["frames"]]
