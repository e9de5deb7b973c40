"""A job SUCCEEDS as soon as its last part is in, with its summary; its merged result, insights, exports
and pictures are written after by a worker, and the routes say so meanwhile. A worker killed with SIGKILL
in that step is finished by the redelivery, a lost request by the sweeper. Real worker and engine, moto
S3 and SQS on loopback, the real database (SQLite and MariaDB)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from handpipe_worker.handler import Worker, WorkerSettings
from handpipe_worker.models import ModelCache

from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job, Video
from chalicelib.service import derived
from chalicelib.service import orchestration as orchestration_module
from chalicelib.service.common import new_id, now_ms
from chalicelib.service.errors import BeingWritten
from chalicelib.service.jobs import PartCache, job_frames, job_result
from chalicelib.service.orchestration import SweepReport, plan_job, record_event
from chalicelib.shared.contracts import (
    RENDER_REQUEST,
    JobRequested,
    SegmentEvent,
    insights_key,
    part_key,
    picture_key,
    video_key,
)
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.results import merge_parts
from chalicelib.shared.storage import ObjectStore
from chalicelib.web.errors import map_errors
from handpipe.local.aws import aws_clients, provision, queue_arn
from tests.support.databases import Store
from tests.support.paths import REPO, data_path
from tests.support.waiting import wait_for

CLIP = "videos/asl_thanks_two_hands.mkv"  # 51 frames, 1.7 s: two segments of 1 s
MODELS = ModelCache()


@dataclass
class World:
    videos: VideoRepository
    jobs: JobRepository
    store: ObjectStore
    work_queue: MessageQueue
    settings: Settings
    s3: Any
    sqs: Any
    urls: dict[str, str]
    endpoint: str

    def worker(self) -> Worker:
        return Worker(self.s3, self.sqs, WorkerSettings(events_queue_url=self.urls["events"], visibility_s=0), MODELS)

    def receive(self, role: str, wait_s: int = 0) -> list[dict[str, Any]]:
        """Every message now on the queue, as Lambda's records, received (and so hidden) but not deleted."""
        records: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=self.urls[role], MaxNumberOfMessages=10, WaitTimeSeconds=wait_s, AttributeNames=["All"]
            ).get("Messages", [])
            if not got:
                return records
            wait_s = 0
            records.extend(
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m["Attributes"],
                    "eventSourceARN": queue_arn(self.sqs, self.urls[role]),
                }
                for m in got
            )

    def delete(self, role: str, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.sqs.delete_message(QueueUrl=self.urls[role], ReceiptHandle=record["receiptHandle"])

    def run_worker(self, records: list[dict[str, Any]]) -> None:
        assert self.worker().handle_batch({"Records": records}, None) == {"batchItemFailures": []}
        self.delete("work", records)

    def record_events(self) -> list[str]:
        records = self.receive("events")
        self.delete("events", records)
        return [
            record_event(
                self.videos, self.jobs, self.store, self.work_queue, self.settings, SegmentEvent.from_json(r["body"])
            )
            for r in records
        ]

    def sweep(self, now: int) -> SweepReport:
        jobs_queue = MessageQueue(self.sqs, self.urls["jobs"])
        return orchestration_module.sweep(
            self.videos, self.jobs, self.store, jobs_queue, self.work_queue, self.settings, now=now
        )

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        assert job is not None
        return job

    def succeeded_job(self) -> Job:
        """A job of the clip planned into two segments, both processed by the worker and recorded: it
        has SUCCEEDED, and its artifact request waits on the work queue, not yet run."""
        video_id = new_id("vid")
        key = video_key(video_id, "thanks.mkv")
        self.s3.upload_file(str(data_path(CLIP)), self.settings.bucket, key)
        now = now_ms()
        self.videos.add(
            Video(
                id=video_id, title="thanks", filename="thanks.mkv", content_type="video/x-matroska", s3_key=key,
                status="UPLOADED", created_at=now, updated_at=now, size_bytes=1, metadata={"duration_ms": 1700.0},
            )
        )  # fmt: skip
        job, _ = self.jobs.create(
            Job(id=new_id("job"), video_id=video_id, status="QUEUED", options={}, created_at=now, updated_at=now)
        )
        plan_job(self.videos, self.jobs, self.work_queue, self.settings, JobRequested(job_id=job.id, video_id=video_id))
        items = self.receive("work")
        assert len(items) == 2
        self.run_worker(items)
        assert sorted(self.record_events()) == ["succeeded", "waiting for parts"]
        return self.job(job.id)

    def parts(self, job: Job) -> list[dict[str, Any]]:
        return [self.store.get_result(part_key(job.video_id, job.id, i)) for i in range(job.segments_total)]

    def artifacts(self, job: Job) -> dict[str, bool]:
        answer: dict[str, bool] = job_result(self.jobs, self.store, self.settings, job.id)["artifacts"]
        return answer


@pytest.fixture
def world(store: Store, moto_endpoint: str) -> World:
    s3, sqs = aws_clients(moto_endpoint)
    prefix = f"a{uuid.uuid4().hex[:8]}"
    resources = provision(s3, sqs, bucket=f"{prefix}-bucket", prefix=prefix, max_receives=3)
    settings = Settings(
        bucket=resources.bucket,
        jobs_queue_url=resources.queue_urls["jobs"],
        work_queue_url=resources.queue_urls["work"],
        db_url="unused: the database is injected",
        segment_ms=1000,
        warmup_ms=500,
    )
    return World(
        videos=VideoRepository(store.db),
        jobs=JobRepository(store.db),
        store=ObjectStore(s3, resources.bucket),
        work_queue=MessageQueue(sqs, resources.queue_urls["work"]),
        settings=settings,
        s3=s3,
        sqs=sqs,
        urls=dict(resources.queue_urls),
        endpoint=moto_endpoint,
    )


NOTHING = {"result": False, "insights": False, "exports": False, "pictures": False}
EVERYTHING = {"result": True, "insights": True, "exports": True, "pictures": True}


def test_a_job_succeeds_before_its_artifacts_exist_and_the_routes_say_so(world: World) -> None:
    job = world.succeeded_job()
    assert job.status == "SUCCEEDED" and job.result_key is not None
    parts = world.parts(job)
    merged = merge_parts(parts)
    # The summary is the one the merge will hold, known from the parts' heads alone.
    assert job.summary is not None
    assert {k: v for k, v in job.summary.items() if k not in ("stats", "decode")} == merged["summary"]
    assert job.summary["stats"] == merged["stats"] and job.frames_total == len(merged["frames"]) == 51
    # The artifact step is held (its request waits on the queue): nothing is written yet, and /result says so.
    assert world.store.head(job.result_key) is None
    assert world.store.head(picture_key(job.video_id, job.id, "contact_sheet")) is None
    answer = job_result(world.jobs, world.store, world.settings, job.id)
    assert answer["artifacts"] == NOTHING and answer["result"]["url"] is None
    assert answer["summary"] == job.summary and all(url is None for url in answer["pictures"].values())
    # The frames are served from the parts already.
    page = job_frames(
        world.jobs, world.store, PartCache(), job.id, start_ms=None, end_ms=None, max_results=100, next_token=None
    )
    assert page["frames"] == merged["frames"]
    # What comes from the merged result answers 409 with Retry-After while it is being written.
    with pytest.raises(BeingWritten, match="being written|writing"):
        derived.job_insights(world.jobs, world.store, PartCache(), job.id)
    insights = map_errors(lambda: derived.job_insights(world.jobs, world.store, PartCache(), job.id))()
    assert insights.status_code == 409 and insights.headers["Retry-After"] == "5"
    assert insights.body["code"] == "being_written"
    export = map_errors(
        lambda: derived.job_export(world.jobs, world.store, PartCache(), world.settings, job.id, None)
    )()
    assert export.status_code == 409 and export.body["code"] == "export_pending"
    assert "Retry-After" in export.headers
    # The held step runs: the merge, then everything else, and the event that records it.
    [request] = world.receive("work")
    assert json.loads(request["body"])["type"] == RENDER_REQUEST and json.loads(request["body"])["segments"] == 2
    world.run_worker([request])
    assert world.record_events() == ["artifacts written"]
    assert world.store.get_result(job.result_key) == merged
    assert world.artifacts(job) == EVERYTHING
    assert job_result(world.jobs, world.store, world.settings, job.id)["result"]["url"]
    assert derived.job_insights(world.jobs, world.store, PartCache(), job.id)["format"] == "handpipe.insights"
    assert world.jobs.artifacts_unwritten(requested_before_ms=now_ms() + 10**9, max_requests=99) == []


# Dies (SIGKILL, as the OOM killer or a Lambda timeout would end it) just as it is about to store the
# insights: after the merged result is written, before anything else.
_KILLED_ARTIFACT_STEP = """
import os, signal, sys
from handpipe_worker.handler import Worker, WorkerSettings
from handpipe.local.aws import aws_clients, queue_arn
endpoint, work, events = sys.argv[1:4]
s3, sqs = aws_clients(endpoint)

def die_before_the_insights(params, **_):
    if params.get("Key", "").endswith("insights.json"):
        os.kill(os.getpid(), signal.SIGKILL)

s3.meta.events.register("before-parameter-build.s3.PutObject", die_before_the_insights)
worker = Worker(s3, sqs, WorkerSettings(events_queue_url=events, visibility_s=3))
[m] = sqs.receive_message(QueueUrl=work, WaitTimeSeconds=5, AttributeNames=["All"])["Messages"]
record = {"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
          "attributes": m["Attributes"], "eventSourceARN": queue_arn(sqs, work)}
worker.handle_record(record, None)
print("finished", flush=True)
"""


def _kill_in_the_artifact_step(world: World) -> None:
    environment = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'worker_image'}", "AWS_DEFAULT_REGION": "us-east-1"}
    process = subprocess.run(
        [sys.executable, "-c", _KILLED_ARTIFACT_STEP, world.endpoint, world.urls["work"], world.urls["events"]],
        capture_output=True,
        env=environment,
        text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert "finished" not in process.stdout


def test_an_artifact_step_killed_midway_is_finished_by_the_redelivery(world: World) -> None:
    job = world.succeeded_job()
    assert job.result_key is not None
    _kill_in_the_artifact_step(world)
    # Killed after the merge and before the rest: the job stays SUCCEEDED, and /result tells what is there.
    assert world.artifacts(job) == {**NOTHING, "result": True}
    assert world.store.head(insights_key(job.video_id, job.id)) is None
    assert world.record_events() == []  # nothing was reported
    assert world.job(job.id).status == "SUCCEEDED"
    # The heartbeat stopped with the worker: the request comes back within seconds, and the next worker
    # does it all (the merge again, to the same bytes, then the rest).
    back = wait_for(lambda: world.receive("work", wait_s=1), "the killed step's request", 60, 1.0)
    assert [r["attributes"]["ApproximateReceiveCount"] for r in back] == ["2"]
    world.run_worker(back)
    assert world.record_events() == ["artifacts written"]
    assert world.artifacts(job) == EVERYTHING
    assert world.store.get_result(job.result_key) == merge_parts(world.parts(job))


def test_a_lost_artifact_request_is_sent_again_by_the_sweeper_a_bounded_number_of_times(world: World) -> None:
    job = world.succeeded_job()
    world.delete("work", world.receive("work"))  # the request is lost (a DLQ, a purge)
    silence = (world.settings.segment_silence_s + 1) * 1000
    assert world.sweep(now_ms()).artifacts == []  # not silent for long yet
    assert world.sweep(now_ms() + silence).artifacts == [job.id]
    [request] = world.receive("work")
    world.run_worker([request])
    assert world.record_events() == ["artifacts written"]
    assert world.artifacts(job) == EVERYTHING
    assert world.sweep(now_ms() + 2 * silence).artifacts == []  # written: never asked for again

    # A job whose artifacts never get written is asked for `max_dispatches` times in all, then left alone.
    other = world.succeeded_job()
    later = now_ms() + silence
    for _ in range(world.settings.max_dispatches - 1):
        world.delete("work", world.receive("work"))
        assert world.sweep(later).artifacts == [other.id]
        later += silence
    world.delete("work", world.receive("work"))
    assert world.sweep(later).artifacts == []
    assert world.artifacts(other) == NOTHING and world.job(other.id).status == "SUCCEEDED"


@pytest.fixture(autouse=True)
def _no_leftover_requests(world: World) -> Iterator[None]:
    yield
    world.delete("work", world.receive("work"))
