"""Logs and metrics as CloudWatch would get them: the stdout of real handler runs (the API through
chalice.test.Client, the worker's Lambda entry point in a fresh interpreter), every line JSON, the job's
keys on its lines and the metrics in EMF blobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_lambda_powertools
import pytest

from chalicelib.shared import telemetry
from chalicelib.shared.contracts import ProcessOptions, WorkItem
from handpipe.local.aws import aws_clients
from tests.support.api import Env, register
from tests.support.paths import data_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def powertools() -> Iterator[None]:
    """The app's telemetry as a fresh container sets it up on its first invocation, taken down after."""
    telemetry.use_telemetry(None)
    yield
    current = telemetry.telemetry()
    if isinstance(current, telemetry.PowertoolsTelemetry):
        current.close()
    telemetry.use_telemetry(None)


def _json_lines(out: str) -> list[dict[str, Any]]:
    lines = [line for line in out.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a stdout line is not JSON: {line[:300]!r}")
    return parsed


def _emf(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each metric name with the blobs that carry it."""
    found: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        for directive in line.get("_aws", {}).get("CloudWatchMetrics", []):
            assert directive["Namespace"] == "handpipe"
            for metric in directive["Metrics"]:
                found.setdefault(metric["Name"], []).append(line)
    return found


def test_the_api_logs_json_lines_with_the_jobs_keys_and_sends_emf_metrics(
    env: Env, powertools: None, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    video = register(env)
    status, job = env.call("POST", f"/videos/{video['id']}/jobs", {})
    assert status == 202, job
    assert env.process(job["id"])["status"] == "SUCCEEDED"
    lines = _json_lines(capsys.readouterr().out)

    events = [line for line in lines if "event" in line]
    assert [e["event"] for e in events] == ["job.queued", "job.started", "segment.succeeded", "job.succeeded"]
    for event in events:
        assert (event["job_id"], event["video_id"], event["owner"]) == (job["id"], video["id"], "tester"), event
        assert event["level"] == "INFO" and event["service"] == "handpipe"
    assert events[2]["segment"] == 0
    # The consumers' lines carry the message's keys; a route's line its path's ids and its caller.
    consumed = [line for line in lines if str(line.get("message", "")).startswith(("job request", "worker event"))]
    assert consumed and all(line["job_id"] == job["id"] and "message_id" in line for line in consumed)

    metrics = _emf(lines)
    for name in ("JobsQueued", "JobsStarted", "SegmentsSucceeded", "JobsSucceeded", "QueueAge", "QueueWait"):
        assert name in metrics, sorted(metrics)
    assert all(blob["stage"] == "local" for blobs in metrics.values() for blob in blobs)
    assert {blob["queue"] for blob in metrics["QueueAge"]} >= {"jobs", "events"}
    assert all(value >= 0 for blob in metrics["QueueAge"] for value in blob["QueueAge"])


def test_a_failed_job_is_logged_and_counted(env: Env, powertools: None, capsys: pytest.CaptureFixture[str]) -> None:
    video = register(env)
    capsys.readouterr()
    missing_model = {"model_uri": f"s3://{env.bucket}/models/missing.task"}  # the worker fails the job
    status, job = env.call("POST", f"/videos/{video['id']}/jobs", {"options": missing_model})
    assert status == 202, job
    assert env.process(job["id"])["status"] == "FAILED"
    lines = _json_lines(capsys.readouterr().out)
    [failed] = [line for line in lines if line.get("event") == "job.failed"]
    assert failed["job_id"] == job["id"] and failed["error_code"] and failed["level"] == "INFO"
    assert "JobsFailed" in _emf(lines)


def test_flushing_without_metrics_sends_nothing_and_never_raises(
    powertools: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = telemetry.install_powertools(aws_lambda_powertools, stage="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Powertools warns on an empty flush; ours must not ask it to
        sink.flush()
        sink.flush()
    assert capsys.readouterr().out == ""


def test_the_worker_entry_point_logs_json_and_sends_its_metrics(aws_env: str, tmp_path: Path) -> None:
    """The image's CMD in a fresh interpreter, as a cold container: its stdout is what CloudWatch gets."""
    s3, sqs = aws_clients(aws_env)
    bucket = f"telemetry-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    events_url = sqs.create_queue(QueueName=f"events-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    s3.upload_file(str(data_path("videos/asl_thanks_two_hands.mkv")), bucket, "videos/thanks.mkv")
    job_id, video_id = f"job_{uuid.uuid4().hex}", "vid_" + "1" * 32
    item = WorkItem(
        job_id=job_id,
        video_id=video_id,
        segment=2,
        bucket=bucket,
        video_key="videos/thanks.mkv",
        part_key=f"results/{video_id}/{job_id}/parts/2.json.gz",
        options=ProcessOptions.from_dict({"start_ms": 0, "end_ms": 400}),
    )
    sent = int(time.time() * 1000) - 5000
    record = {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "handle",
        "body": item.to_json(),
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(sent),
            "ApproximateFirstReceiveTimestamp": str(sent + 1200),
        },
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:handpipe-test-work",
    }
    script = (
        "import json, sys\n"
        "from handpipe_worker.handler import handler\n"
        "class Context:\n"
        "    def get_remaining_time_in_millis(self): return 900_000\n"
        "handler(json.loads(sys.stdin.read()), Context())\n"
    )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": aws_env,
        # What Lambda sets in every container; other tests may have changed this process's own.
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "HANDPIPE_EVENTS_QUEUE_URL": events_url,
        "HANDPIPE_STAGE": "test",
        "PYTHONPATH": os.pathsep.join([str(REPO / "worker_image"), str(REPO)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps({"Records": [record]}),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = _json_lines(done.stdout)
    processed = [line for line in lines if line.get("message") == f"segment 2 of job {job_id} processed"]
    assert len(processed) == 1, lines
    assert (processed[0]["job_id"], processed[0]["video_id"], processed[0]["segment"]) == (job_id, video_id, 2)
    metrics = _emf(lines)
    assert {"FramesProcessed", "SegmentSeconds", "QueueAge", "QueueWait"} <= set(metrics), sorted(metrics)
    [frames] = metrics["FramesProcessed"]
    assert frames["stage"] == "test"
    assert frames["FramesProcessed"][0] > 0 and frames["SegmentSeconds"][0] > 0
    [wait] = metrics["QueueWait"]
    assert wait["queue"] == "work" and wait["QueueWait"] == [1200.0]
    [age] = metrics["QueueAge"]
    assert age["QueueAge"][0] >= 5000


def test_mediapipes_native_log_lines_are_dropped_and_real_errors_kept(tmp_path: Path) -> None:
    """A fresh interpreter with the filter on runs MediaPipe on a clip: its INFO and WARNING lines (which
    no environment variable silences) are gone from stderr, an E line and Python's own stderr are not."""
    script = (
        "import os, sys\n"
        "from handpipe_worker.native_logs import filter_native_stderr\n"
        "from handpipe_worker.engine import process_video\n"
        "from chalicelib.shared.contracts import ProcessOptions\n"
        "filter_native_stderr()\n"
        f"result = process_video(open({str(data_path('videos/asl_thanks_two_hands.mkv'))!r}, 'rb'),\n"
        "    ProcessOptions.from_dict({'end_ms': 300}), name='thanks.mkv')\n"
        "os.write(2, b'E0000 00:00:1796168327.511880   16040 calculator.cc:12] a real native error\\n')\n"
        "print('python stderr line', file=sys.stderr)\n"
        "print(result['stats']['frames_processed'])\n"
        "sys.stderr.flush()\n"
        "import time; time.sleep(0.5)\n"  # the forwarding thread's last line
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "worker_image"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 0
    assert "GPU suport" not in done.stderr and "Feedback manager" not in done.stderr, done.stderr
    assert "absl::InitializeLog" not in done.stderr and "XNNPACK" not in done.stderr, done.stderr
    assert "a real native error" in done.stderr and "python stderr line" in done.stderr, done.stderr
