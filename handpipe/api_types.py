"""The shapes the handpipe API answers with, as TypedDicts: the client's results stay plain dicts (JSON in,
JSON out, `job["id"]` works) while type checkers and editors know their keys. chalicelib/web/openapi.json
is the authority; these follow it."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

# A job in one of these has ended and will not change again (CANCELLED: POST /jobs/{id}/cancel).
FINAL_JOB_STATUSES = ("SUCCEEDED", "FAILED", "CANCELLED")
JOB_STATUSES = ("QUEUED", "IN_PROGRESS", *FINAL_JOB_STATUSES)


class UploadInstructions(TypedDict):
    method: str  # "PUT" (one presigned PUT) or "multipart" (part URLs, then a complete call)
    url: NotRequired[str]
    headers: NotRequired[dict[str, str]]
    expires_in_s: NotRequired[int]
    upload_id: NotRequired[str]
    part_size_bytes: NotRequired[int]
    part_count: NotRequired[int]
    expires_at: NotRequired[int]


class Video(TypedDict):
    id: str
    title: str
    filename: str
    content_type: str
    size_bytes: int | None
    s3_key: str
    status: str
    metadata: Any  # the video's metadata (duration, fps, size, rotation, codec) once probed, else None
    created_at: int
    updated_at: int
    upload: NotRequired[UploadInstructions]  # only in the answer to a registration or a new upload URL


class VideoPage(TypedDict):
    videos: list[Video]
    next_token: str | None


class Deleted(TypedDict):
    deleted: str
    objects_removed: int


class JobProgress(TypedDict):
    frames_done: int
    frames_total: int | None
    percent: float | None
    segments_done: int
    segments_total: int | None


class JobError(TypedDict):
    code: str | None
    message: str


class JobTimings(TypedDict):
    created_at: int
    started_at: int | None
    finished_at: int | None
    queued_ms: int | None
    run_ms: int | None


class Job(TypedDict):
    id: str
    video_id: str
    status: str
    options: dict[str, Any]
    client_token: str | None
    tag: str | None
    progress: JobProgress
    error: JobError | None
    timings: JobTimings
    video: Any  # the video's metadata once the job has probed it, else None
    summary: Any  # frames, hands and time ranges once the job SUCCEEDED, else None
    notify: NotRequired[Any]  # {"webhook_url"} when the job names one


class JobPage(TypedDict):
    jobs: list[Job]
    next_token: str | None


class ResultFile(TypedDict):
    key: str
    format: str
    url: str
    expires_in_s: int


class Result(TypedDict):
    job_id: str
    video_id: str
    summary: dict[str, Any]
    video: dict[str, Any]
    result: ResultFile
    pictures: dict[str, str | None]  # contact_sheet, timeline, annotated_video: presigned URLs or None
    artifacts: NotRequired[dict[str, bool]]


class Hand(TypedDict):
    handedness: str
    score: float
    landmarks: list[list[float]]
    world_landmarks: list[list[float]]
    gesture: NotRequired[Any]


class Frame(TypedDict):
    index: int
    timestamp_ms: float
    hands: list[Hand]


class FramePage(TypedDict):
    job_id: str
    frames: list[Frame]
    next_token: str | None


class Health(TypedDict):
    status: str  # "ok" or "degraded"
    checks: dict[str, str]


class Export(TypedDict):
    job_id: str
    format: str
    columns: list[str]
    rows: int
    key: str
    url: str
    expires_in_s: int
    path: NotRequired[str]  # download_export: where the file was saved


class WebhookSecret(TypedDict):
    secret: str  # keys the HMAC of every webhook event's body (verify_webhook)
    version: int
    rotated_at: int | None
    header: str
    algorithm: str
