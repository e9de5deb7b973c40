"""In-memory stand-ins for the ports the services take (the two repositories, the object store, a
queue), so the unit tier runs the services in milliseconds. They keep the real adapters' promises:
tests/integration/test_fakes_contract.py runs the same assertions against these and SQLite/MariaDB."""

from __future__ import annotations

import builtins
import copy
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from chalicelib.adapters.database import IntegrityError, epoch_ms
from chalicelib.domain.records import Announcement, Job, JobFields, JobRefused, Segment, Video
from chalicelib.shared.states import (
    ACTIVE_JOB_STATUSES,
    SEGMENT_FAILED,
    SEGMENT_PENDING,
    SEGMENT_STATUSES,
    SEGMENT_SUCCEEDED,
    VIDEO_DELETING,
)
from chalicelib.shared.storage import ObjectMissing

T0 = 1_700_000_000_000


class Clock:
    """A clock the test moves by hand (the repositories stamp updated_at with it)."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int = 1000) -> int:
        self.now += ms
        return self.now


@dataclass
class Tables:
    """The rows both fake repositories share, as one database holds both tables. A transaction takes a
    copy and puts it back when its block raises: a rollback, nested ones like savepoints."""

    videos: dict[str, Video] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    segments: dict[tuple[str, int], Segment] = field(default_factory=dict)
    announcements: dict[str, Announcement] = field(default_factory=dict)  # by job id: one end per job
    sent_announcements: set[str] = field(default_factory=set)  # job ids whose end went to the notify queue
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # job_id -> requests, requested_at, written_at
    transactions: int = 0  # how many were opened: a test can see that a change was grouped

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.transactions += 1
        saved = (
            dict(self.videos),
            dict(self.jobs),
            dict(self.segments),
            dict(self.announcements),
            copy.deepcopy(self.artifacts),
        )
        try:
            yield
        except BaseException:
            self.videos, self.jobs, self.segments, self.announcements, self.artifacts = saved
            raise


def _newest_first(rows: Sequence[Any], after: tuple[int, str] | None, limit: int) -> list[Any]:
    _check_limit(limit)
    ordered = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)
    if after is not None:
        ordered = [r for r in ordered if (r.created_at, r.id) < after]
    return ordered[:limit]


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError(f"limit must be a whole number from 1 to 1000, got {limit!r}")


class FakeVideoRepository:
    """chalicelib.adapters.repositories.VideoRepository's methods the services call, over Tables."""

    def __init__(self, tables: Tables, clock: Callable[[], int] = epoch_ms) -> None:
        self.tables = tables
        self._clock = clock

    def add(self, video: Video) -> None:
        if video.id in self.tables.videos or any(v.s3_key == video.s3_key for v in self.tables.videos.values()):
            raise IntegrityError(f"duplicate video id or s3_key: {video.id}, {video.s3_key}")
        self.tables.videos[video.id] = video

    def get(self, video_id: str, owner: str | None = None) -> Video | None:
        video = self.tables.videos.get(video_id)
        return None if video is None or (owner is not None and video.owner != owner) else video

    def find_by_key(self, s3_key: str) -> Video | None:
        return next((v for v in self.tables.videos.values() if v.s3_key == s3_key), None)

    def set_status(self, video_id: str, status: str, *, expected: Collection[str] | None = None) -> bool:
        video = self.tables.videos.get(video_id)
        if video is None or (expected is not None and video.status not in expected):
            return False
        self.tables.videos[video_id] = replace(video, status=status, updated_at=self._clock())
        return True

    def set_metadata(self, video_id: str, metadata: dict[str, Any]) -> None:
        video = self.tables.videos.get(video_id)
        if video is not None:
            self.tables.videos[video_id] = replace(video, metadata=copy.deepcopy(metadata), updated_at=self._clock())

    def lock(self, video_id: str) -> Video | None:
        return self.tables.videos.get(video_id)

    def begin_delete(self, video_id: str) -> int | None:
        with self.tables.transaction():
            if video_id not in self.tables.videos:
                return None
            active = sum(
                1 for j in self.tables.jobs.values() if j.video_id == video_id and j.status in ACTIVE_JOB_STATUSES
            )
            if not active:
                self.set_status(video_id, VIDEO_DELETING)
            return active

    def delete(self, video_id: str) -> bool:
        for job in [j for j in self.tables.jobs.values() if j.video_id == video_id]:
            del self.tables.jobs[job.id]
            self.tables.announcements.pop(job.id, None)
            for key in [k for k in self.tables.segments if k[0] == job.id]:
                del self.tables.segments[key]
            self.tables.artifacts.pop(job.id, None)
        return self.tables.videos.pop(video_id, None) is not None

    def list(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        after: tuple[int, str] | None = None,
        owner: str | None = None,
    ) -> builtins.list[Video]:
        rows = [
            v
            for v in self.tables.videos.values()
            if (status is None or v.status == status) and (owner is None or v.owner == owner)
        ]
        return _newest_first(rows, after, limit)


