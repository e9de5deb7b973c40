"""What a restarted local stack sends again. Its queues live in moto's memory and start empty, while
the database, the source of truth, still says which jobs were waiting, running or left without
pictures; this re-derives the lost messages from it. (In AWS the queues are durable: nothing here.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job
from chalicelib.service.orchestration import dispatch, finish_if_complete, request_artifacts
from chalicelib.shared.contracts import JobRequested, picture_key
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.storage import ObjectStore

logger = logging.getLogger("handpipe.local.resume")

_PAGE = 200


@dataclass
class Resumed:
    """The jobs a resume sent something again for, by what it sent."""

    requested: list[str] = field(default_factory=list)  # QUEUED: their job request, again
    redispatched: list[str] = field(default_factory=list)  # IN_PROGRESS: their unfinished segments
    merged: list[str] = field(default_factory=list)  # IN_PROGRESS with every part in: merged now
    rendered: list[str] = field(default_factory=list)  # SUCCEEDED without pictures: drawn again
    failed: list[str] = field(default_factory=list)  # could not be resumed (logged); the sweeper sees them

    def __str__(self) -> str:
        return ", ".join(f"{len(ids)} {name}" for name, ids in vars(self).items())


def _jobs(jobs: JobRepository, status: str) -> Iterator[Job]:
    after = ""
    while ids := jobs.ids_with_status(status, limit=_PAGE, after_id=after):
        for job_id in ids:
            job = jobs.get(job_id)
            if job is not None and job.status == status:
                yield job
        after = ids[-1]


def resume(  # noqa: C901 - one pass per job state
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    jobs_queue: MessageQueue,
    work_queue: MessageQueue,
    settings: Settings,
) -> Resumed:
    """Send again what the database says is owed, on a stack whose queues are empty and whose
    handlers have not started: nothing sent before the restart can still be in flight."""
    done = Resumed()
    for job in _jobs(jobs, "QUEUED"):
        # Planning is idempotent: a job whose probe was lost is probed again.
        jobs_queue.send(JobRequested(job_id=job.id, video_id=job.video_id))
        done.requested.append(job.id)
    for job in _jobs(jobs, "IN_PROGRESS"):
        try:
            for segment in jobs.segments(job.id):
                if segment.status == "PENDING" and segment.dispatched_at is not None:
                    jobs.release_claim(job.id, segment.segment_index)  # its work item went with the queue
            outcome = finish_if_complete(videos, jobs, store, job.id, work_queue, settings)
            if outcome == "succeeded":
                done.merged.append(job.id)
                continue
            video = videos.get(job.video_id)
            if video is not None:
                # Within the caps; the rest go out as capacity frees, as they always do.
                dispatch(jobs, work_queue, settings, job, video)
                done.redispatched.append(job.id)
        except Exception:
            logger.exception("could not resume job %s; the sweeper will fail it if it stays stuck", job.id)
            done.failed.append(job.id)
    for job in _jobs(jobs, "SUCCEEDED"):
        # The contact sheet is written last, so its absence means the artifact step did not finish
        # (it merges the parts first, so a job whose result is not written yet is asked for too).
        if (
            job.id in done.merged
            or job.result_key is None
            or store.head(picture_key(job.video_id, job.id, "contact_sheet")) is not None
        ):
            continue
        video = videos.get(job.video_id)
        if video is None or store.head(video.s3_key) is None:
            continue
        request_artifacts(work_queue, settings, job, video)
        done.rendered.append(job.id)
    return done
