"""Faults injected on purpose (a dropped or dead-lettered work item, a worker killed with SIGKILL, a
DELETE racing a POST, a 0-byte object, a poison record in a batch), each asserting that nothing
accepted is lost and every job ends. The service-level tests run on SQLite and on MariaDB (the
contract suite's fixtures) with moto S3 and SQS on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from handpipe_worker.heartbeat import Heartbeat

from chalicelib.adapters.database import Database
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job, Video
from chalicelib.runtime import runtime
from chalicelib.service import jobs as jobs_module
from chalicelib.service import orchestration as orchestration_module
from chalicelib.service.common import new_id, now_ms
from chalicelib.service.errors import Conflict, NotFound
from chalicelib.service.orchestration import SweepReport, dispatch, plan_job, record_event
from chalicelib.service.videos import delete_video
from chalicelib.shared.contracts import SEGMENT_FAILED, SEGMENT_PROGRESS, SegmentEvent, WorkItem, video_key
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.storage import ObjectStore
from handpipe.local.aws import aws_clients, provision, queue_arn
from handpipe.local.resume import resume
from tests.support.api import Env, register
from tests.support.databases import Store
from tests.support.paths import REPO, data_path
from tests.support.waiting import wait_for

HOUR_MS = 3600 * 1000


# ---------------------------------------------------------------------------------------------
# A world of real repositories, moto S3 and SQS
# ---------------------------------------------------------------------------------------------


@dataclass
class World:
    db: Database
    videos: VideoRepository
    jobs: JobRepository
    store: ObjectStore
    jobs_queue: MessageQueue
    work_queue: MessageQueue
    settings: Settings
    s3: Any
    sqs: Any
    urls: dict[str, str]

    def on(self, db: Database) -> World:
        """The same world through another connection (another Lambda container)."""
        return replace(self, db=db, videos=VideoRepository(db), jobs=JobRepository(db))

    def take(self, role: str) -> list[str]:
        bodies: list[str] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.urls[role], MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                return bodies
            for message in got:
                bodies.append(message["Body"])
                self.sqs.delete_message(QueueUrl=self.urls[role], ReceiptHandle=message["ReceiptHandle"])

    def video(self, duration_ms: int = 30_000) -> Video:
        video_id = new_id("vid")
        key = video_key(video_id, "clip.mp4")
        self.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=b"not decoded in these tests")
        now = now_ms()
        video = Video(
            id=video_id,
            title="clip",
            filename="clip.mp4",
            content_type="video/mp4",
            s3_key=key,
            status="UPLOADED",
            created_at=now,
            updated_at=now,
            size_bytes=26,
            metadata={"duration_ms": duration_ms, "fps": 30},
        )
        self.videos.add(video)
        return video

    def create_job(self, video: Video, body: dict[str, Any] | None = None) -> str:
        view, created = jobs_module.create_job(
            self.videos, self.jobs, self.store, self.jobs_queue, self.settings, video.id, body or {}
        )
        assert created
        return str(view["id"])

    def start(self, video: Video) -> Job:
        """A job planned into segments, as the "jobs" consumer plans it."""
        job_id = self.create_job(video)
        [request] = [b for b in self.take("jobs") if json.loads(b)["job_id"] == job_id]
        from chalicelib.shared.contracts import JobRequested

        plan_job(self.videos, self.jobs, self.work_queue, self.settings, JobRequested.from_json(request))
        return self.job(job_id)

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        assert job is not None
        return job

    def event(self, event: SegmentEvent) -> str:
        return record_event(self.videos, self.jobs, self.store, self.work_queue, self.settings, event)

    def sweep(self, now: int | None = None) -> SweepReport:
        return orchestration_module.sweep(
            self.videos, self.jobs, self.store, self.jobs_queue, self.work_queue, self.settings, now=now
        )


@pytest.fixture
def world(store: Store, moto_endpoint: str) -> World:
    s3, sqs = aws_clients(moto_endpoint)
    prefix = f"f{uuid.uuid4().hex[:8]}"
    resources = provision(s3, sqs, bucket=f"{prefix}-bucket", prefix=prefix, max_receives=2)
    settings = Settings(
        bucket=resources.bucket,
        jobs_queue_url=resources.queue_urls["jobs"],
        work_queue_url=resources.queue_urls["work"],
        db_url="unused: the database is injected",
        segment_ms=10_000,
        max_in_flight=2,
        max_in_flight_per_job=2,
        max_active_jobs_per_video=100,
    )
    return World(
        db=store.db,
        videos=VideoRepository(store.db),
        jobs=JobRepository(store.db),
        store=ObjectStore(s3, resources.bucket),
        jobs_queue=MessageQueue(sqs, resources.queue_urls["jobs"]),
        work_queue=MessageQueue(sqs, resources.queue_urls["work"]),
        settings=settings,
        s3=s3,
        sqs=sqs,
        urls=dict(resources.queue_urls),
    )


def items(bodies: list[str]) -> list[WorkItem]:
    return [WorkItem.from_json(body) for body in bodies]


def failed_event(item: WorkItem, error: str = "the video cannot be decoded") -> SegmentEvent:
    return SegmentEvent(
        type=SEGMENT_FAILED, job_id=item.job_id, video_id=item.video_id, segment=item.segment, error=error
    )


# ---------------------------------------------------------------------------------------------
# Capacity
# ---------------------------------------------------------------------------------------------


def test_a_job_that_ends_gives_its_slots_back_and_waiting_jobs_get_them_at_once(world: World) -> None:
    """Two jobs of 3 segments under a cap of 2: the first takes both slots, the second waits. When the
    first fails, its slots (including a work item still out, which will never report) are free at once
    and the second job is sent them."""
    first = world.start(world.video())
    second = world.start(world.video())
    sent = items(world.take("work"))
    assert [(i.job_id, i.segment) for i in sent] == [(first.id, 0), (first.id, 1)]
    assert world.jobs.in_flight() == 2
    world.event(failed_event(sent[0]))  # segment 1's item is still out: it must not keep its slot
    assert world.job(first.id).status == "FAILED"
    assert world.jobs.in_flight(first.id) == 0
    assert [(i.job_id, i.segment) for i in items(world.take("work"))] == [(second.id, 0), (second.id, 1)]
    assert world.jobs.in_flight() == 2
    # The ended job's segments are never sent, even when asked.
    assert world.jobs.claim_for_dispatch(first.id, 10) == []


def test_concurrent_dispatchers_never_exceed_the_caps(world: World, store: Store) -> None:
    """Six containers dispatch six jobs at once, each from its own connection: together they send no more
    than the global cap, and nothing twice."""
    settings = replace(world.settings, max_in_flight=5, max_in_flight_per_job=3)
    started = [world.start(world.video(duration_ms=60_000)) for _ in range(6)]  # 6 segments each
    world.take("work")
    for job in started:  # back to waiting, as if each job's first dispatch had not happened yet
        for segment in world.jobs.segments(job.id):
            world.jobs.release_claim(job.id, segment.segment_index)
    assert world.jobs.in_flight() == 0
    containers = [world.on(store.open()) for _ in started]
    gate = threading.Barrier(len(started))
    errors: list[BaseException] = []

    def run(container: World, job: Job) -> None:
        gate.wait()
        try:
            video = container.videos.get(job.video_id)
            assert video is not None
            dispatch(container.jobs, container.work_queue, settings, job, video)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(containers, started, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    sent = [(i.job_id, i.segment) for i in items(world.take("work"))]
    assert len(sent) == len(set(sent)) == world.jobs.in_flight() == 5
    assert all(world.jobs.in_flight(job.id) <= 3 for job in started)


def test_the_sweeper_hands_freed_capacity_to_waiting_jobs(world: World) -> None:
    """A job ended without an event (as a cancellation or a crash between two steps would) frees its
    slots; the sweeper dispatches the waiting job without waiting for another job's event."""
    first = world.start(world.video())
    second = world.start(world.video())
    world.take("work")
    assert world.jobs.transition(first.id, from_statuses=("IN_PROGRESS",), to_status="FAILED", error="x")
    assert world.take("work") == []  # nothing happens by itself
    report = world.sweep()
    assert report.dispatched == 2 and report.failed == []
    assert [(i.job_id, i.segment) for i in items(world.take("work"))] == [(second.id, 0), (second.id, 1)]


