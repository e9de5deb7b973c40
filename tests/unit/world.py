"""The services wired to the in-memory fakes, as the API and the queue consumers wire them to the real
adapters: one object a unit test drives (register, trigger, plan, report events, sweep) and inspects."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, cast

from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job, Video
from chalicelib.service import orchestration as orchestration_module
from chalicelib.service.common import now_ms
from chalicelib.service.jobs import create_job
from chalicelib.service.orchestration import SweepReport, plan_job, record_event
from chalicelib.service.videos import register_video
from chalicelib.shared.contracts import SEGMENT_SUCCEEDED, VIDEO_PROBED, JobRequested, SegmentEvent, WorkItem
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.results import build_result
from chalicelib.shared.storage import ObjectStore
from tests.fakes import Clock, FakeJobRepository, FakeMessageQueue, FakeObjectStore, FakeVideoRepository, Tables

SETTINGS = Settings(bucket="fake-bucket", jobs_queue_url="fake://jobs", work_queue_url="fake://work")
PROBED = {"duration_ms": 50_000, "fps": 25.0, "width": 640, "height": 480}


@dataclass
class World:
    settings: Settings = SETTINGS
    tables: Tables = field(default_factory=Tables)
    clock: Clock = field(default_factory=lambda: Clock(now_ms()))
    store: FakeObjectStore = field(default_factory=FakeObjectStore)
    jobs_queue: FakeMessageQueue = field(default_factory=FakeMessageQueue)
    work_queue: FakeMessageQueue = field(default_factory=FakeMessageQueue)

    def __post_init__(self) -> None:
        self.fake_videos = FakeVideoRepository(self.tables, self.clock)
        self.fake_jobs = FakeJobRepository(self.tables, self.clock)

    # The services are typed against the real adapters; the fakes stand in for them here.
    @property
    def videos(self) -> VideoRepository:
        return cast(VideoRepository, self.fake_videos)

    @property
    def jobs(self) -> JobRepository:
        return cast(JobRepository, self.fake_jobs)

    @property
    def objects(self) -> ObjectStore:
        return cast(ObjectStore, self.store)

    @property
    def jobs_q(self) -> MessageQueue:
        return cast(MessageQueue, self.jobs_queue)

    @property
    def work_q(self) -> MessageQueue:
        return cast(MessageQueue, self.work_queue)

    def with_settings(self, **changes: Any) -> World:
        self.settings = replace(self.settings, **changes)
        return self

    # -- the API's use cases ----------------------------------------------------------------------

    def register(self, owner: str | None = "alice", filename: str = "take.mp4", size: int = 1000) -> dict[str, Any]:
        return register_video(
            self.videos, self.objects, self.settings, {"filename": filename, "size_bytes": size}, owner
        )

    def uploaded(self, owner: str | None = "alice", filename: str = "take.mp4") -> dict[str, Any]:
        """A registered video whose file is in the bucket."""
        view = self.register(owner, filename)
        self.store.put_bytes(view["s3_key"], b"v" * 1000, "video/mp4")
        return view

    def trigger(self, video_id: str, owner: str | None = "alice", **body: Any) -> tuple[dict[str, Any], bool]:
        return create_job(self.videos, self.jobs, self.objects, self.jobs_q, self.settings, video_id, body, owner)

    def job(self, job_id: str) -> Job:
        job = self.fake_jobs.get(job_id)
        assert job is not None
        return job

    def video(self, video_id: str) -> Video:
        video = self.fake_videos.get(video_id)
        assert video is not None
        return video

    # -- the queue consumers --------------------------------------------------------------------

    def plan(self, job_id: str) -> str:
        job = self.job(job_id)
        message = JobRequested(job_id=job.id, video_id=job.video_id)
        return plan_job(self.videos, self.jobs, self.work_q, self.settings, message)

    def event(self, event: SegmentEvent) -> str:
        return record_event(self.videos, self.jobs, self.objects, self.work_q, self.settings, event)

    def probed(self, job_id: str, video: dict[str, Any] | None = None) -> str:
        job = self.job(job_id)
        return self.event(
            SegmentEvent(type=VIDEO_PROBED, job_id=job.id, video_id=job.video_id, segment=-1, video=video or PROBED)
        )

    def sweep(self, now: int) -> SweepReport:
        return orchestration_module.sweep(
            self.videos, self.jobs, self.objects, self.jobs_q, self.work_q, self.settings, now=now
        )

    def work_items(self) -> list[WorkItem]:
        return [m for m in self.work_queue.take() if isinstance(m, WorkItem)]

    def succeed(self, item: WorkItem, frames: int | None = None) -> str:
        """What a worker does with a work item: write its part, then report success."""
        part = make_part(item, frames)
        self.store.put_result(item.part_key, part)
        return self.event(
            SegmentEvent(
                type=SEGMENT_SUCCEEDED,
                job_id=item.job_id,
                video_id=item.video_id,
                segment=item.segment,
                part_key=item.part_key,
                frames_processed=len(part["frames"]),
                frames_with_hands=sum(1 for f in part["frames"] if f["hands"]),
            )
        )

    def running_job(self, owner: str | None = "alice", **body: Any) -> Job:
        """A job planned into segments (PROBED: 50 s, so three segments of the default 20 s)."""
        video = self.uploaded(owner, filename=f"take{len(self.tables.videos)}.mp4")
        view, _ = self.trigger(video["id"], owner, **body)
        self.plan(view["id"])
        self.probed(view["id"])
        return self.job(view["id"])


def make_part(item: WorkItem, frames: int | None = None, fps: float = 25.0) -> dict[str, Any]:
    """A worker's part for the item's range: one frame every 40 ms, a hand in every other one."""
    start = item.options.start_ms or 0
    end = item.options.end_ms if item.options.end_ms is not None else PROBED["duration_ms"]
    first = round(start * fps / 1000)
    count = frames if frames is not None else round((end - start) * fps / 1000)
    hand = {"handedness": "Left", "score": 0.9, "landmarks": [[0.5, 0.5, 0.0]] * 21}
    rows = [
        {"index": first + n, "timestamp_ms": (first + n) * 1000 / fps, "hands": [hand] if n % 2 else []}
        for n in range(count)
    ]
    options = item.options.to_dict()
    return build_result(
        video={"width": 640, "height": 480, "fps": fps, "duration_ms": PROBED["duration_ms"]},
        model={"name": "hand_landmarker", "variant": "full"},
        options=options,
        time_range={"start_ms": start, "end_ms": item.options.end_ms, "first_index": first, "end_index": first + count},
        frames=rows,
        stats={
            "frames_decoded": count,
            "frames_processed": count,
            "frames_with_hands": count // 2,
            "decode_s": 0.1,
            "inference_s": 0.2,
            "wall_s": 0.3,
        },
        decode={"complete": True},
    )
