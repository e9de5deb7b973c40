"""The JSON shapes of a video and a job in API responses (the OpenAPI schemas describe them)."""

from __future__ import annotations

from typing import Any

from chalicelib.domain.records import Job, Video
from chalicelib.shared.states import JobStatus


def video_view(video: Video) -> dict[str, Any]:
    return {
        "id": video.id,
        "title": video.title,
        "filename": video.filename,
        "content_type": video.content_type,
        "size_bytes": video.size_bytes,
        "s3_key": video.s3_key,
        "status": video.status,
        "metadata": video.metadata,
        "created_at": video.created_at,
        "updated_at": video.updated_at,
    }


def job_view(job: Job) -> dict[str, Any]:
    total = job.frames_total
    percent = None
    if job.status == JobStatus.SUCCEEDED:
        percent = 100.0
    elif total:
        percent = round(min(99.9, 100.0 * job.frames_done / total), 1)
    return {
        "id": job.id,
        "video_id": job.video_id,
        "status": job.status,
        "options": job.options,
        "client_token": job.client_token,
        "tag": job.tag,
        "progress": {
            "frames_done": job.frames_done,
            "frames_total": total,
            "percent": percent,
            "segments_done": job.segments_done,
            "segments_total": job.segments_total,
        },
        "error": None if job.error is None else {"code": job.error_code, "message": job.error},
        "timings": {
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "queued_ms": None if job.started_at is None else job.started_at - job.created_at,
            "run_ms": None if job.finished_at is None or job.started_at is None else job.finished_at - job.started_at,
        },
        "video": job.video_metadata,
        "summary": job.summary,
        "notify": None if job.notify_url is None else {"webhook_url": job.notify_url},
    }