def test_the_sweeper_never_fails_a_job_waiting_for_capacity(world: World) -> None:
    """Hours later, the job that has all the slots has its silent segments sent again; the job that waits
    its turn is left alone, however old its updated_at."""
    busy = world.start(world.video())
    waiting = world.start(world.video())
    world.take("work")
    report = world.sweep(now=now_ms() + 3 * HOUR_MS)
    assert report.failed == [] and waiting.id not in report.resent
    assert world.job(waiting.id).status == "IN_PROGRESS" and world.job(busy.id).status == "IN_PROGRESS"
    assert sorted(report.resent) == [busy.id, busy.id]


def test_a_dropped_work_item_is_sent_again_and_a_segment_lost_too_often_fails_its_job(world: World) -> None:
    job = world.start(world.video(duration_ms=5_000))
    [item] = items(world.take("work"))  # and dropped: no worker will ever see it
    assert world.sweep().resent == []  # not yet silent for long
    later = now_ms() + (world.settings.segment_silence_s + 1) * 1000
    report = world.sweep(now=later)
    assert report.resent == [job.id] and report.dispatched == 1
    [again] = items(world.take("work"))
    assert (again.job_id, again.segment) == (item.job_id, item.segment)
    assert world.jobs.segments(job.id)[0].dispatch_count == 2
    # Lost a second time (max_dispatches is 2): the job fails with the reason, and frees its slot.
    report = world.sweep(now=later + (world.settings.segment_silence_s + 1) * 1000)
    assert report.failed == [job.id]
    failed = world.job(job.id)
    assert failed.status == "FAILED" and failed.error_code == "worker_lost"
    assert "sent to a worker 2 times" in (failed.error or "") and "dead-letter" in (failed.error or "")
    assert world.jobs.in_flight() == 0
    assert world.take("work") == []


