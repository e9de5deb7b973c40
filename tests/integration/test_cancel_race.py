"""A cancel racing the last segment's success, on SQLite and on a real MariaDB, each on its own
connection: whichever wins, the job ends in exactly one final status with exactly one announcement."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from chalicelib.adapters.database import Database
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job
from chalicelib.service.cancel import cancel_job
from chalicelib.service.errors import Conflict
from chalicelib.service.orchestration import record_event
from chalicelib.shared.cancellation import cancel_marker_key
from chalicelib.shared.contracts import SEGMENT_SUCCEEDED, ProcessOptions, SegmentEvent, WorkItem
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.states import JobStatus
from chalicelib.shared.storage import ObjectStore
from tests.fakes import FakeMessageQueue, FakeObjectStore
from tests.support.databases import Clock, job_with_segments
from tests.unit.world import make_part

SETTINGS = Settings(bucket="b", jobs_queue_url="j", work_queue_url="w")
ROUNDS = 12


def _succeeded(job_id: str, video_id: str, index: int, part_key: str) -> SegmentEvent:
    return SegmentEvent(
        type=SEGMENT_SUCCEEDED,
        job_id=job_id,
        video_id=video_id,
        segment=index,
        part_key=part_key,
        frames_processed=25,
        frames_with_hands=12,
    )


def _job_one_segment_from_done(
    videos: VideoRepository, jobs: JobRepository, store: FakeObjectStore, queue: MessageQueue
) -> tuple[Job, SegmentEvent]:
    """A running job of two segments, both parts written, the first one's success recorded."""
    job = job_with_segments(videos, jobs, 2)
    segments = jobs.segments(job.id)
    for segment in segments:
        start = segment.segment_index * 1000
        item = WorkItem(
            job_id=job.id,
            video_id=job.video_id,
            segment=segment.segment_index,
            bucket="b",
            video_key="v",
            part_key=segment.part_key,
            options=ProcessOptions().with_range(start, start + 1000),
        )
        store.put_result(segment.part_key, make_part(item, frames=25))
    first, last = (_succeeded(job.id, job.video_id, s.segment_index, s.part_key) for s in segments)
    record_event(videos, jobs, cast(ObjectStore, store), queue, SETTINGS, first)
    return job, last


@dataclass
class Race:
    """The two contenders, each on its own connection, let go at once."""

    connections: tuple[Database, Database]
    clock: Clock
    store: ObjectStore
    queue: MessageQueue
    errors: list[BaseException] = field(default_factory=list)
    refused: list[Conflict] = field(default_factory=list)

    def run(self, job: Job, last: SegmentEvent) -> None:
        self.errors.clear()
        self.refused.clear()
        barrier = threading.Barrier(2)

        def cancel() -> None:
            database = self.connections[0]
            barrier.wait()
            try:
                cancel_job(
                    VideoRepository(database, self.clock), JobRepository(database, self.clock), self.store, job.id
                )
            except Conflict as error:
                self.refused.append(error)
            except BaseException as error:
                self.errors.append(error)

        def finish() -> None:
            database = self.connections[1]
            videos, jobs = VideoRepository(database, self.clock), JobRepository(database, self.clock)
            barrier.wait()
            try:
                record_event(videos, jobs, self.store, self.queue, SETTINGS, last)
            except BaseException as error:
                self.errors.append(error)

        threads = [threading.Thread(target=cancel), threading.Thread(target=finish)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def test_a_cancel_racing_the_last_segment_ends_the_job_once(
    open_db: Callable[[], Database], db: Database, videos: VideoRepository, clock: Clock
) -> None:
    store = FakeObjectStore()
    queue = cast(MessageQueue, FakeMessageQueue())
    jobs = JobRepository(db, clock)
    race = Race((open_db(), open_db()), clock, cast(ObjectStore, store), queue)
    outcomes: list[str] = []
    for _ in range(ROUNDS):
        job, last = _job_one_segment_from_done(videos, jobs, store, queue)
        race.run(job, last)
        assert race.errors == []
        final = jobs.get(job.id)
        assert final is not None and final.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED)
        rows = db.fetchall("SELECT body FROM job_announcements WHERE job_id = ?", (job.id,))
        assert len(rows) == 1, rows
        event: dict[str, Any] = json.loads(rows[0]["body"])
        assert event["status"] == final.status
        if final.status == JobStatus.SUCCEEDED:
            assert len(race.refused) == 1 and "SUCCEEDED" in race.refused[0].message
            assert store.head(cancel_marker_key(job.video_id, job.id)) is None
        else:
            assert race.refused == [] and final.result_key is None
        outcomes.append(final.status)
    assert len(outcomes) == ROUNDS
