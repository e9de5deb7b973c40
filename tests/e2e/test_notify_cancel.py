"""Job-end notifications and cancel through the one-process local stack: webhooks POSTed to a real
loopback receiver (signed, retried after a 500 with the same event), the SNS topic's message in an SQS
queue subscribed to it, and a running multi-segment job cancelled while its worker runs MediaPipe."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import boto3
import pytest

from chalicelib.shared.signatures import SIGNATURE_HEADER, verify_signature
from handpipe.client import ApiError, Client
from handpipe.local.stack import LocalStack
from tests.support.footage import source_frames
from tests.support.paths import data_path
from tests.support.waiting import wait_for


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A webhook receiver on loopback that answers 500 to the first attempt at each path in `fail_once`."""

    server: ThreadingHTTPServer
    deliveries: list[Delivery] = field(default_factory=list)
    fail_once: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            me = holder[0]
            with me.lock:
                me.deliveries.append(Delivery(self.path, dict(self.headers.items()), body))
                status = 500 if self.path in me.fail_once else 204
                me.fail_once.discard(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("notify")
    with LocalStack(port=0, data_dir=data_dir, workers=1, bucket="notify-e2e", prefix="ntf", segment_ms=15_000) as up:
        yield up


def client_of(stack: LocalStack) -> Client:
    assert stack.info is not None
    return Client(stack.info.api_url, api_key=stack.info.api_key)


def long_clip(folder: Path, seconds: int = 45, fps: int = 30) -> Path:
    """The wave clip's first three seconds over and over: long enough to be cancelled mid-segment."""
    path = folder / "long_wave.mp4"
    frames = source_frames(90)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "g": str(fps)}
        for number in range(seconds * fps):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frames[number % len(frames)], format="rgb24")))
        container.mux(stream.encode(None))
    return path


def job_with_webhook(client: Client, video_id: str, url: str, **body: Any) -> dict[str, Any]:
    job: dict[str, Any] = client.request("POST", f"/videos/{video_id}/jobs", {"notify": {"webhook_url": url}, **body})
    return job


def topic_sink(stack: LocalStack, name: str) -> tuple[Any, str]:
    """An SQS queue subscribed to the job-end topic (what a Rekognition-style consumer sets up)."""
    assert stack.info is not None and stack.info.topic_arn
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    sqs = session.client("sqs", endpoint_url=stack.info.aws_endpoint_url)
    sns = session.client("sns", endpoint_url=stack.info.aws_endpoint_url)
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(
        TopicArn=stack.info.topic_arn,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"FilterPolicy": json.dumps({"owner": ["local"], "tag": ["e2e-notify"]})},
    )
    return sqs, url


def test_a_job_end_is_posted_signed_retried_after_a_500_and_published_on_the_topic(
    stack: LocalStack, receiver: Receiver
) -> None:
    client = client_of(stack)
    sqs, sink = topic_sink(stack, "ntf-topic-sink")
    video_path = data_path("videos/one_hand_wave_portrait.mp4")
    video = client.register_video(video_path, title="notify")
    client.upload(video, video_path)
    receiver.fail_once.add("/done")
    job = job_with_webhook(client, video["id"], receiver.url("/done"), tag="e2e-notify")
    assert job["notify"] == {"webhook_url": receiver.url("/done")}
    finished = client.wait(job["id"], poll_s=0.2)
    assert finished["status"] == "SUCCEEDED", finished

    first, second = wait_for(lambda: receiver.at("/done")[:2] if len(receiver.at("/done")) >= 2 else None, "a retry")
    assert first.body == second.body  # the same event, byte for byte: receivers dedupe by event_id
    event = second.event
    assert event["type"] == "job.succeeded" and event["job_id"] == job["id"] and event["video_id"] == video["id"]
    assert event["status"] == "SUCCEEDED" and event["tag"] == "e2e-notify" and event["event_id"].startswith("evt_")
    assert event["summary"]["frames_with_hands"] == finished["summary"]["frames_with_hands"]
    secret = client.request("GET", "/webhook-secret")
    assert verify_signature(second.body, second.headers[SIGNATURE_HEADER], secret["secret"])
    assert second.headers["X-Handpipe-Secret-Version"] == str(secret["version"])
    assert not verify_signature(
        second.body.replace(b"SUCCEEDED", b"FAILED"), second.headers[SIGNATURE_HEADER], secret["secret"]
    )

    def published() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=sink, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]

    [envelope] = wait_for(published, "the topic's message", timeout_s=60, poll_s=0.5)
    assert json.loads(envelope["Message"]) == event
    attributes = {name: value["Value"] for name, value in envelope["MessageAttributes"].items()}
    assert attributes == {"owner": "local", "status": "SUCCEEDED", "tag": "e2e-notify"}
    assert stack.drain(timeout_s=60)
    assert len(receiver.at("/done")) == 2  # delivered once it got a 2xx, never again


