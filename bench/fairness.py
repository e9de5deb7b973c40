"""Fairness between owners under a flood: one owner queues many long jobs, another a few, and a
simulated worker pool frees one slot per completion; how many completions until each of the quiet
owner's jobs gets its first segment on a worker. Run through `bench/load.py --fairness`."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common import exit_status, print_result

from chalicelib.adapters.database import Database
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.migrations import upgrade
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.service.jobs import create_job
from chalicelib.service.orchestration import plan_job, record_event
from chalicelib.service.videos import incoming_prefix, register_video
from chalicelib.shared.contracts import SEGMENT_FAILED, SEGMENT_SUCCEEDED, JobRequested, SegmentEvent, WorkItem
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.storage import ObjectStore


class ListQueue:
    """The two SQS calls MessageQueue makes, into a list: the simulated workers take from it in
    order, so a run is deterministic (SQS's order and visibility do not matter to dispatch)."""

    def __init__(self) -> None:
        self.bodies: deque[str] = deque()

    def send_message(self, QueueUrl: str, MessageBody: str) -> dict[str, str]:  # noqa: N803 (boto3's names)
        self.bodies.append(MessageBody)
        return {"MessageId": str(len(self.bodies))}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:  # noqa: N803
        self.bodies.extend(entry["MessageBody"] for entry in Entries)
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries], "Failed": []}


@dataclass
class Outcome:
    waits: dict[str, list[int]] = field(default_factory=dict)  # owner -> completions from plan to first dispatch
    completions: int = 0
    dispatch_ms: list[float] = field(default_factory=list)  # record_event (complete + fair dispatch) per completion


def run(
    *,
    db_url: str | None,
    flood_jobs: int,
    quiet_jobs: int,
    segments: int,
    capacity: int,
    log: Any,
) -> Outcome:
    from handpipe.local.aws import MotoServer, aws_clients

    with tempfile.TemporaryDirectory(prefix="handpipe-fair-") as tmp, MotoServer() as moto:
        s3, _ = aws_clients(moto.endpoint_url)
        bucket = f"fair-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        db = Database.from_url(db_url or f"sqlite:///{Path(tmp) / 'fair.db'}")
        upgrade(db)
        work, jobs_sqs = ListQueue(), ListQueue()
        settings = replace(
            Settings(bucket=bucket, jobs_queue_url="jobs", work_queue_url="work", db_url="injected"),
            segment_ms=1000,
            max_in_flight=capacity,
            max_in_flight_per_job=capacity,
        )
        videos, jobs, store = VideoRepository(db), JobRepository(db), ObjectStore(s3, bucket)
        work_queue, jobs_queue = MessageQueue(work, "work"), MessageQueue(jobs_sqs, "jobs")
        outcome = Outcome()
        planned_at: dict[str, int] = {}
        owner_of: dict[str, str] = {}
        started: set[str] = set()

        def submit(owner: str) -> None:
            key = f"{incoming_prefix(owner)}{uuid.uuid4().hex}.mp4"
            s3.put_object(Bucket=bucket, Key=key, Body=b"a video", ContentType="video/mp4")
            video = register_video(videos, store, settings, {"s3_key": key}, owner=owner)
            body = {"options": {"end_ms": segments * 1000}}  # a known end: planned without a probe
            job, _ = create_job(videos, jobs, store, jobs_queue, settings, video["id"], body, owner=owner)
            plan_job(videos, jobs, work_queue, settings, JobRequested.from_json(jobs_sqs.bodies.popleft()))
            planned_at[job["id"]], owner_of[job["id"]] = outcome.completions, owner

        def note_dispatched() -> None:
            for body in list(work.bodies)[len(running_seen) :]:
                running_seen.append(body)
                item = WorkItem.from_json(body)
                if item.job_id not in started:
                    started.add(item.job_id)
                    wait = outcome.completions - planned_at[item.job_id]
                    outcome.waits.setdefault(owner_of[item.job_id], []).append(wait)

        running_seen: list[str] = []
        log(f"flood: {flood_jobs} jobs of {segments} segments; then quiet: {quiet_jobs}; {capacity} worker slots")
        for _ in range(flood_jobs):
            submit("flood")
        note_dispatched()
        for _ in range(quiet_jobs):
            submit("quiet")
        note_dispatched()
        # The workers: one completion at a time, oldest work item first, until every quiet job has started.
        quiet_ids = {job_id for job_id, owner in owner_of.items() if owner == "quiet"}
        while not quiet_ids <= started and work.bodies:
            item = WorkItem.from_json(work.bodies.popleft())
            running_seen.pop(0)
            last = item.segment == segments - 1
            # A job's last segment is reported failed, so the bench needs no result parts to merge:
            # the job ends and frees its slots all the same.
            event = SegmentEvent(
                type=SEGMENT_FAILED if last else SEGMENT_SUCCEEDED,
                job_id=item.job_id,
                video_id=item.video_id,
                segment=item.segment,
                part_key=item.part_key,
                error="bench: end of a simulated job" if last else None,
            )
            outcome.completions += 1
            began = time.perf_counter()
            record_event(videos, jobs, store, work_queue, settings, event)
            outcome.dispatch_ms.append((time.perf_counter() - began) * 1000)
            note_dispatched()
        db.close()
        if not quiet_ids <= started:
            print(f"FAIL: {len(quiet_ids - started)} quiet job(s) never started", file=sys.stderr)
        return outcome


def main(args: Any, log: Any) -> int:
    outcome = run(
        db_url=args.db_url,
        flood_jobs=args.flood_jobs,
        quiet_jobs=args.quiet_jobs,
        segments=args.segments,
        capacity=args.capacity,
        log=log,
    )
    quiet = outcome.waits.get("quiet", [])
    # The bound: round robin gives the quiet owner every other freed slot, and its own jobs go in
    # order, so its k-th job (k from 1) starts within 2*(k-1)*segments + 2 completions, whatever the
    # flood's size. Oldest-first would make its first job wait for nearly the whole flood.
    bound = 2 * (len(quiet) - 1) * args.segments + 2 if quiet else 0
    first = quiet[0] if quiet else -1
    flood_total = args.flood_jobs * args.segments
    print(f"quiet owner's jobs started after {quiet} completions (bound {bound}; the flood holds {flood_total})")
    p50 = statistics.median(outcome.dispatch_ms) if outcome.dispatch_ms else 0.0
    worst = max(outcome.dispatch_ms, default=0.0)
    print(f"per completion (record + fair dispatch): p50 {p50:.1f} ms, max {worst:.1f} ms, {args.db_url or 'SQLite'}")
    ok = bool(quiet) and len(quiet) == args.quiet_jobs and max(quiet) <= bound
    print_result(
        {
            "fairness_quiet_first_start": first,
            "fairness_quiet_last_start": max(quiet, default=-1),
            "fairness_bound": bound,
            "flood_segments": flood_total,
            "completions": outcome.completions,
            "dispatch_p50_ms": f"{p50:.1f}",
            "within_bound": str(ok).lower(),
        }
    )
    return exit_status([] if ok else [f"the quiet owner's jobs waited {quiet} completions, over the bound {bound}"])
