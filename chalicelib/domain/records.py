"""The records services pass around (Video, Job, Segment) and what a repository may refuse or set:
plain frozen dataclasses, so services and fakes never depend on the database adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from chalicelib.shared.states import SEGMENT_PENDING


@dataclass(frozen=True)
class Video:
    id: str
    title: str
    filename: str
    content_type: str
    s3_key: str
    status: str
    created_at: int
    updated_at: int
    size_bytes: int | None = None
    owner: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Job:
    id: str
    video_id: str
    status: str
    options: dict[str, Any]
    created_at: int
    updated_at: int
    client_token: str | None = None
    tag: str | None = None
    owner: str | None = None
    error: str | None = None
    error_code: str | None = None
    segments_total: int = 0
    segments_done: int = 0
    frames_total: int | None = None
    frames_done: int = 0
    frames_with_hands: int = 0
    result_key: str | None = None
    summary: dict[str, Any] | None = None
    video_metadata: dict[str, Any] | None = None
    started_at: int | None = None
    finished_at: int | None = None
    notify_url: str | None = None  # the webhook its end is POSTed to (service.notifications)


@dataclass(frozen=True)
class Announcement:
    """A job's end, recorded with the job's final status and not yet handed to the notify queue."""

    event_id: str
    job_id: str
    body: str  # the event's JSON, exactly the bytes a webhook receives and signs
    created_at: int
    claimed_at: int | None = None


@dataclass(frozen=True)
class Segment:
    job_id: str
    segment_index: int
    part_key: str
    updated_at: int
    status: str = SEGMENT_PENDING
    start_ms: int | None = None
    end_ms: int | None = None
    frames_processed: int = 0
    frames_with_hands: int = 0
    error: str | None = None
    dispatched_at: int | None = None  # when its work item was sent; None while it waits for capacity
    dispatch_count: int = 0  # work items sent for it; more than one when a lost one was sent again


class JobRefused(Exception):
    """`JobRepository.create_for_video` would not add the job: the video is `missing`, `deleting`,
    or `busy` with `active` jobs already."""

    def __init__(self, reason: Literal["missing", "deleting", "busy"], active: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.active = active


class JobFields(TypedDict, total=False):
    """What `JobRepository.transition` may set besides the status."""

    error: str | None
    error_code: str | None
    segments_total: int
    frames_total: int | None
    result_key: str | None
    summary: dict[str, Any] | None
    video_metadata: dict[str, Any] | None
    started_at: int | None
    finished_at: int | None
