"""The worker Lambda handler against S3 and SQS served by moto, and the image that ships it."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from botocore.config import Config
from handpipe_worker.handler import Worker, WorkerSettings
from handpipe_worker.models import ModelCache

from chalicelib.shared.contracts import (
    ProbeRequest,
    ProcessOptions,
    RenderRequest,
    SegmentEvent,
    WorkItem,
    frame_index_key,
    part_key,
)
from chalicelib.shared.results import from_gzip
from handpipe.local.aws import aws_clients
from handpipe.local.pollers import LambdaContext
from tests.support.paths import REPO, data_path

SCHEMA = json.loads((REPO / "docs" / "result.schema.json").read_text())
MODELS = ModelCache()  # shared by every worker in this module, as in one Lambda container


@dataclass
class Setup:
    s3: Any
    sqs: Any
    bucket: str
    events_url: str
    worker: Worker

    def events(self) -> list[SegmentEvent]:
        found: list[SegmentEvent] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.events_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = got.get("Messages", [])
            if not messages:
                return found
            for message in messages:
                found.append(SegmentEvent.from_json(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.events_url, ReceiptHandle=message["ReceiptHandle"])

    def item(self, video_key: str, segment: int = 0, **options: Any) -> WorkItem:
        job_id = f"job_{uuid.uuid4().hex}"
        return WorkItem(
            job_id=job_id,
            video_id="vid_" + "0" * 32,
            segment=segment,
            bucket=self.bucket,
            video_key=video_key,
            part_key=part_key("vid_" + "0" * 32, job_id, segment),
            options=ProcessOptions(**options),
        )


def record(body: str, receive_count: int = 1) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "handle",
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count)},
        "eventSource": "aws:sqs",
    }


@pytest.fixture(scope="module")
def setup(moto_endpoint: str) -> Iterator[Setup]:
    s3, sqs = aws_clients(moto_endpoint)
    bucket = f"worker-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    events_url = sqs.create_queue(QueueName=f"events-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    s3.upload_file(str(data_path("videos/asl_thanks_two_hands.mkv")), bucket, "videos/thanks.mkv")
    s3.put_object(Bucket=bucket, Key="videos/notes.mp4", Body=b"meeting notes, not a video\n" * 50)
    worker = Worker(s3, sqs, WorkerSettings(events_queue_url=events_url, max_receives=3), models=MODELS)
    yield Setup(s3, sqs, bucket, events_url, worker)


def test_work_item_writes_its_part_and_reports_success(setup: Setup) -> None:
    item = setup.item("videos/thanks.mkv")
    response = setup.worker.handle_batch({"Records": [record(item.to_json())]}, LambdaContext("worker", 900))
    assert response == {"batchItemFailures": []}
    part = from_gzip(setup.s3.get_object(Bucket=setup.bucket, Key=item.part_key)["Body"].read())
    jsonschema.validate(part, SCHEMA)
    assert len(part["frames"]) == 51 and part["summary"]["frames_with_hands"] >= 45
    [event] = [e for e in setup.events() if e.type != "segment.progress"]
    assert (event.type, event.job_id, event.segment, event.part_key) == (
        "segment.succeeded",
        item.job_id,
        0,
        item.part_key,
    )
    assert event.frames_processed == 51 and event.video and event.video["container"] == "mkv"


def test_a_work_items_detection_options_reach_the_engine(setup: Setup) -> None:
    item = setup.item("videos/thanks.mkv", detection="adaptive", detection_interval_ms=200)
    setup.worker.handle_batch({"Records": [record(item.to_json())]}, LambdaContext("worker", 900))
    part = from_gzip(setup.s3.get_object(Bucket=setup.bucket, Key=item.part_key)["Body"].read())
    jsonschema.validate(part, SCHEMA)
    assert (part["options"]["detection"], part["options"]["detection_interval_ms"]) == ("adaptive", 200)
    assert len(part["frames"]) == 51 and part["summary"]["frames_with_hands"] == 51  # every frame has hands
    setup.events()


def test_redelivered_item_does_not_process_or_write_again(setup: Setup) -> None:
    item = setup.item("videos/thanks.mkv", end_ms=500)
    setup.worker.handle_batch({"Records": [record(item.to_json())]}, LambdaContext("worker", 900))
    first = setup.s3.head_object(Bucket=setup.bucket, Key=item.part_key)
    setup.events()
    setup.worker.handle_batch({"Records": [record(item.to_json(), receive_count=2)]}, LambdaContext("worker", 900))
    again = setup.s3.head_object(Bucket=setup.bucket, Key=item.part_key)
    assert again["LastModified"] == first["LastModified"] and again["ETag"] == first["ETag"]
    [event] = setup.events()  # reported again, so a lost first report still completes the job
    assert event.type == "segment.succeeded" and event.attempt == 2


def test_missing_and_undecodable_videos_fail_the_segment_with_a_reason(setup: Setup) -> None:
    missing = setup.item("videos/never-uploaded.mp4")
    not_video = setup.item("videos/notes.mp4")
    response = setup.worker.handle_batch(
        {"Records": [record(missing.to_json()), record(not_video.to_json())]}, LambdaContext("worker", 900)
    )
    assert response == {"batchItemFailures": []}  # retrying cannot help: consumed, reported
    events = {e.job_id: e for e in setup.events()}
    assert events[missing.job_id].error_code == "video_missing" and "upload" in (events[missing.job_id].error or "")
    assert events[not_video.job_id].error_code == "not_video"
    assert "not a video" in (events[not_video.job_id].error or "")
    for item in (missing, not_video):
        assert setup.s3.list_objects_v2(Bucket=setup.bucket, Prefix=item.part_key).get("KeyCount") == 0


def test_malformed_items(setup: Setup) -> None:
    garbage = record("{not json")
    bad_options = json.loads(setup.item("videos/thanks.mkv").to_json())
    bad_options["options"]["num_hands"] = 99
    named = record(json.dumps(bad_options))
    response = setup.worker.handle_batch({"Records": [garbage, named]}, LambdaContext("worker", 900))
    # Unattributable garbage goes back to SQS (and on to the dead-letter queue); a named item fails its job.
    assert response == {"batchItemFailures": [{"itemIdentifier": garbage["messageId"]}]}
    [event] = setup.events()
    assert event.type == "segment.failed" and event.error_code == "bad_message" and "num_hands" in (event.error or "")


def test_stops_cleanly_before_the_lambda_deadline(setup: Setup) -> None:
    item = setup.item("videos/thanks.mkv")
    # 20 s margin, 20.3 s left: the engine must stop after a fraction of a second, before writing.
    setup.worker.handle_batch({"Records": [record(item.to_json())]}, LambdaContext("worker", 20.3))
    [event] = [e for e in setup.events() if e.type != "segment.progress"]
    assert event.type == "segment.failed" and event.error_code == "deadline"
    assert "timeout" in (event.error or "") and "processed" in (event.error or "")
    assert setup.s3.list_objects_v2(Bucket=setup.bucket, Prefix=item.part_key).get("KeyCount") == 0


def test_transient_storage_failure_is_retried_then_reported(setup: Setup) -> None:
    dead_s3 = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    worker = Worker(dead_s3, setup.sqs, setup.worker.settings, models=MODELS)
    item = setup.item("videos/thanks.mkv")
    first = record(item.to_json(), receive_count=1)
    assert worker.handle_batch({"Records": [first]}, LambdaContext("worker", 900)) == {
        "batchItemFailures": [{"itemIdentifier": first["messageId"]}]
    }
    assert setup.events() == []
    last = record(item.to_json(), receive_count=3)
    assert worker.handle_batch({"Records": [last]}, LambdaContext("worker", 900)) == {"batchItemFailures": []}
    [event] = setup.events()
    assert event.type == "segment.failed" and event.error_code == "worker_error" and "3 attempts" in (event.error or "")


def test_probes_and_renders_follow_the_same_retry_policy(setup: Setup) -> None:
    dead_s3 = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    worker = Worker(dead_s3, setup.sqs, setup.worker.settings, models=MODELS)
    job_id, video_id = f"job_{uuid.uuid4().hex}", "vid_" + "0" * 32
    probe = ProbeRequest(job_id=job_id, video_id=video_id, bucket=setup.bucket, video_key="videos/thanks.mkv")
    render = RenderRequest(
        job_id=job_id, video_id=video_id, bucket=setup.bucket, video_key="videos/thanks.mkv", result_key="r.json.gz"
    )
    for message in (probe, render):
        early = record(message.to_json(), receive_count=1)
        assert worker.handle_batch({"Records": [early]}, LambdaContext("worker", 900)) == {
            "batchItemFailures": [{"itemIdentifier": early["messageId"]}]
        }
        assert setup.events() == []
    # On the last receive a probe gives up with a reason; pictures are extras, given up on quietly.
    last = record(probe.to_json(), receive_count=3)
    assert worker.handle_batch({"Records": [last]}, LambdaContext("worker", 900)) == {"batchItemFailures": []}
    [event] = setup.events()
    assert event.type == "segment.failed" and event.error_code == "worker_error"
    assert (event.error or "").startswith("probe failed:")
    last = record(render.to_json(), receive_count=3)
    assert worker.handle_batch({"Records": [last]}, LambdaContext("worker", 900)) == {"batchItemFailures": []}
    assert setup.events() == []


# ------------------------------------------------------------------------------------ the image

DOCKERFILE = REPO / "worker_image" / "Dockerfile"


def test_every_file_the_dockerfile_copies_exists() -> None:
    copies = re.findall(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _target = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
    # The image gets no database code: the worker never touches the DB.
    assert "db.py" not in DOCKERFILE.read_text()


def test_dockerfile_pins_what_it_installs() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and "FROM public.ecr.aws/lambda/python:3.11" in text
    assert "--no-deps mediapipe==0.10.21" in text
    for line in (REPO / "worker_image" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", line), f"unpinned: {line}"
            assert not line.lower().startswith(("jax", "sentencepiece", "sounddevice", "opencv-contrib"))


# What the Lambda Python runtime provides besides the image's requirements.
LAMBDA_RUNTIME = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "urllib3", "six")

# Run in the child: only the image's task root and distributions can be imported, as in the image.
IMAGE_ONLY = """
import importlib.abc, importlib.metadata, json, re, sys
allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()
class ImageOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in ("chalicelib", "handpipe_worker", "_distutils_hack"):
            return None
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(top, [])}
        if dists and dists & allowed:
            return None
        if not dists and top.startswith("_"):
            return None  # private extension modules of allowed packages (_cffi_backend, ...)
        raise ModuleNotFoundError(f"{name} is not in the worker image (distributions {sorted(dists) or '?'})")
