"""Cancelling a job: POST /jobs/{job_id}/cancel. The job ends CANCELLED in one conditional move from
QUEUED or IN_PROGRESS, so a cancel racing the job's own end leaves exactly one final status and one
announcement; no segment of it is dispatched after that (dispatch claims only running jobs' segments),
and running segments stop at their next progress check, when they find the job's cancel marker."""

from __future__ import annotations

from chalicelib.domain.ports import JobAndVideo, JobRepository, VideoRepository
from chalicelib.domain.records import Job
from chalicelib.service.common import now_ms
from chalicelib.service.errors import Conflict
from chalicelib.service.jobs import get_job
from chalicelib.service.notifications import announce_job_end
from chalicelib.shared import telemetry
from chalicelib.shared.cancellation import mark_cancelled, unmark_cancelled
from chalicelib.shared.states import ACTIVE_JOB_STATUSES, JobStatus, VideoStatus
from chalicelib.shared.storage import ObjectStore

CANCELLED_CODE = "cancelled"


def _refuse(job: Job) -> Conflict:
    return Conflict(f"job {job.id} is {job.status}: it has already finished and cannot be cancelled")


def cancel_job(
    videos: VideoRepository, jobs: JobRepository, store: ObjectStore, job_id: str, owner: str | None = None
) -> Job:
    """Cancel a QUEUED or IN_PROGRESS job; the job as it is now. Conflict when it has already finished."""
    job = get_job(jobs, job_id, owner)
    if job.status not in ACTIVE_JOB_STATUSES:
        raise _refuse(job)
    # The marker goes first: once the job is CANCELLED a worker must find it. Should the job end
    # otherwise in between, the marker is taken back below (a finished job's workers are done anyway).
    mark_cancelled(store, job.video_id, job.id)
    with JobAndVideo(videos, jobs, job.video_id):
        won = jobs.transition(
            job.id,
            from_statuses=ACTIVE_JOB_STATUSES,
            to_status=JobStatus.CANCELLED,
            error="cancelled by its caller (POST /jobs/{job_id}/cancel)",
            error_code=CANCELLED_CODE,
            finished_at=now_ms(),
        )
        if won:
            _settle_video(videos, jobs, job)
            announce_job_end(jobs, job.id)
    current = jobs.get(job.id) or job
    if not won:
        if current.status != JobStatus.CANCELLED:  # the job ended on its own first
            unmark_cancelled(store, job.video_id, job.id)
        raise _refuse(current)
    telemetry.job_event(
        "job.cancelled",
        "job %s cancelled (was %s)",
        job.id,
        job.status,
        metric_name=telemetry.JOBS_CANCELLED,
        job_id=job.id,
        video_id=job.video_id,
        owner=job.owner,
    )
    return current


def _settle_video(videos: VideoRepository, jobs: JobRepository, job: Job) -> None:
    """A video whose last running job was cancelled shows the outcome of its newest job that did
    finish, or UPLOADED (ready for a job) when none did."""
    if jobs.count_active_for_video(job.video_id):
        return
    status = VideoStatus.UPLOADED
    for other in jobs.list_for_video(job.video_id, limit=50):
        if other.status == JobStatus.SUCCEEDED:
            status = VideoStatus.PROCESSED
            break
        if other.status == JobStatus.FAILED:
            status = VideoStatus.FAILED
            break
    videos.set_status(job.video_id, status, expected=(VideoStatus.PROCESSING,))
