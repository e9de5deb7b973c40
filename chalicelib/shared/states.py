"""The statuses of videos, jobs and segments and the moves allowed between them: one place for the state
machine docs/architecture.md draws. str-valued enums, so the database and the JSON keep the same strings."""

from __future__ import annotations

from enum import StrEnum


class VideoStatus(StrEnum):
    REGISTERED = "REGISTERED"
    UPLOADED = "UPLOADED"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"
    DELETING = "DELETING"  # a video on its way out: it takes no new job


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # stopped by its caller (POST /jobs/{id}/cancel): final, like the two above


class SegmentStatus(StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


# Where each status may go next. A repository's conditional update names the statuses it moves from,
# so a redelivered message or a racing consumer finds the row already moved and changes nothing.
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.IN_PROGRESS, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
VIDEO_TRANSITIONS: dict[VideoStatus, frozenset[VideoStatus]] = {
    VideoStatus.REGISTERED: frozenset({VideoStatus.UPLOADED, VideoStatus.PROCESSING, VideoStatus.DELETING}),
    VideoStatus.UPLOADED: frozenset({VideoStatus.PROCESSING, VideoStatus.DELETING}),
    # PROCESSING -> UPLOADED: its job was cancelled and no job ever finished on it (chalicelib.service.cancel).
    VideoStatus.PROCESSING: frozenset(
        {VideoStatus.PROCESSED, VideoStatus.FAILED, VideoStatus.UPLOADED, VideoStatus.DELETING}
    ),
    VideoStatus.PROCESSED: frozenset({VideoStatus.PROCESSING, VideoStatus.DELETING}),
    VideoStatus.FAILED: frozenset({VideoStatus.PROCESSING, VideoStatus.DELETING}),
    VideoStatus.DELETING: frozenset(),
}
SEGMENT_TRANSITIONS: dict[SegmentStatus, frozenset[SegmentStatus]] = {
    SegmentStatus.PENDING: frozenset({SegmentStatus.SUCCEEDED, SegmentStatus.FAILED}),
    SegmentStatus.SUCCEEDED: frozenset(),
    SegmentStatus.FAILED: frozenset(),
}

FINISHED_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.IN_PROGRESS)

# The tuples the OpenAPI description and the repositories' checks list, in this order.
VIDEO_STATUSES = tuple(VideoStatus)
JOB_STATUSES = tuple(JobStatus)
SEGMENT_STATUSES = tuple(SegmentStatus)

# Older names, kept for the code and tests that say them.
SEGMENT_PENDING = SegmentStatus.PENDING
SEGMENT_SUCCEEDED = SegmentStatus.SUCCEEDED
SEGMENT_FAILED = SegmentStatus.FAILED
VIDEO_DELETING = VideoStatus.DELETING


def job_may_move(current: JobStatus, target: JobStatus) -> bool:
    """Whether the state machine lets a job go from `current` to `target`."""
    return target in JOB_TRANSITIONS[current]