def test_cancelling_a_running_multi_segment_job_stops_its_segments_and_fires_job_cancelled(
    stack: LocalStack, receiver: Receiver, tmp_path: Path
) -> None:
    assert stack.info is not None
    client = client_of(stack)
    path = long_clip(tmp_path)
    video = client.register_video(path, title="to cancel")
    client.upload(video, path)
    job = job_with_webhook(client, video["id"], receiver.url("/cancelled"), tag="e2e-cancel")

    running = wait_for(
        lambda: (j := client.get_job(job["id"]))["progress"]["frames_done"] > 0 and j, "a segment running", poll_s=0.2
    )
    assert running["status"] == "IN_PROGRESS" and running["progress"]["segments_total"] == 3
    cancelled = client.request("POST", f"/jobs/{job['id']}/cancel")
    assert cancelled["status"] == "CANCELLED" and cancelled["error"]["code"] == "cancelled"
    with pytest.raises(ApiError) as again:
        client.request("POST", f"/jobs/{job['id']}/cancel")
    assert again.value.status == 409 and "CANCELLED" in again.value.message

    [delivery] = wait_for(lambda: receiver.at("/cancelled"), "the job.cancelled webhook")
    assert delivery.event["type"] == "job.cancelled" and delivery.event["error"]["code"] == "cancelled"
    assert stack.drain(timeout_s=120)  # the worker has stopped: nothing is left to run
    final = client.get_job(job["id"])
    assert final["status"] == "CANCELLED" and final["progress"]["segments_done"] == 0
    with sqlite3.connect(stack.info.db_url.removeprefix("sqlite:///")) as db:
        segments = db.execute(
            "SELECT segment_index, status, frames_processed, dispatched_at FROM segments WHERE job_id = ?", (job["id"],)
        ).fetchall()
    started = [index for index, _, frames, _ in segments if frames > 0]
    assert started and all(status == "PENDING" for _, status, _, _ in segments)
    assert any(dispatched is None for *_, dispatched in segments)  # never sent to a worker
    parts = client.request("GET", f"/jobs/{job['id']}")  # still CANCELLED after the worker's last words
    assert parts["status"] == "CANCELLED"
    s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    listed = s3.client("s3", endpoint_url=stack.info.aws_endpoint_url).list_objects_v2(
        Bucket=stack.info.bucket, Prefix=f"results/{video['id']}/{job['id']}/parts/"
    )
    assert [o["Key"] for o in listed.get("Contents", [])] == []  # the running segment stopped before its end
    assert len(receiver.at("/cancelled")) == 1


def test_the_local_stack_allows_loopback_webhooks_but_never_private_or_metadata_addresses(stack: LocalStack) -> None:
    client = client_of(stack)
    video_path = data_path("videos/one_hand_wave_portrait.mp4")
    video = client.register_video(video_path, title="refused")
    client.upload(video, video_path)
    for url in ("https://169.254.169.254/latest/meta-data/", "https://10.0.0.1/hook", "http://10.0.0.1/hook"):
        with pytest.raises(ApiError) as refused:
            job_with_webhook(client, video["id"], url)
        assert refused.value.status == 400 and "webhook_url is refused" in refused.value.message, url


def test_a_job_end_recorded_but_not_sent_when_the_stack_died_is_announced_when_it_starts_again(
    receiver: Receiver, tmp_path: Path
) -> None:
    """The announcement outbox across a crash: a job ended and its end was recorded (and even claimed) by a
    stack killed before it sent it; the next stack on the same data sends it, once."""
    from chalicelib.adapters.database import Database
    from chalicelib.adapters.job_repository import JobRepository
    from chalicelib.adapters.migrations import upgrade
    from chalicelib.adapters.repositories import VideoRepository
    from chalicelib.service.notifications import announce_job_end
    from tests.support.databases import make_job, make_video

    db = Database.from_url(f"sqlite:///{(tmp_path / 'handpipe.db').resolve()}")
    upgrade(db)
    videos, jobs = VideoRepository(db), JobRepository(db)
    video = make_video(owner="local")
    videos.add(video)
    job = make_job(video.id, owner="local", status="FAILED", error="boom", error_code="worker_error", finished_at=1)
    jobs.create(replace(job, notify_url=receiver.url("/after-restart")))
    assert announce_job_end(jobs, job.id)
    [claimed] = jobs.claim_announcements(claimed_before_ms=0)  # the dead stack's claim, never sent
    db.close()

    with LocalStack(port=0, data_dir=tmp_path, workers=1, bucket="restart-e2e", prefix="rst") as restarted:
        assert restarted.announced == 1
        [delivery] = wait_for(lambda: receiver.at("/after-restart"), "the announcement after the restart")
        assert delivery.event["event_id"] == claimed.event_id and delivery.event["type"] == "job.failed"
        assert delivery.event["error"] == {"code": "worker_error", "message": "boom"}
        assert restarted.drain(timeout_s=60)
    assert len(receiver.at("/after-restart")) == 1
