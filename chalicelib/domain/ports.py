"""The ports services depend on instead of a database: the repository Protocols (implemented by
chalicelib.adapters over SQL, and by the tests' in-memory fakes) and the unit of work that changes a job
and its video together."""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Protocol, Unpack

from chalicelib.domain.records import Announcement, Job, JobFields, Segment, Video
from chalicelib.domain.uploads import IntakeRecord, JobFilter, MultipartState


class VideoRepository(Protocol):
    """What services need of the video store (adapters.repositories.VideoRepository and the tests' fakes)."""

    def add(self, video: Video) -> None: ...

    def get(self, video_id: str, owner: str | None = None) -> Video | None: ...

    def find_by_key(self, s3_key: str) -> Video | None: ...

    def set_status(self, video_id: str, status: str, *, expected: Collection[str] | None = None) -> bool: ...

    def set_metadata(self, video_id: str, metadata: dict[str, Any]) -> None: ...

    def lock(self, video_id: str) -> Video | None: ...

    def begin_delete(self, video_id: str) -> int | None: ...

    def delete(self, video_id: str) -> bool: ...

    def list(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        after: tuple[int, str] | None = None,
        owner: str | None = None,
    ) -> builtins.list[Video]: ...


class JobRepository(Protocol):
    """What services need of the job store (adapters.job_repository.JobRepository and the tests' fakes)."""

    def create(self, job: Job) -> tuple[Job, bool]: ...

    def find_by_client_token(self, video_id: str, client_token: str) -> Job | None: ...

    def get(self, job_id: str, owner: str | None = None) -> Job | None: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def create_for_video(self, job: Job, *, max_active: int) -> tuple[Job, bool]: ...

    def delete(self, job_id: str) -> bool: ...

    def list_for_video(self, video_id: str, *, limit: int = 50, after: tuple[int, str] | None = None) -> list[Job]: ...

    def ids_with_status(self, status: str, *, limit: int = 100, after_id: str = "") -> list[str]: ...

    def count_active_for_video(self, video_id: str) -> int: ...

    def transition(
        self, job_id: str, *, from_statuses: Collection[str], to_status: str, **fields: Unpack[JobFields]
    ) -> bool: ...

    def stuck(self, *, status: str, updated_before_ms: int, limit: int = 100) -> list[Job]: ...

    def add_segments(self, job_id: str, segments: Sequence[Segment]) -> None: ...

    def segments(self, job_id: str) -> list[Segment]: ...

    def in_flight(self, job_id: str | None = None) -> int: ...

    def claim_for_dispatch(self, job_id: str, limit: int) -> list[Segment]: ...

    def claim_within_caps(
        self, job_id: str, *, per_job: int, total: int, at_most: int | None = None
    ) -> list[Segment]: ...

    def release_claim(self, job_id: str, index: int) -> None: ...

    def silent_segments(self, *, since_ms: int, limit: int = 100) -> list[Segment]: ...

    def requeue_segment(self, job_id: str, index: int, *, dispatched_at: int) -> bool: ...

    def finished_unmerged(self, *, updated_before_ms: int, limit: int = 100) -> list[str]: ...

    def queued_before(self, *, created_before_ms: int, limit: int = 100) -> list[Job]: ...

    def jobs_waiting_for_dispatch(self, limit: int = 50) -> list[tuple[str, str | None]]: ...

    def complete_segment(self, job_id: str, index: int, *, frames_processed: int, frames_with_hands: int) -> bool: ...

    def fail_segment(self, job_id: str, index: int, *, error: str) -> bool: ...

    def record_progress(self, job_id: str, index: int, frames_processed: int) -> bool: ...

    def add_announcement(self, announcement: Announcement) -> bool: ...

    def claim_announcements(self, *, claimed_before_ms: int, limit: int = 50) -> list[Announcement]: ...

    def announcement_sent(self, event_id: str) -> None: ...

    def artifacts_requested(self, job_id: str) -> int: ...

    def artifacts_written(self, job_id: str) -> bool: ...

    def artifacts_pending(self, job_id: str) -> bool: ...

    def artifacts_unwritten(self, *, requested_before_ms: int, max_requests: int, limit: int = 100) -> list[str]: ...


class UnitOfWork(Protocol):
    """Changes to a job and its video that commit together or not at all. Entering locks the video row
    first (the lock order every such change keeps, so two of them cannot deadlock) and gives it back."""

    def __enter__(self) -> Video | None: ...

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool | None: ...


class JobAndVideo:
    """The UnitOfWork over any pair of repositories that share a transaction: the SQL adapters share
    their Database (its transaction() nests as savepoints), the tests' fakes share their lock."""

    def __init__(self, videos: VideoRepository, jobs: JobRepository, video_id: str) -> None:
        self._videos, self._jobs, self._video_id = videos, jobs, video_id
        self._transaction: AbstractContextManager[None] | None = None

    def __enter__(self) -> Video | None:
        self._transaction = self._jobs.transaction()
        self._transaction.__enter__()
        try:
            return self._videos.lock(self._video_id)
        except BaseException as error:
            self._transaction.__exit__(type(error), error, error.__traceback__)
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool | None:
        assert self._transaction is not None, "exit without enter"
        return self._transaction.__exit__(kind, error, trace)


class UploadRepository(Protocol):
    """A video's unfinished multipart upload (adapters.upload_repository.UploadRepository)."""

    def begin(self, video_id: str, upload_id: str, part_bytes: int) -> None: ...

    def get(self, video_id: str) -> MultipartState | None: ...

    def complete(self, video_id: str, upload_id: str, size_bytes: int) -> bool: ...


class IntakeRepository(Protocol):
    """The object versions upload-triggered intake registered (adapters.upload_repository.IntakeRepository)."""

    def get(self, object_ref: str) -> IntakeRecord | None: ...

    def add(self, record: IntakeRecord) -> bool: ...

    def registered_video(self, video_id: str) -> bool: ...


class JobSearch(Protocol):
    """GET /jobs's query across videos (adapters.job_queries.JobQueries)."""

    def find(self, where: JobFilter, *, limit: int = 50, after: tuple[int, str] | None = None) -> list[Job]: ...