class FakeJobRepository:
    """chalicelib.adapters.job_repository.JobRepository's methods the services call, over Tables."""

    def __init__(self, tables: Tables, clock: Callable[[], int] = epoch_ms) -> None:
        self.tables = tables
        self._clock = clock

    # -- jobs -----------------------------------------------------------------------------------

    def create(self, job: Job) -> tuple[Job, bool]:
        if job.client_token is not None:
            existing = self.find_by_client_token(job.video_id, job.client_token)
            if existing is not None:
                return existing, False
        if job.id in self.tables.jobs or job.video_id not in self.tables.videos:
            raise IntegrityError(f"duplicate job id {job.id} or no video {job.video_id}")
        self.tables.jobs[job.id] = job
        return job, True

    def find_by_client_token(self, video_id: str, client_token: str) -> Job | None:
        return next(
            (j for j in self.tables.jobs.values() if j.video_id == video_id and j.client_token == client_token), None
        )

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        job = self.tables.jobs.get(job_id)
        return None if job is None or (owner is not None and job.owner != owner) else job

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.tables.transaction():
            yield

    def create_for_video(self, job: Job, *, max_active: int) -> tuple[Job, bool]:
        with self.tables.transaction():
            video = self.tables.videos.get(job.video_id)
            if video is None:
                raise JobRefused("missing")
            if video.status == VIDEO_DELETING:
                raise JobRefused("deleting")
            if job.client_token is not None:
                existing = self.find_by_client_token(job.video_id, job.client_token)
                if existing is not None:
                    return existing, False
            active = self.count_active_for_video(job.video_id)
            if active >= max_active:
                raise JobRefused("busy", active)
            return self.create(job)

    def count_active_for_video(self, video_id: str) -> int:
        return sum(1 for j in self.tables.jobs.values() if j.video_id == video_id and j.status in ACTIVE_JOB_STATUSES)

    def delete(self, job_id: str) -> bool:
        for key in [k for k in self.tables.segments if k[0] == job_id]:
            del self.tables.segments[key]
        self.tables.announcements.pop(job_id, None)
        self.tables.artifacts.pop(job_id, None)
        return self.tables.jobs.pop(job_id, None) is not None

    # -- announcements --------------------------------------------------------------------------

    def add_announcement(self, announcement: Announcement) -> bool:
        if announcement.job_id in self.tables.announcements:
            return False
        self.tables.announcements[announcement.job_id] = announcement
        return True

    def claim_announcements(self, *, claimed_before_ms: int, limit: int = 50) -> list[Announcement]:
        _check_limit(limit)
        waiting = sorted(
            (a for a in self.tables.announcements.values() if a.job_id not in self.tables.sent_announcements),
            key=lambda a: (a.created_at, a.event_id),
        )
        claimed = []
        for announcement in waiting:
            if announcement.claimed_at is None or announcement.claimed_at < claimed_before_ms:
                claimed.append(replace(announcement, claimed_at=self._clock()))
                self.tables.announcements[announcement.job_id] = claimed[-1]
            if len(claimed) == limit:
                break
        return claimed

    def announcement_sent(self, event_id: str) -> None:
        for announcement in self.tables.announcements.values():
            if announcement.event_id == event_id:
                self.tables.sent_announcements.add(announcement.job_id)

    def list_for_video(self, video_id: str, *, limit: int = 50, after: tuple[int, str] | None = None) -> list[Job]:
        return _newest_first([j for j in self.tables.jobs.values() if j.video_id == video_id], after, limit)

    def transition(self, job_id: str, *, from_statuses: Collection[str], to_status: str, **fields: Any) -> bool:
        unknown = sorted(set(fields) - set(JobFields.__annotations__))
        if unknown:
            raise TypeError(f"transition() cannot set {', '.join(unknown)}")
        job = self.tables.jobs.get(job_id)
        if job is None or job.status not in from_statuses:
            return False
        self.tables.jobs[job_id] = replace(job, status=to_status, updated_at=self._clock(), **copy.deepcopy(fields))
        return True

    def queued_before(self, *, created_before_ms: int, limit: int = 100) -> list[Job]:
        rows = [j for j in self.tables.jobs.values() if j.status == "QUEUED" and j.created_at < created_before_ms]
        return sorted(rows, key=lambda j: (j.created_at, j.id))[:limit]

    def finished_unmerged(self, *, updated_before_ms: int, limit: int = 100) -> list[str]:
        rows = [
            j
            for j in self.tables.jobs.values()
            if j.status == "IN_PROGRESS"
            and j.updated_at < updated_before_ms
            and j.segments_total > 0
            and j.segments_done == j.segments_total
        ]
        return [j.id for j in sorted(rows, key=lambda j: (j.updated_at, j.id))[:limit]]

    # -- segments -------------------------------------------------------------------------------

    def _of(self, job_id: str) -> list[Segment]:
        return sorted((s for k, s in self.tables.segments.items() if k[0] == job_id), key=lambda s: s.segment_index)

    def _refresh_totals(self, job_id: str) -> None:
        job = self.tables.jobs[job_id]
        segments = self._of(job_id)
        self.tables.jobs[job_id] = replace(
            job,
            segments_done=sum(1 for s in segments if s.status == SEGMENT_SUCCEEDED),
            frames_done=sum(s.frames_processed for s in segments),
            frames_with_hands=sum(s.frames_with_hands for s in segments),
            updated_at=self._clock(),
        )

    def add_segments(self, job_id: str, segments: Sequence[Segment]) -> None:
        for segment in segments:
            if segment.job_id != job_id:
                raise ValueError(f"segment {segment.segment_index} belongs to job {segment.job_id}, not {job_id}")
            if segment.status not in SEGMENT_STATUSES:
                raise ValueError(f"segment status must be one of {', '.join(SEGMENT_STATUSES)}, got {segment.status!r}")
        if job_id not in self.tables.jobs:
            raise IntegrityError(f"no job {job_id}")
        for segment in segments:
            self.tables.segments.setdefault((job_id, segment.segment_index), segment)

    def segments(self, job_id: str) -> list[Segment]:
        return self._of(job_id)

    def _active(self, job_id: str) -> bool:
        job = self.tables.jobs.get(job_id)
        return job is not None and job.status in ACTIVE_JOB_STATUSES

    def in_flight(self, job_id: str | None = None) -> int:
        return sum(
            1
            for (owner_job, _), s in self.tables.segments.items()
            if s.status == SEGMENT_PENDING
            and s.dispatched_at is not None
            and self._active(owner_job)
            and (job_id is None or owner_job == job_id)
        )

    def claim_for_dispatch(self, job_id: str, limit: int) -> list[Segment]:
        job = self.tables.jobs.get(job_id)
        if limit <= 0 or job is None or job.status != "IN_PROGRESS":
            return []
        now = self._clock()
        waiting = [s for s in self._of(job_id) if s.status == SEGMENT_PENDING and s.dispatched_at is None][:limit]
        claimed = [replace(s, dispatched_at=now, dispatch_count=s.dispatch_count + 1) for s in waiting]
        for segment in claimed:
            self.tables.segments[(job_id, segment.segment_index)] = segment
        return claimed

    def claim_within_caps(self, job_id: str, *, per_job: int, total: int, at_most: int | None = None) -> list[Segment]:
        capacity = min(per_job - self.in_flight(job_id), total - self.in_flight())
        if at_most is not None:
            capacity = min(capacity, at_most)
        return self.claim_for_dispatch(job_id, capacity)

    def release_claim(self, job_id: str, index: int) -> None:
        segment = self.tables.segments.get((job_id, index))
        if segment is not None and segment.status == SEGMENT_PENDING and segment.dispatched_at is not None:
            self.tables.segments[(job_id, index)] = replace(
                segment, dispatched_at=None, dispatch_count=segment.dispatch_count - 1
            )

    def silent_segments(self, *, since_ms: int, limit: int = 100) -> list[Segment]:
        rows = [
            s
            for s in self.tables.segments.values()
            if s.status == SEGMENT_PENDING
            and s.dispatched_at is not None
            and s.dispatched_at < since_ms
            and s.updated_at < since_ms
            and self.tables.jobs[s.job_id].status == "IN_PROGRESS"
        ]
        return sorted(rows, key=lambda s: (s.dispatched_at or 0, s.job_id, s.segment_index))[:limit]

    def requeue_segment(self, job_id: str, index: int, *, dispatched_at: int) -> bool:
        segment = self.tables.segments.get((job_id, index))
        if segment is None or segment.status != SEGMENT_PENDING or segment.dispatched_at != dispatched_at:
            return False
        self.tables.segments[(job_id, index)] = replace(segment, dispatched_at=None, updated_at=self._clock())
        return True

    def jobs_waiting_for_dispatch(self, limit: int = 50) -> list[tuple[str, str | None]]:
        """Round robin across owners (each owner's oldest waiting job, then each one's second, ...),
        within a round the owner with the fewest segments on workers first: the SQL's order."""
        busy: dict[str, int] = {}
        for (job_id, _), s in self.tables.segments.items():
            job = self.tables.jobs[job_id]
            if s.status == SEGMENT_PENDING and s.dispatched_at is not None and job.status == "IN_PROGRESS":
                busy[job.owner or ""] = busy.get(job.owner or "", 0) + 1
        waiting = sorted(
            (
                j
                for j in self.tables.jobs.values()
                if j.status == "IN_PROGRESS"
                and any(s.status == SEGMENT_PENDING and s.dispatched_at is None for s in self._of(j.id))
            ),
            key=lambda j: (j.created_at, j.id),
        )
        turns: dict[str, int] = {}
        keyed = []
        for job in waiting:
            who = job.owner or ""
            turns[who] = turns.get(who, 0) + 1
            keyed.append(((turns[who], busy.get(who, 0), job.created_at, job.id), job))
        return [(job.id, job.owner) for _, job in sorted(keyed, key=lambda pair: pair[0])][:limit]

    def _pending(self, job_id: str, index: int) -> Segment | None:
        segment = self.tables.segments.get((job_id, index))
        return segment if segment is not None and segment.status == SEGMENT_PENDING else None

    def complete_segment(self, job_id: str, index: int, *, frames_processed: int, frames_with_hands: int) -> bool:
        segment = self._pending(job_id, index)
        if segment is None:
            return False
        self.tables.segments[(job_id, index)] = replace(
            segment,
            status=SEGMENT_SUCCEEDED,
            frames_processed=frames_processed,
            frames_with_hands=frames_with_hands,
            updated_at=self._clock(),
        )
        self._refresh_totals(job_id)
        return True

    def fail_segment(self, job_id: str, index: int, *, error: str) -> bool:
        segment = self._pending(job_id, index)
        if segment is None:
            return False
        self.tables.segments[(job_id, index)] = replace(
            segment, status=SEGMENT_FAILED, error=error, updated_at=self._clock()
        )
        return True

    def record_progress(self, job_id: str, index: int, frames_processed: int) -> bool:
        segment = self._pending(job_id, index)
        if segment is None:
            return False
        raised = frames_processed > segment.frames_processed
        self.tables.segments[(job_id, index)] = replace(
            segment, frames_processed=max(frames_processed, segment.frames_processed), updated_at=self._clock()
        )
        if raised:
            self._refresh_totals(job_id)
        return raised

    # -- artifacts (job_artifacts) ----------------------------------------------------------------

    def artifacts_requested(self, job_id: str) -> int:
        row = self.tables.artifacts.setdefault(job_id, {"requests": 0, "requested_at": 0, "written_at": None})
        row.update(requests=row["requests"] + 1, requested_at=self._clock())
        return int(row["requests"])

    def artifacts_written(self, job_id: str) -> bool:
        row = self.tables.artifacts.get(job_id)
        if row is None or row["written_at"] is not None:
            return False
        row["written_at"] = self._clock()
        return True

    def artifacts_pending(self, job_id: str) -> bool:
        row = self.tables.artifacts.get(job_id)
        return row is not None and row["written_at"] is None

    def artifacts_unwritten(self, *, requested_before_ms: int, max_requests: int, limit: int = 100) -> list[str]:
        rows = [
            (row["requested_at"], job_id)
            for job_id, row in self.tables.artifacts.items()
            if row["written_at"] is None
            and row["requested_at"] < requested_before_ms
            and row["requests"] < max_requests
            and job_id in self.tables.jobs
            and self.tables.jobs[job_id].status == "SUCCEEDED"
        ]
        return [job_id for _, job_id in sorted(rows)[:limit]]


