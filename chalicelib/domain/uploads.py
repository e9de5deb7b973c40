"""The records of big uploads, upload-triggered intake and the job search: plain frozen dataclasses, so
services and adapters share them without depending on each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MultipartState:
    """A video's unfinished multipart upload."""

    upload_id: str
    part_bytes: int


@dataclass(frozen=True)
class IntakeRecord:
    """One object version that upload-triggered intake registered, and what it made of it."""

    object_ref: str  # SHA-256 of bucket, key and version: the table's primary key
    s3_key: str
    object_version: str
    video_id: str
    job_id: str | None
    created_at: int


@dataclass(frozen=True)
class JobFilter:
    """What GET /jobs narrows to; None is "any". `owner` None: every owner's (an unscoped stack)."""

    owner: str | None = None
    status: str | None = None
    tag: str | None = None
    video_id: str | None = None
    created_after: int | None = None  # ms since the epoch: jobs created at or after it
