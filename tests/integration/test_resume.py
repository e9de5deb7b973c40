"""handpipe.local.resume against moto and SQLite: what a restarted local stack sends again for each state a
job can be left in when the stack dies with its queues."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from handpipe_worker.engine import process_video

from chalicelib.adapters.database import Database
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.migrations import upgrade
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job, Segment, Video
from chalicelib.shared.contracts import ProcessOptions, part_key, picture_key, result_key
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.storage import ObjectStore
from handpipe.local.aws import aws_clients, provision
from handpipe.local.resume import resume
from tests.support.paths import data_path

T0 = 1_700_000_000_000


def _job(video_id: str, status: str, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": f"job_{uuid.uuid4().hex}",
        "video_id": video_id,
        "status": status,
        "options": {"num_hands": 2},
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return Job(**values)


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    bodies = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def test_each_unfinished_state_gets_what_it_lost(moto_endpoint: str, tmp_path: Path) -> None:
    s3, sqs = aws_clients(moto_endpoint)
    name = f"resume-{uuid.uuid4().hex[:8]}"
    resources = provision(s3, sqs, bucket=name, prefix=name)
    urls = resources.queue_urls
    database = Database.from_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(database)
    videos, jobs = VideoRepository(database), JobRepository(database)
    store = ObjectStore(s3, name)
    settings = Settings(
        bucket=name, jobs_queue_url=urls["jobs"], work_queue_url=urls["work"], segment_ms=10_000, max_in_flight=4
    )
    video_id = f"vid_{uuid.uuid4().hex}"
    key = f"videos/{video_id}/clip.mp4"
    store.put_bytes(key, b"a video", "video/mp4")
    videos.add(
        Video(
            id=video_id,
            title="clip",
            filename="clip.mp4",
            content_type="video/mp4",
            size_bytes=7,
            s3_key=key,
            status="PROCESSING",
            created_at=T0,
            updated_at=T0,
        )
    )

    queued, _ = jobs.create(_job(video_id, "QUEUED"))
    # Running: segment 0 done, 1 sent (its item went down with the queue), 2 waiting.
    running, _ = jobs.create(_job(video_id, "IN_PROGRESS", segments_total=3))
    segments = [
        Segment(job_id=running.id, segment_index=i, part_key=part_key(video_id, running.id, i), updated_at=T0)
        for i in range(3)
    ]
    jobs.add_segments(running.id, segments)
    jobs.complete_segment(running.id, 0, frames_processed=10, frames_with_hands=5)
    assert [s.segment_index for s in jobs.claim_for_dispatch(running.id, 1)] == [1]
    # Merging: every part in, the merge cut off before the job was marked SUCCEEDED.
    merging, _ = jobs.create(_job(video_id, "IN_PROGRESS", segments_total=1))
    jobs.add_segments(
        merging.id,
        [Segment(job_id=merging.id, segment_index=0, part_key=part_key(video_id, merging.id, 0), updated_at=T0)],
    )
    # A real part, from the engine on the clip's first half second.
    part = process_video(data_path("videos/one_hand_wave_portrait.mp4"), ProcessOptions(end_ms=500))
    store.put_result(part_key(video_id, merging.id, 0), part)
    jobs.complete_segment(merging.id, 0, frames_processed=15, frames_with_hands=15)
    # Succeeded twice: once with its pictures drawn, once without (the render request was lost).
    drawn, _ = jobs.create(_job(video_id, "SUCCEEDED", result_key=result_key(video_id, "x")))
    undrawn, _ = jobs.create(_job(video_id, "SUCCEEDED", result_key=result_key(video_id, "y")))
    for job in (drawn, undrawn):
        assert job.result_key is not None
        store.put_bytes(job.result_key, b"{}", "application/gzip")
    store.put_bytes(picture_key(video_id, drawn.id, "contact_sheet"), b"png", "image/png")
    failed, _ = jobs.create(_job(video_id, "FAILED"))

    done = resume(videos, jobs, store, MessageQueue(sqs, urls["jobs"]), MessageQueue(sqs, urls["work"]), settings)

    assert done.requested == [queued.id]
    assert done.redispatched == [running.id]
    assert done.rendered == [undrawn.id]
    assert failed.id not in done.requested + done.redispatched + done.merged + done.rendered
    assert [m["job_id"] for m in _drain(sqs, urls["jobs"])] == [queued.id]
    work = _drain(sqs, urls["work"])
    # Segment 1 again (its claim released) and segment 2 for the first time; segment 0 is done.
    assert sorted((m["job_id"], m.get("segment")) for m in work if m["type"] == "work.item") == [
        (running.id, 1),
        (running.id, 2),
    ]
    # The job whose finish was cut off SUCCEEDS now, and asks for its artifacts (the merge first) like any
    # job that succeeds.
    assert done.merged == [merging.id] and done.failed == []
    merged = jobs.get(merging.id)
    assert merged is not None and merged.status == "SUCCEEDED" and merged.result_key is not None
    assert merged.summary is not None and merged.summary["frames_processed"] == len(part["frames"])
    renders = {m["job_id"]: m for m in work if m["type"] == "job.render"}
    assert sorted(renders) == sorted([undrawn.id, merging.id])
    assert renders[merging.id]["segments"] == 1 and renders[merging.id]["result_key"] == merged.result_key