sys.meta_path.insert(0, ImageOnly())
"""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_dependencies(names: list[str]) -> set[str]:
    """The distributions pip installs for these requirements: each with its dependencies, transitively
    (extras left out), as they are installed here."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    found: set[str] = set()
    todo = [_normal(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_normal(requirement.name))
    return found


def _image_task_root(root: Path) -> Path:
    """The image's ${LAMBDA_TASK_ROOT}: exactly the files the Dockerfile copies there."""
    for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), re.MULTILINE):
        *sources, target = line.split()
        if "LAMBDA_TASK_ROOT" not in target:
            continue
        folder = root / target.split("}/", 1)[1]
        for source in sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, folder / path.name)
    return root


def test_the_handler_named_by_cmd_runs_a_sample_event_with_only_what_the_image_holds(
    setup: Setup, aws_env: str, tmp_path: Path
) -> None:
    """In a fresh interpreter, as a new container would: only the files the Dockerfile copies and the
    distributions worker_image/requirements.txt installs (plus mediapipe and the runtime's boto3) can
    be imported; then import the CMD's handler and invoke it on a ranged segment."""
    [cmd] = re.findall(r'^CMD \["([\w.]+)"\]', DOCKERFILE.read_text(), re.MULTILINE)
    module_name, function_name = cmd.rsplit(".", 1)
    requirements = (REPO / "worker_image" / "requirements.txt").read_text().splitlines()
    pinned = [line.split("==")[0] for line in requirements if line and line[0] != "#"]
    # pip installs these with their dependencies; mediapipe goes in with --no-deps
    allowed = sorted(_with_dependencies([*pinned, *LAMBDA_RUNTIME]) | {"mediapipe"})
    task_root = _image_task_root(tmp_path / "task")
    item = setup.item("videos/thanks.mkv", start_ms=1000, end_ms=1500)
    event = {"Records": [record(item.to_json())]}
    script = IMAGE_ONLY + (
        "import importlib\n"
        f"sys.path[:0] = [{str(task_root)!r}]\n"
        "class Context:\n"
        "    def get_remaining_time_in_millis(self): return 900_000\n"
        f"handler = getattr(importlib.import_module({module_name!r}), {function_name!r})\n"
        "print(json.dumps(handler(json.loads(sys.stdin.read()), Context())))\n"
    )
    # What the Lambda runtime sets for a function, and where its clients go here.
    lambda_env = {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env = {**os.environ, **lambda_env, **credentials, "AWS_ENDPOINT_URL": aws_env}
    env["HANDPIPE_EVENTS_QUEUE_URL"] = setup.events_url
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-I", "-c", script, json.dumps(allowed)],
        input=json.dumps(event),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # stdout also carries the worker's JSON log lines and metrics (a heartbeat's may come after the result)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"batchItemFailures"')]
    assert results == [{"batchItemFailures": []}], done.stdout[-3000:] + done.stderr[-3000:]
    [event_sent] = setup.events()
    assert event_sent.type == "segment.succeeded" and event_sent.frames_processed == 15


def test_the_image_only_check_refuses_what_the_image_lacks(tmp_path: Path) -> None:
    """The control for the test above: a module outside the image's requirements cannot be imported."""
    script = IMAGE_ONLY + "import pymysql\n"
    done = subprocess.run(
        [sys.executable, "-I", "-c", script, json.dumps(["numpy"])], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "pymysql is not in the worker image" in done.stderr


def test_render_request_merges_the_parts_draws_pictures_and_stores_insights(setup: Setup) -> None:
    """The artifact step of a SUCCEEDED job: the parts merged into the result first (it was not
    written when the job succeeded), then insights, exports and pictures, then one event that says so."""
    from handpipe_worker.engine import process_video

    from chalicelib.shared.contracts import RenderRequest, insights_key, part_key, picture_key, result_key
    from chalicelib.shared.results import merge_parts, to_gzip
    from chalicelib.shared.storage import ObjectStore

    video_id, job_id = "vid_" + "1" * 32, "job_" + "1" * 32
    clip = data_path("videos/asl_thanks_two_hands.mkv")
    parts = [
        process_video(clip, ProcessOptions(end_ms=900), models=MODELS),
        process_video(clip, ProcessOptions(start_ms=900), models=MODELS, warmup_ms=500),
    ]
    for number, part in enumerate(parts):
        setup.s3.put_object(Bucket=setup.bucket, Key=part_key(video_id, job_id, number), Body=to_gzip(part))
    request = RenderRequest(
        job_id=job_id,
        video_id=video_id,
        bucket=setup.bucket,
        video_key="videos/thanks.mkv",
        result_key=result_key(video_id, job_id),
        annotated_video=True,
        segments=2,
    )
    assert setup.worker.handle_batch({"Records": [record(request.to_json())]}, LambdaContext("worker", 900)) == {
        "batchItemFailures": []
    }
    result = ObjectStore(setup.s3, setup.bucket).get_result(result_key(video_id, job_id))
    assert result == merge_parts(parts)
    for name, magic in [("contact_sheet", b"\x89PNG"), ("timeline", b"\x89PNG"), ("annotated_video", b"")]:
        body = setup.s3.get_object(Bucket=setup.bucket, Key=picture_key(video_id, job_id, name))["Body"].read()
        assert len(body) > 1000 and body.startswith(magic)
    insights = json.loads(setup.s3.get_object(Bucket=setup.bucket, Key=insights_key(video_id, job_id))["Body"].read())
    assert insights["format"] == "handpipe.insights" and len(insights["motion"]["tracks"]) >= 2
    # every export, so that the API need not write a large one while a caller waits
    prefix = f"results/{video_id}/{job_id}/"
    csv_text = gzip.decompress(setup.s3.get_object(Bucket=setup.bucket, Key=prefix + "export.csv.gz")["Body"].read())
    lines = csv_text.decode().splitlines()
    assert lines[0].startswith("job_id,video_id,frame_index") and len(lines) == 1 + result["summary"]["hands_seen"]
    assert lines[1].startswith(f"{job_id},{video_id},")
    for name in ("export.jsonl.gz", "export.parquet"):
        assert setup.s3.head_object(Bucket=setup.bucket, Key=prefix + name)["ContentLength"] > 1000
    [written] = setup.events()  # the job's state is SUCCEEDED already: this only records that all is there
    assert (written.type, written.job_id, written.extra["written"]) == ("job.artifacts_written", job_id, 7)


def test_probe_fails_a_zero_byte_or_mislabelled_object_at_once_and_indexes_a_real_one(setup: Setup) -> None:
    """A 0-byte object is deterministic (not an S3 range error to retry): the job fails on the first
    delivery. A real video is indexed (every frame's PTS) and its container comes from the demuxer,
    not from its name."""
    setup.s3.put_object(Bucket=setup.bucket, Key="videos/empty.mp4", Body=b"")
    setup.s3.upload_file(str(data_path("videos/asl_thanks_two_hands.mkv")), setup.bucket, "videos/really-mkv.mp4")
    empty = ProbeRequest(
        job_id=f"job_{uuid.uuid4().hex}", video_id="vid_" + "1" * 32, bucket=setup.bucket, video_key="videos/empty.mp4"
    )
    real = ProbeRequest(
        job_id=f"job_{uuid.uuid4().hex}",
        video_id="vid_" + "2" * 32,
        bucket=setup.bucket,
        video_key="videos/really-mkv.mp4",
    )
    response = setup.worker.handle_batch(
        {"Records": [record(empty.to_json()), record(real.to_json())]}, LambdaContext("worker", 900)
    )
    assert response == {"batchItemFailures": []}
    events = {e.job_id: e for e in setup.events()}
    failed = events[empty.job_id]
    assert (failed.type, failed.error_code) == ("segment.failed", "empty") and "0 bytes" in (failed.error or "")
    probed = events[real.job_id]
    assert probed.type == "video.probed" and probed.video is not None
    assert probed.video["container"] == "mkv" and probed.video["frame_count"] == 51
    assert probed.video["frame_rate_mode"] == "constant"
    etag = setup.s3.head_object(Bucket=setup.bucket, Key="videos/really-mkv.mp4")["ETag"].strip('"')
    index = setup.s3.head_object(Bucket=setup.bucket, Key=frame_index_key(real.video_id, etag))
    assert index["ContentLength"] > 0


def test_an_item_of_a_cancelled_job_never_starts_and_reports_nothing(setup: Setup) -> None:
    from chalicelib.shared.cancellation import mark_cancelled
    from chalicelib.shared.storage import ObjectStore

    item = setup.item("videos/thanks.mkv")
    mark_cancelled(ObjectStore(setup.s3, setup.bucket), item.video_id, item.job_id)  # what POST .../cancel writes
    response = setup.worker.handle_batch({"Records": [record(item.to_json())]}, LambdaContext("worker", 900))
    assert response == {"batchItemFailures": []}  # done with: the job has ended
    assert setup.events() == []
    assert setup.s3.list_objects_v2(Bucket=setup.bucket, Prefix=item.part_key).get("KeyCount") == 0
