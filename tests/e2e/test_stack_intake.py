"""Upload-triggered jobs and big files through the one-process local stack: an object a user puts under
incoming/{owner}/ with boto3 (the bucket notifies the uploads queue, its poller hands the message to the
app's consumer) becomes a SUCCEEDED job; multipart uploads over a lowered threshold go in parallel parts,
resume after an interruption sending only the missing parts, refuse an incomplete set, and abort."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import av
import boto3
import numpy as np
import pytest
from botocore.config import Config

from chalicelib.shared.contracts import frame_index_key
from handpipe.cli import main as cli_main
from handpipe.client import ApiError, Client
from handpipe.local.stack import LocalStack
from handpipe.uploads import upload_file
from tests.support.footage import source_frames
from tests.support.paths import data_path

MIB = 1024**2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    patch = pytest.MonkeyPatch()
    # Lowered for the test: S3's real 5 MiB minimum part size still holds (moto enforces it on complete).
    patch.setenv("HANDPIPE_MULTIPART_THRESHOLD_BYTES", str(6 * MIB))
    patch.setenv("HANDPIPE_MULTIPART_PART_BYTES", str(5 * MIB))
    try:
        with LocalStack(
            port=0, data_dir=tmp_path_factory.mktemp("intake"), workers=2, bucket="stack-intake", prefix="intake"
        ) as running:
            yield running
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def big_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real clip of about 12 MiB (lossless H.264 of the wave with noise): three 5 MiB parts."""
    path = tmp_path_factory.mktemp("big") / "big wave.mp4"
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 360, 640, "yuv420p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for frame in source_frames(60):
            noisy = np.clip(frame.astype(np.int16) + rng.integers(-12, 13, frame.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert path.stat().st_size > 10 * MIB
    return path


def client_of(stack: LocalStack) -> Client:
    assert stack.info is not None
    return Client(stack.info.api_url, api_key=stack.info.api_key)


def s3_of(stack: LocalStack) -> Any:
    """A user's own boto3 client on the stack's S3 endpoint."""
    assert stack.info is not None
    return boto3.client(
        "s3",
        endpoint_url=stack.info.aws_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


def wait_for_jobs(client: Client, count: int, **filters: Any) -> list[dict[str, Any]]:
    for _ in range(600):  # a bounded number of polls, never a timing assertion
        jobs: list[dict[str, Any]] = client.request("GET", "/jobs", **filters)["jobs"]
        if len(jobs) >= count:
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} job(s) with {filters} appeared")


def test_an_object_put_under_incoming_becomes_a_succeeded_job_and_a_redelivery_changes_nothing(
    stack: LocalStack,
) -> None:
    assert stack.info is not None
    client, s3 = client_of(stack), s3_of(stack)
    key = "incoming/local/lab day 1/wave+portrait.mp4"
    s3.put_object(Bucket=stack.info.bucket, Key=key, Body=data_path("videos/one_hand_wave_portrait.mp4").read_bytes())
    [job] = wait_for_jobs(client, 1, tag="upload-trigger")
    finished = client.wait(job["id"], poll_s=0.3, timeout_s=300)
    assert finished["status"] == "SUCCEEDED", finished
    assert finished["summary"]["frames_with_hands"] >= 170
    video = client.get_video(job["video_id"])
    assert video["s3_key"] == key and video["status"] == "PROCESSED"

    # SQS delivers at least once: the same notification again creates no second video or job.
    etag = s3.head_object(Bucket=stack.info.bucket, Key=key)["ETag"].strip('"')
    again = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": stack.info.bucket},
                    "object": {"key": quote_plus(key), "eTag": etag},  # form-encoded, as S3 writes keys
                },
            }
        ]
    }
    stack._sqs.send_message(QueueUrl=stack.info.queue_urls["uploads"], MessageBody=json.dumps(again))
    assert stack.drain(timeout_s=120)
    [poller] = [p for p in stack.pollers if p.name == "uploads"]
    assert poller.stats.handler_errors == 0
    assert [j["id"] for j in client.request("GET", "/jobs", tag="upload-trigger")["jobs"]] == [job["id"]]
    assert [v["id"] for v in client.list_videos() if v["s3_key"] == key] == [video["id"]]

    # A file that is not a video is not dropped silently: its video has a FAILED job saying why.
    s3.put_object(Bucket=stack.info.bucket, Key="incoming/local/readme.txt", Body=b"hello", ContentType="text/plain")
    [failed] = wait_for_jobs(client, 1, tag="upload-trigger", status="failed")
    assert failed["error"]["code"] == "not_a_video" and ".txt" in failed["error"]["message"]


def test_a_big_file_goes_up_in_parallel_parts_and_its_multipart_object_processes(
    stack: LocalStack, big_video: Path
) -> None:
    assert stack.info is not None
    client = client_of(stack)
    video = client.register_video(big_video)
    upload = video["upload"]
    assert upload["method"] == "multipart" and upload["part_size_bytes"] == 5 * MIB and upload["part_count"] == 3
    seen: list[tuple[int, int]] = []
    done = upload_file(client, video, big_video, progress=lambda n, total: seen.append((n, total)), workers=3)
    assert done["status"] == "UPLOADED" and done["size_bytes"] == big_video.stat().st_size
    assert seen[-1] == (big_video.stat().st_size, big_video.stat().st_size)
    etag = s3_of(stack).head_object(Bucket=stack.info.bucket, Key=video["s3_key"])["ETag"]
    assert etag.strip('"').endswith("-3")  # S3's ETag of a three-part object
    with pytest.raises(ApiError) as refused:
        client.upload_state(video["id"])
    assert refused.value.status == 409 and "UPLOADED" in refused.value.message
    job = client.create_job(video["id"], {"num_hands": 1})
    finished = client.wait(job["id"], poll_s=0.3, timeout_s=300)
    assert finished["status"] == "SUCCEEDED", finished
    assert finished["summary"]["frames_processed"] == 60
    # The worker probed it by ranged reads and keyed its frame index by the multipart ETag.
    index = s3_of(stack).head_object(Bucket=stack.info.bucket, Key=frame_index_key(video["id"], etag.strip('"')))
    assert index["ContentLength"] > 0


