"""The pipeline behind the queues: plan a job, start and dispatch its segments, record the worker's
events (one handler per event type), merge when complete, fail a job, and sweep what was lost."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from chalicelib.config import Settings
from chalicelib.domain.ports import JobAndVideo, JobRepository, VideoRepository
from chalicelib.domain.records import Job, Segment, Video
from chalicelib.domain.rules import job_expected_frames, limit_problems, plan_limit_problems, plan_segments
from chalicelib.service.common import logger, now_ms
from chalicelib.service.container_probe import probe_container
from chalicelib.service.notifications import announce_job_end
from chalicelib.shared import telemetry
from chalicelib.shared.contracts import (
    ARTIFACTS_WRITTEN,
    SEGMENT_FAILED,
    SEGMENT_PROGRESS,
    SEGMENT_SUCCEEDED,
    VIDEO_PROBED,
    JobRequested,
    ProbeRequest,
    ProcessOptions,
    RenderRequest,
    SegmentEvent,
    WorkItem,
    part_head_key,
    part_key,
    result_key,
)
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.results import MergeError, merge_heads, part_head
from chalicelib.shared.states import ACTIVE_JOB_STATUSES, JobStatus, SegmentStatus, VideoStatus
from chalicelib.shared.storage import ObjectMissing, ObjectStore


def plan_job(
    videos: VideoRepository,
    jobs: JobRepository,
    work_queue: MessageQueue,
    settings: Settings,
    message: JobRequested,
    store: ObjectStore | None = None,
) -> str:
    """The "jobs" consumer: split a queued job into segments and send their work items. When the
    video's duration is needed and not yet known, an MP4/MOV is probed here from its container index
    (with `store`: a few ranged GETs, no cold worker on the job's path); any other file is probed by
    a worker first."""
    job = jobs.get(message.job_id)
    if job is None:
        logger.warning("job %s no longer exists; ignoring its request", message.job_id)
        return "ignored"
    video = videos.get(job.video_id)
    if video is None:
        _fail_job(jobs, videos, job, "video_missing", "the video was deleted before the job started")
        return "failed"
    if job.status == JobStatus.IN_PROGRESS:
        # A redelivered request: send what an interrupted earlier delivery may not have sent.
        return f"already planned; dispatched {dispatch(jobs, work_queue, settings, job, video)}"
    if job.status != JobStatus.QUEUED:
        return "already finished"
    if refuse_over_limits(jobs, videos, settings, job, video):
        return "failed"
    options = ProcessOptions.from_dict(job.options)
    duration = (video.metadata or {}).get("duration_ms")
    if settings.segment_ms is not None and options.end_ms is None and duration is None:
        metadata = probe_container(store, video.id, video.s3_key) if store is not None else None
        if metadata is None:
            request = ProbeRequest(job_id=job.id, video_id=video.id, bucket=settings.bucket, video_key=video.s3_key)
            work_queue.send(request)
            return "probing"
        return "container index: " + _start_probed(videos, jobs, work_queue, settings, job, video, metadata)
    return start_segments(videos, jobs, work_queue, settings, job, video)


def start_segments(
    videos: VideoRepository,
    jobs: JobRepository,
    work_queue: MessageQueue,
    settings: Settings,
    job: Job,
    video: Video,
) -> str:
    """Store the job's segments, start it and send as many work items as the caps allow."""
    if refuse_over_limits(jobs, videos, settings, job, video):
        return "failed"
    options = ProcessOptions.from_dict(job.options)
    metadata = video.metadata or {}
    ranges = plan_segments(options, settings, metadata.get("duration_ms"))
    segments = [
        Segment(
            job_id=job.id,
            segment_index=index,
            start_ms=start,
            end_ms=end,
            status=SegmentStatus.PENDING,
            part_key=part_key(video.id, job.id, index),
            updated_at=now_ms(),
        )
        for index, (start, end) in enumerate(ranges)
    ]
    jobs.add_segments(job.id, segments)
    started = jobs.transition(
        job.id,
        from_statuses=(JobStatus.QUEUED,),
        to_status=JobStatus.IN_PROGRESS,
        segments_total=len(segments),
        frames_total=job_expected_frames(options, metadata),
        started_at=now_ms(),
    )
    if started:
        videos.set_status(video.id, VideoStatus.PROCESSING)
        telemetry.job_event(
            "job.started",
            "job %s started: %d segment(s)",
            job.id,
            len(segments),
            metric_name=telemetry.JOBS_STARTED,
            job_id=job.id,
            video_id=video.id,
            owner=job.owner,
        )
    sent = dispatch(jobs, work_queue, settings, replace(job, status=JobStatus.IN_PROGRESS), video)
    return f"planned {len(segments)} segment(s), dispatched {sent}"


def dispatch(
    jobs: JobRepository,
    work_queue: MessageQueue,
    settings: Settings,
    job: Job,
    video: Video,
    at_most: int | None = None,
) -> int:
    """Send work items for the job's waiting segments within the per-job and global caps (and
    `at_most`), so one huge video cannot take every worker (and the account's concurrency) from everyone else."""
    claimed = jobs.claim_within_caps(
        job.id, per_job=settings.max_in_flight_per_job, total=settings.max_in_flight, at_most=at_most
    )
    if not claimed:
        return 0
    options = ProcessOptions.from_dict(job.options)
    items = [
        WorkItem(
            job_id=job.id,
            video_id=video.id,
            segment=segment.segment_index,
            bucket=settings.bucket,
            video_key=video.s3_key,
            part_key=segment.part_key,
            options=options.with_range(segment.start_ms, segment.end_ms),
            warmup_ms=settings.warmup_ms if segment.segment_index else 0,
        )
        for segment in claimed
    ]
    try:
        work_queue.send_many(items)
    except Exception:
        for segment in claimed:  # unsent: let a later dispatch send them
            jobs.release_claim(job.id, segment.segment_index)
        raise
    return len(items)


def _dispatch_waiting(
    videos: VideoRepository, jobs: JobRepository, work_queue: MessageQueue, settings: Settings
) -> int:
    """Hand capacity that finished segments freed to the jobs waiting for it, round robin across
    owners: each round gives every waiting owner an equal share, to its first job in the
    repository's fair order that can take it, so a flood of one owner's jobs cannot starve another's.
    Returns how many work items it sent."""
    total = 0
    waiting = jobs.jobs_waiting_for_dispatch()
    while waiting:
        free = settings.max_in_flight - jobs.in_flight()
        if free <= 0:
            return total
        share = max(1, free // len({owner for _, owner in waiting}))
        served: set[str | None] = set()
        keep: list[tuple[str, str | None]] = []
        for job_id, owner in waiting:
            if owner in served:
                keep.append((job_id, owner))
                continue
            job = jobs.get(job_id)
            video = videos.get(job.video_id) if job is not None else None
            sent = dispatch(jobs, work_queue, settings, job, video, at_most=share) if job and video else 0
            if sent:
                total += sent
                served.add(owner)
                keep.append((job_id, owner))  # it may take more in the next round
                free -= sent
                if free <= 0:
                    return total
            # Else it is at its own cap or has nothing left to send: the owner's next job is tried.
        if not served:
            return total
        waiting = keep
    return total


@dataclass(frozen=True)
class _EventContext:
    """What an event handler may touch."""

    videos: VideoRepository
    jobs: JobRepository
    store: ObjectStore
    work_queue: MessageQueue
    settings: Settings


def record_event(
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    work_queue: MessageQueue,
    settings: Settings,
    event: SegmentEvent,
) -> str:
    """The "events" consumer: a probe's answer (which starts the job), progress, segment success
    (merging the parts once all are in) or failure, each to its handler below. Every change is
    conditional, so a repeated event changes nothing twice."""
    job = jobs.get(event.job_id)
    if job is None:
        logger.warning("event for unknown job %s ignored", event.job_id)
        return "ignored"
    if job.status == JobStatus.CANCELLED:  # its segments were told to stop; what they still say changes nothing
        return "ignored: the job was cancelled"
    handler = _EVENT_HANDLERS[event.type]  # SegmentEvent accepts only these types
    return handler(_EventContext(videos, jobs, store, work_queue, settings), job, event)


def _on_probed(ctx: _EventContext, job: Job, event: SegmentEvent) -> str:
    video = ctx.videos.get(job.video_id)
    if video is None:
        _fail_job(ctx.jobs, ctx.videos, job, "video_missing", "the video was deleted before the job started")
        return "failed"
    return _start_probed(ctx.videos, ctx.jobs, ctx.work_queue, ctx.settings, job, video, event.video)


def _start_probed(
    videos: VideoRepository,
    jobs: JobRepository,
    work_queue: MessageQueue,
    settings: Settings,
    job: Job,
    video: Video,
    metadata: dict[str, Any] | None,
) -> str:
    """A probe's answer (a worker's, or the container index's): store the video's facts, check the
    limits on them and start the job's segments."""
    if metadata:
        videos.set_metadata(video.id, metadata)
        video = replace(video, metadata=metadata)
        problems = limit_problems(metadata, settings)
        if problems:
            _fail_job(jobs, videos, job, "limit_exceeded", "; ".join(problems))
            return "failed"
    if job.status == JobStatus.QUEUED:
        return start_segments(videos, jobs, work_queue, settings, job, video)
    return "already planned"


def _on_progress(ctx: _EventContext, job: Job, event: SegmentEvent) -> str:
    ctx.jobs.record_progress(job.id, event.segment, event.frames_processed)
    expected = event.extra.get("frames_expected")
    if isinstance(expected, int) and job.frames_total is None and job.segments_total == 1:
        ctx.jobs.transition(job.id, from_statuses=(job.status,), to_status=job.status, frames_total=expected)
    return "progress"


def _on_segment_failed(ctx: _EventContext, job: Job, event: SegmentEvent) -> str:
    ctx.jobs.fail_segment(job.id, event.segment, error=event.error or "failed")
    _fail_job(ctx.jobs, ctx.videos, job, event.error_code or "worker_error", f"segment {event.segment}: {event.error}")
    _dispatch_waiting(ctx.videos, ctx.jobs, ctx.work_queue, ctx.settings)
    return "failed"


def _on_segment_succeeded(ctx: _EventContext, job: Job, event: SegmentEvent) -> str:
    ctx.jobs.complete_segment(
        job.id, event.segment, frames_processed=event.frames_processed, frames_with_hands=event.frames_with_hands
    )
    telemetry.job_event(
        "segment.succeeded",
        "job %s segment %d of %d done: %s frames",
        job.id,
        event.segment,
        job.segments_total,
        event.frames_processed,
        metric_name=telemetry.SEGMENTS_SUCCEEDED,
        job_id=job.id,
        video_id=job.video_id,
        segment=event.segment,
        owner=job.owner,
    )
    # Checked even when this event was a repeat: a crash during an earlier merge must not strand the job.
    outcome = finish_if_complete(ctx.videos, ctx.jobs, ctx.store, job.id, ctx.work_queue, ctx.settings)
    _dispatch_waiting(ctx.videos, ctx.jobs, ctx.work_queue, ctx.settings)
    return outcome


def _on_artifacts_written(ctx: _EventContext, job: Job, event: SegmentEvent) -> str:
    return "artifacts written" if ctx.jobs.artifacts_written(job.id) else "artifacts already written"


_EVENT_HANDLERS: dict[str, Callable[[_EventContext, Job, SegmentEvent], str]] = {
    VIDEO_PROBED: _on_probed,
    SEGMENT_PROGRESS: _on_progress,
    SEGMENT_FAILED: _on_segment_failed,
    SEGMENT_SUCCEEDED: _on_segment_succeeded,
    ARTIFACTS_WRITTEN: _on_artifacts_written,
}


def refuse_over_limits(
    jobs: JobRepository, videos: VideoRepository, settings: Settings, job: Job, video: Video
) -> bool:
    """Fail the job (limit_exceeded, with every reason) when its plan is over a limit; True if so."""
    problems = plan_limit_problems(job, video, settings)
    if problems:
        _fail_job(jobs, videos, job, "limit_exceeded", "; ".join(problems))
    return bool(problems)


@dataclass
class SweepReport:
    """What one sweep did, by job id (a job may appear under more than one heading)."""

    failed: list[str] = field(default_factory=list)  # lost too often, or QUEUED for too long
    resent: list[str] = field(default_factory=list)  # segments whose work item was lost, sent again
    requested: list[str] = field(default_factory=list)  # QUEUED jobs whose request was sent again
    finished: list[str] = field(default_factory=list)  # all parts in, the job SUCCEEDED here
    artifacts: list[str] = field(default_factory=list)  # SUCCEEDED jobs whose artifacts were asked for again
    dispatched: int = 0  # work items sent for waiting segments


def sweep(  # noqa: C901 - the sweeper's four reconciliations, each a short loop
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    jobs_queue: MessageQueue,
    work_queue: MessageQueue,
    settings: Settings,
    now: int | None = None,
) -> SweepReport:
    """Put right what lost messages left undone, judging jobs by their segments' news. A segment
    sent to a worker and not heard of for `segment_silence_s` (its item was dropped, or ended in
    the DLQ after its receives without a `segment.failed`) is sent again, and after
    `max_dispatches` sends its job fails with the reason. A job whose parts are all in is finished,
    and a SUCCEEDED job whose artifacts were asked for that long ago and never written is asked for
    again (at most `max_dispatches` times in all); a QUEUED job whose request or probe went missing
    is requested again, and failed after `stuck_after_s`. Segments waiting for capacity are never a
    reason to fail: capacity this frees (or that ended jobs freed) goes to waiting jobs at once."""
    clock = now if now is not None else now_ms()
    silent_since = clock - settings.segment_silence_s * 1000
    report = SweepReport()
    for segment in jobs.silent_segments(since_ms=silent_since):
        job = jobs.get(segment.job_id)
        if job is None or segment.dispatched_at is None:
            continue
        if segment.dispatch_count >= settings.max_dispatches:
            reason = (
                f"segment {segment.segment_index} was sent to a worker {segment.dispatch_count} times and never "
                f"answered (each time {settings.work_max_receives} deliveries without a result: the worker "
                "crashed, ran out of memory or timed out); see the work queue's dead-letter queue"
            )
            if _fail_job(jobs, videos, job, "worker_lost", reason):
                report.failed.append(job.id)
        elif jobs.requeue_segment(job.id, segment.segment_index, dispatched_at=segment.dispatched_at):
            logger.warning("segment %s/%s was lost; sending it again", job.id, segment.segment_index)
            report.resent.append(job.id)
    for job_id in jobs.finished_unmerged(updated_before_ms=silent_since):
        try:
            if finish_if_complete(videos, jobs, store, job_id, work_queue, settings) == "succeeded":
                report.finished.append(job_id)
        except Exception:  # one job's merge must not keep the sweep from the others
            logger.exception("the sweeper could not merge job %s", job_id)
    for job_id in jobs.artifacts_unwritten(requested_before_ms=silent_since, max_requests=settings.max_dispatches):
        job = jobs.get(job_id)
        video = videos.get(job.video_id) if job is not None else None
        if job is not None and video is not None:
            logger.warning("the artifacts of job %s were never written; asking for them again", job_id)
            jobs.artifacts_requested(job_id)
            request_artifacts(work_queue, settings, job, video)
            report.artifacts.append(job_id)
    stuck_before = clock - settings.stuck_after_s * 1000
    for job in jobs.queued_before(created_before_ms=silent_since):
        if job.created_at < stuck_before:
            reason = (
                f"still QUEUED after {settings.stuck_after_s // 60} min: its request or its probe was lost or "
                "ended in a dead-letter queue; see the queues' DLQs and trigger the job again"
            )
            if _fail_job(jobs, videos, job, "stuck", reason):
                report.failed.append(job.id)
        elif job.updated_at < silent_since:
            # Planning is idempotent: a request that was not lost after all changes nothing.
            jobs_queue.send(JobRequested(job_id=job.id, video_id=job.video_id))
            jobs.transition(job.id, from_statuses=(JobStatus.QUEUED,), to_status=JobStatus.QUEUED)  # heard of now
            report.requested.append(job.id)
    report.dispatched = _dispatch_waiting(videos, jobs, work_queue, settings)
    return report


def finish_if_complete(
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    job_id: str,
    work_queue: MessageQueue,
    settings: Settings,
) -> str:
    """SUCCEED the job once all its parts are in, from the parts' heads (a few KB each): the summary
    is known then, and the frames are served from the parts. The merged result, insights, exports
    and pictures are written after, by a worker (RenderRequest), off the job's critical path; the
    request is recorded with the job's success, so the sweeper asks again should it be lost."""
    job = jobs.get(job_id)
    if job is None or job.status not in ACTIVE_JOB_STATUSES:
        return "already finished"
    segments = jobs.segments(job.id)
    if not segments or any(s.status != SegmentStatus.SUCCEEDED for s in segments):
        return "waiting for parts"
    try:
        head = merge_heads(_part_heads(store, job, segments))
    except MergeError as error:
        # Deterministic: the same parts would fail the same way on every redelivery of this event.
        _fail_job(jobs, videos, job, "merge_error", f"the segments' results do not form one video: {error}")
        return "failed"
    key = result_key(job.video_id, job.id)
    summary = dict(head["summary"], stats=head["stats"], decode=head["decode"])
    with JobAndVideo(videos, jobs, job.video_id) as video:  # one unit of work: both change, or neither
        changed = jobs.transition(
            job.id,
            from_statuses=ACTIVE_JOB_STATUSES,
            to_status=JobStatus.SUCCEEDED,
            result_key=key,
            summary=summary,
            video_metadata=head["video"],
            frames_total=head["summary"]["frames_processed"],
            finished_at=now_ms(),
        )
        if changed:
            videos.set_metadata(job.video_id, head["video"])
            videos.set_status(job.video_id, VideoStatus.PROCESSED)
            jobs.artifacts_requested(job.id)
            announce_job_end(jobs, job.id)
    if changed:
        telemetry.job_event(
            "job.succeeded",
            "job %s succeeded: %s frames, %s with hands",
            job.id,
            head["summary"]["frames_processed"],
            head["stats"].get("frames_with_hands"),
            metric_name=telemetry.JOBS_SUCCEEDED,
            job_id=job.id,
            video_id=job.video_id,
            owner=job.owner,
        )
        if video is not None:
            request_artifacts(work_queue, settings, replace(job, result_key=key, segments_total=len(segments)), video)
    return "succeeded"


def request_artifacts(work_queue: MessageQueue, settings: Settings, job: Job, video: Video) -> None:
    """Ask a worker to write a SUCCEEDED job's artifacts: merge its parts into the result, then
    insights, exports and pictures (each step idempotent, so asking twice is harmless)."""
    assert job.result_key is not None
    work_queue.send(
        RenderRequest(
            job_id=job.id,
            video_id=job.video_id,
            bucket=settings.bucket,
            video_key=video.s3_key,
            result_key=job.result_key,
            annotated_video=bool(job.options.get("annotated_video")),
            segments=job.segments_total,
        )
    )


def _part_heads(store: ObjectStore, job: Job, segments: Sequence[Segment]) -> list[dict[str, Any]]:
    """Every part's head, read in parallel (tens of small GETs); a part written before heads were
    (an older worker) is read whole instead."""

    def head_of(segment: Segment) -> dict[str, Any]:
        try:
            key = part_head_key(job.video_id, job.id, segment.segment_index)
            head: dict[str, Any] = json.loads(store.get_bytes(key))
            return head
        except ObjectMissing:
            return part_head(store.get_result(segment.part_key))

    with ThreadPoolExecutor(max_workers=min(16, len(segments))) as pool:
        return list(pool.map(head_of, segments))


def _fail_job(jobs: JobRepository, videos: VideoRepository, job: Job, code: str, reason: str) -> bool:
    """Fail the job unless it has already finished; True when this call failed it. The job and its
    video change in one unit of work (domain.ports.JobAndVideo: video first, the lock order), and the
    job's dispatch slots are free from that moment: `in_flight` counts only active jobs' segments."""
    with JobAndVideo(videos, jobs, job.video_id):
        if not jobs.transition(
            job.id,
            from_statuses=ACTIVE_JOB_STATUSES,
            to_status=JobStatus.FAILED,
            error=reason,
            error_code=code,
            finished_at=now_ms(),
        ):
            return False
        videos.set_status(job.video_id, VideoStatus.FAILED)
        announce_job_end(jobs, job.id)
    telemetry.job_event(
        "job.failed",
        "job %s failed (%s): %s",
        job.id,
        code,
        reason,
        metric_name=telemetry.JOBS_FAILED,
        job_id=job.id,
        video_id=job.video_id,
        owner=job.owner,
        error_code=code,
    )
    return True
