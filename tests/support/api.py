"""The API under test: chalice.test.Client over the real app, moto S3/SQS, a SQLite file and a real
worker, as the `env` fixture the API, fault and insight modules share, and the helpers they call on it."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client
from handpipe_worker.handler import Worker, WorkerSettings
from handpipe_worker.models import ModelCache

import app as chalice_app
from chalicelib.adapters.database import Database
from chalicelib.adapters.migrations import upgrade
from chalicelib.config import Settings
from chalicelib.runtime import Runtime, use_runtime
from handpipe.local.aws import aws_clients, provision, sns_client
from handpipe.local.pollers import LambdaContext
from tests.support.paths import data_path

MODELS = ModelCache()
API_KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
OTHER = {"x-api-key": OTHER_KEY}


@dataclass
class Env:
    client: Client
    s3: Any
    sqs: Any
    queues: dict[str, str]
    dlqs: dict[str, str]
    bucket: str
    db: Database
    worker: Worker
    sns: Any = None
    topic_arn: str | None = None

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        sent = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        all_headers = {"content-type": "application/json", "x-api-key": API_KEY, **(headers or {})}
        response = getattr(self.client.http, method.lower())(path, body=sent, headers=all_headers)
        return response.status_code, json.loads(response.body or b"null")

    def take(self, role: str) -> list[str]:
        bodies: list[str] = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queues[role], MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return bodies
            for message in messages:
                bodies.append(message["Body"])
                self.sqs.delete_message(QueueUrl=self.queues[role], ReceiptHandle=message["ReceiptHandle"])

    def deliver(self, role: str, bodies: list[str]) -> None:
        """What the SQS event source does: hand the bodies to the app's consumer for that queue."""
        function = {"jobs": "plan_jobs", "events": "record_events", "notify": "deliver_notifications"}[role]
        event = self.client.events.generate_sqs_event(message_bodies=bodies, queue_name=f"handpipe-{role}")
        self.client.lambda_.invoke(function, event)

    def run_worker(self) -> int:
        items = self.take("work")
        records = [
            {"messageId": str(n), "body": body, "attributes": {"ApproximateReceiveCount": "1"}}
            for n, body in enumerate(items)
        ]
        self.worker.handle_batch({"Records": records}, LambdaContext("worker", 900))
        return len(items)

    def upload(self, video: dict[str, Any], path: Path) -> None:
        upload = video["upload"]
        request = urllib.request.Request(upload["url"], data=path.read_bytes(), method="PUT", headers=upload["headers"])
        urllib.request.urlopen(request).close()

    def process(self, job_id: str) -> dict[str, Any]:
        """Run a queued job through orchestrator, worker (probe, then segments) and recorder, as the
        deployed system would, until no queue holds anything."""
        self.deliver("jobs", self.take("jobs"))
        while self.run_worker():
            self.deliver("events", self.take("events"))
        return self.call("GET", f"/jobs/{job_id}")[1]


@pytest.fixture
def env(moto_endpoint: str, tmp_path: Path) -> Iterator[Env]:
    s3, sqs = aws_clients(moto_endpoint)
    sns = sns_client(moto_endpoint)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    resources = provision(
        s3, sqs, bucket=f"{prefix}-bucket", prefix=prefix, max_receives=2, sns=sns, upload_trigger_prefix="incoming/"
    )
    db = Database.from_url(f"sqlite:///{tmp_path / 'handpipe.db'}")
    upgrade(db)
    settings = Settings(
        bucket=resources.bucket,
        jobs_queue_url=resources.queue_urls["jobs"],
        work_queue_url=resources.queue_urls["work"],
        db_url="unused: the database is injected",
        api_keys={API_KEY: "tester", OTHER_KEY: "someone-else"},
        notify_queue_url=resources.queue_urls["notify"],
        notify_topic_arn=resources.topic_arn,
        webhook_secret="test-webhook-master-secret",
    )
    use_runtime(Runtime(settings, s3_client=s3, sqs_client=sqs, database=db, sns_client=sns))
    worker = Worker(s3, sqs, WorkerSettings(events_queue_url=resources.queue_urls["events"]), models=MODELS)
    with Client(chalice_app.app) as client:
        yield Env(
            client,
            s3,
            sqs,
            dict(resources.queue_urls),
            dict(resources.dlq_urls),
            resources.bucket,
            db,
            worker,
            sns=sns,
            topic_arn=resources.topic_arn,
        )
    use_runtime(None)
    db.close()


def register(
    env: Env,
    name: str = "asl_thanks_two_hands.mkv",
    upload: bool = True,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    path = data_path(f"videos/{name}")
    status, video = env.call(
        "POST",
        "/videos",
        {
            "title": f"clip {name}",
            "filename": name,
            "content_type": "video/x-matroska" if name.endswith("mkv") else "video/mp4",
            "size_bytes": path.stat().st_size,
            **extra,
        },
        headers=headers,
    )
    assert status == 201, video
    if upload:
        env.upload(video, path)
    return video