class RecordingClient(Client):
    """The real client, noting which part URLs it asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[int] = []

    def upload_parts_urls(self, video_id: str, part_numbers: list[int]) -> list[dict[str, Any]]:
        self.asked.extend(part_numbers)
        return super().upload_parts_urls(video_id, part_numbers)


class Interrupted(Exception):
    pass


def test_an_interrupted_upload_resumes_sending_only_the_missing_parts(stack: LocalStack, big_video: Path) -> None:
    assert stack.info is not None
    client = client_of(stack)
    video = client.register_video(big_video, title="resumed")

    def stop_in_part_two(done: int, total: int) -> None:
        if done > 6 * MIB:  # part 1 is in; part 2 is cut off mid-stream
            raise Interrupted

    with pytest.raises(Interrupted):
        upload_file(client, video, big_video, progress=stop_in_part_two, workers=1)
    state = client.upload_state(video["id"])
    assert [p["part_number"] for p in state["uploaded_parts"]] == [1]

    resumed = RecordingClient(stack.info.api_url, api_key=stack.info.api_key)
    seen: list[int] = []
    done = upload_file(resumed, video, big_video, progress=lambda n, total: seen.append(n), workers=2)
    assert sorted(resumed.asked) == [2, 3] and seen[0] == 5 * MIB  # part 1 counted as done from the start
    assert done["status"] == "UPLOADED" and done["size_bytes"] == big_video.stat().st_size
    body = s3_of(stack).get_object(Bucket=stack.info.bucket, Key=video["s3_key"])["Body"].read()
    assert body == big_video.read_bytes()


def test_handpipe_upload_resumes_an_interrupted_upload_in_parts(
    stack: LocalStack, big_video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a user types after Ctrl-C in `handpipe submit`: the same command line finishes the upload."""
    assert stack.info is not None
    client = client_of(stack)
    video = client.register_video(big_video, title="resumed from the CLI")

    def stop_after_part_one(done: int, total: int) -> None:
        if done > 6 * MIB:
            raise Interrupted

    with pytest.raises(Interrupted):
        upload_file(client, video, big_video, progress=stop_after_part_one, workers=1)
    args = ["--api-url", stack.info.api_url, "--api-key", stack.info.api_key]
    assert cli_main(["upload", video["id"], str(big_video), *args]) == 0
    assert "uploaded" in capsys.readouterr().out
    uploaded = client.get_video(video["id"])
    assert uploaded["status"] == "UPLOADED" and uploaded["size_bytes"] == big_video.stat().st_size
    body = s3_of(stack).get_object(Bucket=stack.info.bucket, Key=video["s3_key"])["Body"].read()
    assert body == big_video.read_bytes()


def test_complete_refuses_a_missing_part_and_abort_deletes_the_video(stack: LocalStack, big_video: Path) -> None:
    assert stack.info is not None
    client, s3 = client_of(stack), s3_of(stack)
    video = client.register_video(big_video, title="incomplete")
    [part] = client.upload_parts_urls(video["id"], [1])
    assert part["size_bytes"] == 5 * MIB
    with big_video.open("rb") as file:
        request = urllib.request.Request(
            part["url"], data=file.read(5 * MIB), method="PUT", headers={"Content-Type": "application/octet-stream"}
        )
        response = urllib.request.urlopen(request)
    etag = response.headers["ETag"].strip('"')
    with pytest.raises(ApiError) as refused:
        client.complete_upload(video["id"], [{"part_number": 1, "etag": etag}])
    assert refused.value.status == 409 and "missing: 2, 3" in refused.value.message
    with pytest.raises(ApiError) as refused:
        client.complete_upload(video["id"], [{"part_number": n, "etag": etag} for n in (1, 2, 3)])
    assert refused.value.status == 409 and "2, 3" in refused.value.message
    with pytest.raises(ApiError) as refused:
        client.upload_parts_urls(video["id"], [4])
    assert refused.value.status == 409 and "1 to 3" in refused.value.message

    assert client.abort_upload(video["id"])["deleted"] == video["id"]
    with pytest.raises(ApiError) as gone:
        client.get_video(video["id"])
    assert gone.value.status == 404
    uploads = s3.list_multipart_uploads(Bucket=stack.info.bucket).get("Uploads", [])
    assert video["s3_key"] not in [u["Key"] for u in uploads]

    # Deleting a video whose upload is unfinished aborts the upload too.
    other = client.register_video(big_video, title="deleted")
    assert other["s3_key"] in [u["Key"] for u in s3.list_multipart_uploads(Bucket=stack.info.bucket)["Uploads"]]
    client.delete_video(other["id"])
    uploads = s3.list_multipart_uploads(Bucket=stack.info.bucket).get("Uploads", [])
    assert other["s3_key"] not in [u["Key"] for u in uploads]