def test_progress_keeps_a_segment_from_being_judged_lost(world: World) -> None:
    """A retried segment counts up from 0 again, below what its first attempt reported; that is still
    news that a worker is on it."""
    job = world.start(world.video(duration_ms=5_000))
    [item] = items(world.take("work"))
    progress = SegmentEvent(type=SEGMENT_PROGRESS, job_id=job.id, video_id=item.video_id, segment=0)
    world.event(replace(progress, frames_processed=50))
    time.sleep(0.01)
    world.event(replace(progress, frames_processed=10))  # the retry
    [segment] = world.jobs.segments(job.id)
    assert segment.frames_processed == 50
    assert segment.dispatched_at is not None and segment.updated_at > segment.dispatched_at
    assert world.jobs.silent_segments(since_ms=segment.updated_at) == []
    assert [s.segment_index for s in world.jobs.silent_segments(since_ms=segment.updated_at + 1)] == [0]


def test_after_the_queues_are_lost_every_active_job_carries_on_from_the_database(world: World) -> None:
    """What the local stack does when it comes back with empty queues (handpipe.local.resume, on SQLite and
    MariaDB): nothing in flight is counted as lost, QUEUED jobs are requested again, and sent segments
    are sent again."""
    running = world.start(world.video(duration_ms=5_000))
    queued_id = world.create_job(world.video())
    done = world.start(world.video(duration_ms=5_000))
    world.take("work")
    world.take("jobs")  # the restart: every message is gone
    assert world.jobs.transition(done.id, from_statuses=("IN_PROGRESS",), to_status="SUCCEEDED")
    report = resume(world.videos, world.jobs, world.store, world.jobs_queue, world.work_queue, world.settings)
    assert report.requested == [queued_id] and report.redispatched == [running.id] and report.failed == []
    assert [json.loads(b)["job_id"] for b in world.take("jobs")] == [queued_id]
    assert [(i.job_id, i.segment) for i in items(world.take("work"))] == [(running.id, 0)]
    assert world.jobs.segments(running.id)[0].dispatch_count == 1