class FakeObjectStore:
    """chalicelib.shared.storage.ObjectStore's calls the services make, over a dict of key -> bytes or result."""

    def __init__(self, bucket: str = "fake-bucket") -> None:
        self.bucket = bucket
        self.objects: dict[str, tuple[Any, str]] = {}  # key -> (bytes or a result dict, content type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = (data, content_type)

    def put_result(self, key: str, result: dict[str, Any]) -> None:
        self.objects[key] = (copy.deepcopy(result), "application/gzip")

    def get_bytes(self, key: str) -> bytes:
        if key not in self.objects or not isinstance(self.objects[key][0], bytes):
            raise ObjectMissing(f"s3://{self.bucket}/{key} does not exist")
        data: bytes = self.objects[key][0]
        return data

    def get_result(self, key: str) -> dict[str, Any]:
        if key not in self.objects or not isinstance(self.objects[key][0], dict):
            raise ObjectMissing(f"s3://{self.bucket}/{key} does not exist")
        result: dict[str, Any] = copy.deepcopy(self.objects[key][0])
        return result

    def head(self, key: str) -> dict[str, Any] | None:
        if key not in self.objects:
            return None
        body, content_type = self.objects[key]
        size = len(body) if isinstance(body, bytes) else len(repr(body))
        return {"size": size, "content_type": content_type, "etag": f"etag-{abs(hash(key)) % 10**8}"}

    def delete_prefix(self, prefix: str) -> int:
        keys = [k for k in self.objects if k.startswith(prefix)]
        for key in keys:
            del self.objects[key]
        return len(keys)

    def delete_key(self, key: str) -> int:
        return 1 if self.objects.pop(key, None) is not None else 0

    def presign_upload(self, key: str, content_type: str, size: int, expires_s: int) -> str:
        return f"https://{self.bucket}.example/{key}?put&type={content_type}&size={size}&expires={expires_s}"

    def presign_download(self, key: str, expires_s: int, filename: str | None = None) -> str:
        return f"https://{self.bucket}.example/{key}?get&expires={expires_s}&name={filename or ''}"


class QueueDown(Exception):
    """What FakeMessageQueue raises when a test has told it to fail (as QueueUnavailable would)."""


class FakeMessageQueue:
    """chalicelib.shared.queues.MessageQueue: the messages sent, in order; `down` makes every send fail."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.down = False

    def send(self, message: Any) -> str:
        if self.down:
            raise QueueDown("the queue does not answer")
        self.sent.append(message)
        return f"msg-{len(self.sent)}"

    def send_many(self, messages: list[Any]) -> None:
        if self.down:
            raise QueueDown("the queue does not answer")
        self.sent.extend(messages)

    def take(self) -> list[Any]:
        """The messages sent since the last take (what a consumer would receive)."""
        taken, self.sent = self.sent, []
        return taken