# ---------------------------------------------------------------------------------------------
# Deletion racing creation
# ---------------------------------------------------------------------------------------------


def _race(world: World, create: World, delete: World, rounds: int) -> dict[str, int]:
    outcomes = {"created": 0, "deleted": 0}
    for n in range(rounds):
        # The POST reads the video and S3 before its transaction: the DELETE starts a little later,
        # by a different amount each round, so that either may reach the database first.
        outcomes[_race_once(world, create, delete, delay_s=(n % 10) * 0.004)] += 1
    return outcomes


def _race_once(world: World, create: World, delete: World, delay_s: float) -> str:
    """One POST and one DELETE released at once from two threads; which one won."""
    video = world.video()
    gate = threading.Barrier(2)
    created: list[str] = []
    deleted: list[bool] = []
    errors: list[BaseException] = []

    def post() -> None:
        gate.wait()
        try:
            created.append(create.create_job(video))
        except (Conflict, NotFound):
            pass
        except BaseException as error:
            errors.append(error)

    def remove() -> None:
        gate.wait()
        time.sleep(delay_s)
        try:
            delete_video(delete.videos, delete.jobs, delete.store, video.id)
            deleted.append(True)
        except Conflict:
            deleted.append(False)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=post), threading.Thread(target=remove)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert deleted, "the DELETE did not answer"
    if created:
        # Answered 202: the DELETE must have been refused, and the job is there and can end.
        assert deleted == [False], "a job answered 202 was deleted with its video"
        [job_id] = created
        job = world.job(job_id)
        world.event(SegmentEvent(type=SEGMENT_FAILED, job_id=job.id, video_id=video.id, segment=0, error="ended here"))
        assert world.job(job_id).status == "FAILED"
        return "created"
    else:
        assert deleted == [True]
        assert world.videos.get(video.id) is None
        with pytest.raises(NotFound):  # a second DELETE of a deleted video
            delete_video(world.videos, world.jobs, world.store, video.id)
        return "deleted"


def test_a_job_answered_202_is_never_deleted_by_a_racing_delete(world: World, store: Store) -> None:
    """POST /videos/{id}/jobs and DELETE /videos/{id} at once, from two connections, many rounds."""
    outcomes = _race(world, world.on(store.open()), world.on(store.open()), rounds=40)
    assert sum(outcomes.values()) == 40
    requested = {json.loads(body)["job_id"] for body in world.take("jobs")}
    assert len(requested) == outcomes["created"]  # every created job was queued, none was taken back


def test_a_video_being_deleted_takes_no_job_and_a_deleted_one_is_404(world: World) -> None:
    video = world.video()
    assert world.videos.begin_delete(video.id) == 0
    assert world.videos.get(video.id).status == "DELETING"  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="being deleted"):
        world.create_job(video)
    # A deletion cut short (objects gone, rows not) is finished by the next DELETE.
    assert delete_video(world.videos, world.jobs, world.store, video.id)["deleted"] == video.id
    with pytest.raises(NotFound):
        delete_video(world.videos, world.jobs, world.store, video.id)
    busy = world.video()
    world.create_job(busy)
    assert world.videos.begin_delete(busy.id) == 1
    assert world.videos.get(busy.id).status == "UPLOADED"  # type: ignore[union-attr]
    assert world.videos.begin_delete("vid_" + "0" * 32) is None


# ---------------------------------------------------------------------------------------------
# Through the app, with the real worker (SQLite)
# ---------------------------------------------------------------------------------------------


def _sweep_at(now: int) -> SweepReport:
    rt = runtime()
    return orchestration_module.sweep(rt.videos, rt.jobs, rt.store, rt.jobs_queue, rt.work_queue, rt.settings, now=now)


def test_a_dead_lettered_work_item_is_sent_again_and_the_job_succeeds(env: Env) -> None:
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    env.deliver("jobs", env.take("jobs"))
    assert env.run_worker() == 1  # the probe
    env.deliver("events", env.take("events"))
    # Every delivery of the segment's item dies without a word (max receives is 2 here): SQS moves it
    # to the dead-letter queue and no segment.failed ever comes.
    for _ in range(3):
        env.sqs.receive_message(QueueUrl=env.queues["work"], VisibilityTimeout=0, WaitTimeSeconds=1)
    dead = env.sqs.receive_message(QueueUrl=env.dlqs["work"], WaitTimeSeconds=1).get("Messages", [])
    assert len(dead) == 1 and env.take("work") == []
    assert env.call("GET", f"/jobs/{job['id']}")[1]["status"] == "IN_PROGRESS"
    report = _sweep_at(now_ms() + (runtime().settings.segment_silence_s + 1) * 1000)
    assert report.resent == [job["id"]] and report.dispatched == 1
    while env.run_worker():
        env.deliver("events", env.take("events"))
    finished = env.call("GET", f"/jobs/{job['id']}")[1]
    assert finished["status"] == "SUCCEEDED" and finished["progress"]["frames_done"] > 0


def test_a_lost_merge_is_done_by_the_sweeper(env: Env) -> None:
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    env.deliver("jobs", env.take("jobs"))
    env.run_worker()
    env.deliver("events", env.take("events"))
    env.run_worker()  # the segment: its part is written, its success event is lost after being recorded
    [success] = [SegmentEvent.from_json(b) for b in env.take("events") if "segment.succeeded" in b]
    rt = runtime()
    rt.jobs.complete_segment(job["id"], success.segment, frames_processed=success.frames_processed, frames_with_hands=0)
    assert env.call("GET", f"/jobs/{job['id']}")[1]["status"] == "IN_PROGRESS"
    report = _sweep_at(now_ms() + (rt.settings.segment_silence_s + 1) * 1000)
    assert report.finished == [job["id"]]
    assert env.call("GET", f"/jobs/{job['id']}")[1]["status"] == "SUCCEEDED"


def test_registering_an_empty_object_is_refused(env: Env) -> None:
    env.s3.put_object(Bucket=env.bucket, Key="incoming/tester/empty.mp4", Body=b"")
    status, error = env.call("POST", "/videos", {"s3_key": "incoming/tester/empty.mp4"})
    assert status == 400 and "empty (0 bytes)" in error["message"]
    status, listed = env.call("GET", "/videos")
    assert listed["videos"] == []


def _lambda_records(app_env: Env, role: str, count: int) -> list[dict[str, Any]]:
    """Messages received from the real queue, as Lambda's event source hands them over."""
    arn = queue_arn(app_env.sqs, app_env.queues[role])
    records: list[dict[str, Any]] = []
    for _ in range(20):
        got = app_env.sqs.receive_message(QueueUrl=app_env.queues[role], MaxNumberOfMessages=10, AttributeNames=["All"])
        for message in got.get("Messages", []):
            records.append(
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": message.get("Attributes", {}),
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": "us-east-1",
                }
            )
        if len(records) >= count:
            break
    assert len(records) == count
    return records


def test_one_bad_record_does_not_replay_or_dead_letter_its_batch_mates(env: Env) -> None:
    """A batch holding a real job's video.probed and a malformed record: the valid one is applied once
    and deleted; only the malformed one comes back, and it ends in the dead-letter queue alone."""
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    env.deliver("jobs", env.take("jobs"))
    env.run_worker()  # the probe: its video.probed is now on the events queue
    env.sqs.send_message(QueueUrl=env.queues["events"], MessageBody='{"version": 1, "type": "garbage"}')
    batch = _lambda_records(env, "events", 2)
    with pytest.raises(RuntimeError, match="1 worker event"):
        env.client.lambda_.invoke("record_events", {"Records": batch})
    assert env.call("GET", f"/jobs/{job['id']}")[1]["status"] == "IN_PROGRESS"  # the probe was applied
    assert runtime().jobs.in_flight(job["id"]) == 1  # its segment was sent, once
    # Only the bad record comes back; after max receives (2 here) it goes to the dead-letter queue alone.
    [bad] = [r for r in batch if "garbage" in r["body"]]
    env.sqs.change_message_visibility(
        QueueUrl=env.queues["events"], ReceiptHandle=bad["receiptHandle"], VisibilityTimeout=0
    )
    [again] = _lambda_records(env, "events", 1)
    assert again["messageId"] == bad["messageId"]
    with pytest.raises(RuntimeError, match="1 worker event"):
        env.client.lambda_.invoke("record_events", {"Records": [again]})
    env.sqs.change_message_visibility(
        QueueUrl=env.queues["events"], ReceiptHandle=again["receiptHandle"], VisibilityTimeout=0
    )
    assert env.sqs.receive_message(QueueUrl=env.queues["events"], WaitTimeSeconds=1).get("Messages", []) == []
    dead = env.sqs.receive_message(QueueUrl=env.dlqs["events"], MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert [m["Body"] for m in dead.get("Messages", [])] == ['{"version": 1, "type": "garbage"}']
    # The job goes on to the end.
    while env.run_worker():
        env.deliver("events", env.take("events"))
    assert env.call("GET", f"/jobs/{job['id']}")[1]["status"] == "SUCCEEDED"


# ---------------------------------------------------------------------------------------------
# Worker deaths
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def queues(moto_endpoint: str) -> Iterator[tuple[Any, Any, str, str, str]]:
    s3, sqs = aws_clients(moto_endpoint)
    name = f"hb{uuid.uuid4().hex[:8]}"
    # The queue's own visibility is long, as Lambda requires (at least the worker's timeout).
    work = sqs.create_queue(QueueName=f"{name}-work", Attributes={"VisibilityTimeout": "600"})["QueueUrl"]
    events = sqs.create_queue(QueueName=f"{name}-events")["QueueUrl"]
    bucket = f"{name}-bucket"
    s3.create_bucket(Bucket=bucket)
    yield s3, sqs, work, events, bucket


def test_the_heartbeat_keeps_a_running_item_and_lets_a_dead_ones_go(queues: tuple[Any, ...]) -> None:
    _, sqs, work, _, _ = queues
    sqs.set_queue_attributes(QueueUrl=work, Attributes={"VisibilityTimeout": "4"})
    sqs.send_message(QueueUrl=work, MessageBody="item")
    [message] = sqs.receive_message(QueueUrl=work, WaitTimeSeconds=1)["Messages"]
    record = {"receiptHandle": message["ReceiptHandle"], "eventSourceARN": queue_arn(sqs, work)}
    heartbeat = Heartbeat(sqs, visibility_s=120)
    with heartbeat.beating(record):
        assert heartbeat.visibility_for(work) == 4  # never longer than the queue's own
        # Well past the queue's visibility, the item is still ours.
        wait_for(lambda: heartbeat.beats >= 5, "five beats", 30, poll_s=0.2)
        assert sqs.receive_message(QueueUrl=work, WaitTimeSeconds=0).get("Messages", []) == []
    # The beats have stopped, as they stop when a worker dies: the item comes back.
    # each check long-polls for 1 s, so 30 checks are about 30 s
    back = wait_for(lambda: sqs.receive_message(QueueUrl=work, WaitTimeSeconds=1).get("Messages"), "the item", 30, 1.0)
    assert back[0]["Body"] == "item"


_KILLED_WORKER = """
import json, sys
from handpipe_worker.handler import Worker, WorkerSettings
from handpipe.local.aws import aws_clients, queue_arn
endpoint, work, events = sys.argv[1:4]
s3, sqs = aws_clients(endpoint)
worker = Worker(s3, sqs, WorkerSettings(events_queue_url=events, progress_interval_s=0.2, visibility_s=3))
[m] = sqs.receive_message(QueueUrl=work, WaitTimeSeconds=5, AttributeNames=["All"])["Messages"]
record = {"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
          "attributes": m["Attributes"], "eventSourceARN": queue_arn(sqs, work)}
print("received", flush=True)
worker.handle_record(record, None)
print("finished", flush=True)
"""


def test_a_worker_killed_mid_item_is_noticed_in_seconds_and_its_item_completes(
    queues: tuple[Any, ...], moto_endpoint: str
) -> None:
    """SIGKILL a worker process mid-segment. The queue's visibility is 600 s, yet the item is back within
    the heartbeat's 3 s, and the next worker finishes it."""
    from handpipe_worker.handler import Worker, WorkerSettings

    from chalicelib.shared.contracts import ProcessOptions, part_key

    s3, sqs, work, events, bucket = queues
    s3.upload_file(str(data_path("videos/no_hands_road.mp4")), bucket, "videos/road.mp4")
    job_id = new_id("job")
    video_id = new_id("vid")
    item = WorkItem(
        job_id=job_id,
        video_id=video_id,
        segment=0,
        bucket=bucket,
        video_key="videos/road.mp4",
        part_key=part_key(video_id, job_id, 0),
        options=ProcessOptions(),
    )
    MessageQueue(sqs, work).send(item)
    environment = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'worker_image'}", "AWS_DEFAULT_REGION": "us-east-1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WORKER, moto_endpoint, work, events],
        stdout=subprocess.PIPE,
        env=environment,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "received"

        def progressed() -> bool:
            got = sqs.receive_message(QueueUrl=events, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            return any(SEGMENT_PROGRESS in m["Body"] for m in got.get("Messages", []))

        wait_for(progressed, "the worker's first progress event", 120, poll_s=0.2)  # it is mid-item
        assert process.poll() is None, "the worker finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=item.part_key)["KeyCount"] == 0  # killed before the end
    back = wait_for(  # each check long-polls for 1 s: about 60 s in all
        lambda: sqs.receive_message(QueueUrl=work, WaitTimeSeconds=1, AttributeNames=["All"]).get("Messages"),
        "the killed worker's item (the queue alone would hold it 600 s)",
        60,
        1.0,
    )
    assert back[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    worker = Worker(s3, sqs, WorkerSettings(events_queue_url=events, visibility_s=3))
    record = {
        "messageId": back[0]["MessageId"],
        "receiptHandle": back[0]["ReceiptHandle"],
        "body": back[0]["Body"],
        "attributes": back[0]["Attributes"],
        "eventSourceARN": queue_arn(sqs, work),
    }
    assert worker.handle_record(record, None)
    assert worker.heartbeat.beats >= 1
    assert s3.list_objects_v2(Bucket=bucket, Prefix=item.part_key)["KeyCount"] == 1


def test_the_recovery_settings_come_from_the_environment() -> None:
    base = {
        "HANDPIPE_BUCKET": "b",
        "HANDPIPE_JOBS_QUEUE_URL": "j",
        "HANDPIPE_WORK_QUEUE_URL": "w",
        "HANDPIPE_DB_URL": "sqlite:///:memory:",
    }
    default = Settings.from_env(base)
    assert (default.work_visibility_s, default.work_max_receives, default.max_dispatches) == (120, 3, 2)
    assert default.segment_silence_s == 120 * 3 + 60
    tuned = Settings.from_env(
        {
            **base,
            "HANDPIPE_WORK_VISIBILITY_S": "10",
            "HANDPIPE_WORK_MAX_RECEIVES": "5",
            "HANDPIPE_SILENCE_MARGIN_S": "0",
            "HANDPIPE_MAX_DISPATCHES": "4",
        }
    )
    assert (tuned.segment_silence_s, tuned.max_dispatches) == (50, 4)


def test_the_routes_answer_409_while_deleting_and_404_once_deleted(env: Env) -> None:
    video = register(env)
    assert runtime().videos.begin_delete(video["id"]) == 0  # a DELETE that was cut short
    status, error = env.call("POST", f"/videos/{video['id']}/jobs", {})
    assert status == 409 and "being deleted" in error["message"]
    assert env.call("GET", f"/videos/{video['id']}")[1]["status"] == "DELETING"
    assert env.call("GET", "/videos?status=DELETING")[1]["videos"][0]["id"] == video["id"]
    assert env.call("DELETE", f"/videos/{video['id']}")[0] == 200  # finishes it
    status, error = env.call("DELETE", f"/videos/{video['id']}")
    assert status == 404 and error["code"]
    assert env.take("jobs") == []
