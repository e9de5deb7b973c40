"""The Python client against the real routes over HTTP (moto, SQLite, a real worker), and against a
scripted loopback server for what the real API will not do on cue: 503/429 with Retry-After,
connection resets, no answer, and the GET /jobs and cancel routes in their agreed shape."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
from pathlib import Path

import pytest

from chalicelib.shared.signatures import sign_body
from handpipe.client import (
    ApiError,
    Client,
    HandpipeConnectionError,
    HandpipeError,
    HandpipeTimeout,
    InvalidFile,
    RetryPolicy,
    StorageError,
    verify_webhook,
)
from tests.support.http_api import HttpApi
from tests.support.loopback import JobsApi, Loopback, Reply, Seen, job_view
from tests.support.paths import data_path

CLIP = "videos/asl_thanks_two_hands.mkv"


def api_client(api: HttpApi) -> Client:
    return Client(api.url, api_key=api.key)


# ------------------------------------------------------------------------------ the real routes


def test_every_video_and_job_route_over_http(http_api: HttpApi) -> None:
    client = api_client(http_api)
    assert client.health()["status"] == "ok"
    path = data_path(CLIP)
    heard: list[tuple[int, int]] = []
    video = client.register_video(path, title="thanks")
    assert video["status"] == "REGISTERED" and video["upload"]["method"] == "PUT"
    client.upload(video, path, progress=lambda done, total: heard.append((done, total)))
    assert heard[-1] == (path.stat().st_size, path.stat().st_size)
    job = client.create_job(video["id"], {"num_hands": 2}, tag="round-trip")
    assert job["status"] == "QUEUED" and job["tag"] == "round-trip"

    http_api.env.process(job["id"])
    finished = client.wait_for_job(job["id"], poll_s=0.1, timeout_s=60)
    assert finished["status"] == "SUCCEEDED" and finished["summary"]["frames_processed"] == 51
    result = client.result(job["id"])
    assert result["summary"]["frames_processed"] == 51 and result["result"]["url"].startswith("http")
    assert len(client.download_result(job["id"])["frames"]) == 51
    frames = list(client.frames(job["id"], start_ms=500, end_ms=1000, page_size=4))
    assert len(frames) == 15 and all(500 <= f["timestamp_ms"] < 1000 for f in frames)

    assert [v["id"] for v in client.list_videos(limit=1)] == [video["id"]]
    assert [j["id"] for j in client.list_video_jobs(video["id"])] == [job["id"]]
    assert client.get_video(video["id"])["status"] == "PROCESSED"
    with pytest.raises(ApiError) as there:
        client.new_upload_url(video["id"])  # the file is in the bucket: nothing to upload again
    assert there.value.status == 409
    assert client.delete_video(video["id"])["deleted"] == video["id"]
    with pytest.raises(ApiError) as gone:
        client.get_video(video["id"])
    assert gone.value.status == 404 and gone.value.code == "not_found"


def test_register_an_object_already_in_the_bucket_by_its_key(http_api: HttpApi) -> None:
    env = http_api.env
    key = "incoming/tester/from-the-lab.mkv"
    env.s3.put_object(Bucket=env.bucket, Key=key, Body=data_path(CLIP).read_bytes(), ContentType="video/x-matroska")
    video = api_client(http_api).register_video(s3_key=key, title="lab")
    assert video["status"] == "UPLOADED" and video["s3_key"] == key and "upload" not in video
    with pytest.raises(ApiError) as twice:
        api_client(http_api).register_video(s3_key=key)
    assert twice.value.status == 409
    with pytest.raises(ValueError):
        api_client(http_api).register_video(data_path(CLIP), s3_key=key)


def test_a_large_upload_is_streamed_in_blocks_with_progress(http_api: HttpApi, tmp_path: Path) -> None:
    """3 MiB (a clip padded past its end: S3 stores bytes, it does not decode them) reported as it goes."""
    big = tmp_path / "big.mkv"
    big.write_bytes(data_path(CLIP).read_bytes() + bytes(3 * 1024 * 1024))
    client = api_client(http_api)
    heard: list[int] = []
    video = client.register_video(big)
    client.upload(video, big, progress=lambda done, total: heard.append(done))
    assert len(heard) >= 3 and heard == sorted(heard) and heard[-1] == big.stat().st_size
    env = http_api.env
    assert env.s3.head_object(Bucket=env.bucket, Key=video["s3_key"])["ContentLength"] == big.stat().st_size


def test_files_that_cannot_be_sent_are_refused_before_any_request(tmp_path: Path) -> None:
    with Loopback(lambda seen: Reply(500, {"message": "must not be called"})) as server:
        client = Client(server.url, api_key="k" * 20)
        empty = tmp_path / "empty.mp4"
        empty.write_bytes(b"")
        with pytest.raises(InvalidFile, match=r"^empty.mp4 is empty \(0 bytes\)$"):
            client.register_video(empty)
        with pytest.raises(InvalidFile, match="does not exist"):
            client.submit(tmp_path / "missing.mp4")
        assert server.seen == []


def test_an_upload_sends_content_length_not_chunks(tmp_path: Path) -> None:
    """A presigned PUT must carry the exact Content-Length it was signed for (S3 refuses chunked bodies)."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x" * 200_000)
    with Loopback(lambda seen: Reply(200, b"")) as server:
        video = {
            "id": "vid_" + "0" * 32,
            "size_bytes": 200_000,
            "upload": {"method": "PUT", "url": server.url + "/bucket/key", "headers": {"Content-Type": "video/mp4"}},
        }
        Client(server.url).upload(video, clip)  # type: ignore[arg-type]
        (put,) = server.seen
    assert put.method == "PUT" and put.headers["content-length"] == "200000" and "transfer-encoding" not in put.headers
    assert put.body == clip.read_bytes()


def test_a_refused_presigned_upload_is_a_storage_error_with_s3s_message(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x" * 1000)
    expired = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    with Loopback(lambda seen: Reply(403, expired)) as server:
        video = {"id": "vid_x", "size_bytes": 1000, "upload": {"method": "PUT", "url": server.url, "headers": {}}}
        with pytest.raises(StorageError) as refused:
            Client(server.url).upload(video, clip)  # type: ignore[arg-type]
        video["size_bytes"] = 999
        with pytest.raises(InvalidFile, match="has 1000 bytes but video vid_x was registered with 999"):
            Client(server.url).upload(video, clip)  # type: ignore[arg-type]
    assert refused.value.status == 403 and refused.value.message == "AccessDenied: Request has expired"


def test_a_download_cut_short_is_fetched_again_whole(tmp_path: Path) -> None:
    content = bytes(range(256)) * 4000
    served: list[str] = []

    def script(seen: Seen) -> Reply:
        if seen.path.endswith("/export"):
            return Reply(200, {"format": "parquet", "columns": [], "rows": 0, "url": f"{server.url}/file"})
        served.append("short" if not served else "answer")
        return Reply(200, content, action=served[-1])

    server = Loopback(script)
    with server:
        saved = Client(server.url, api_key="k" * 20).download_export("job_x", tmp_path / "hands.parquet", "parquet")
    assert served == ["short", "answer"] and (tmp_path / "hands.parquet").read_bytes() == content
    assert saved["path"] == str(tmp_path / "hands.parquet") and sorted(p.name for p in tmp_path.iterdir()) == [
        "hands.parquet"
    ]


# ------------------------------------------------------------------------------ retries and errors


def recording_client(url: str, **retry: float) -> tuple[Client, list[float]]:
    waits: list[float] = []
    return Client(url, api_key="k" * 20, timeout_s=5, retry=RetryPolicy(**retry), sleep=waits.append), waits  # type: ignore[arg-type]


def answers(*replies: Reply) -> list[Reply]:
    return list(replies)


def scripted(replies: list[Reply]) -> Loopback:
    def script(seen: Seen) -> Reply:
        return replies.pop(0) if len(replies) > 1 else replies[0]

    return Loopback(script)


HEALTHY = Reply(200, {"videos": [], "next_token": None})


def test_503_and_429_are_retried_after_what_retry_after_says() -> None:
    busy = Reply(503, {"code": "unavailable", "message": "the database is down"}, {"Retry-After": "7"})
    throttled = Reply(429, {"message": "Too Many Requests"}, {"Retry-After": "2"})
    with scripted([busy, throttled, HEALTHY]) as server:
        client, waits = recording_client(server.url)
        assert list(client.list_videos()) == []
    assert waits == [7.0, 2.0] and len(server.seen) == 3


def test_retry_after_as_an_http_date_and_the_cap_on_a_wait() -> None:
    soon = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20), usegmt=True)
    dated = Reply(503, {"message": "busy"}, {"Retry-After": soon})
    far = Reply(503, {"message": "busy"}, {"Retry-After": "3600"})
    with scripted([dated, far, HEALTHY]) as server:
        client, waits = recording_client(server.url, max_wait_s=30)
        client.get_video("vid_x")
    assert 15 <= waits[0] <= 20 and waits[1] == 30.0


def test_retries_are_bounded_and_the_last_answer_is_raised() -> None:
    with scripted([Reply(503, {"code": "unavailable", "message": "down"}, {"Retry-After": "1"})]) as server:
        client, waits = recording_client(server.url, attempts=4)
        with pytest.raises(ApiError) as refused:
            client.get_job("job_x")
    assert refused.value.status == 503 and refused.value.retry_after_s == 1.0 and refused.value.message == "down"
    assert len(server.seen) == 4 and waits == [1.0, 1.0, 1.0]


def test_without_retry_after_the_waits_double() -> None:
    with scripted([Reply(429, {"message": "slow down"})]) as server:
        client, waits = recording_client(server.url, attempts=4, default_wait_s=0.5)
        with pytest.raises(ApiError):
            client.get_job("job_x")
    assert waits == [0.5, 1.0, 2.0]


def test_other_errors_are_not_retried() -> None:
    with scripted([Reply(404, {"code": "not_found", "message": "no job job_x"})]) as server:
        client, waits = recording_client(server.url)
        with pytest.raises(ApiError) as missing:
            client.get_job("job_x")
    assert (missing.value.status, missing.value.code, str(missing.value)) == (
        404,
        "not_found",
        "HTTP 404: no job job_x",
    )
    assert len(server.seen) == 1 and waits == []


def test_a_reset_connection_is_retried_for_a_read_and_not_for_a_create() -> None:
    reset = Reply(action="reset")
    with scripted([reset, HEALTHY]) as server:
        client, _ = recording_client(server.url)
        assert list(client.list_videos()) == []
        assert len(server.seen) == 2
    with scripted([reset, Reply(202, job_view(1))]) as server:
        client, _ = recording_client(server.url)
        with pytest.raises(HandpipeConnectionError, match="closed the connection"):
            client.create_job("vid_x")  # a POST is not repeated: it might have been done
        assert len(server.seen) == 1


def test_a_post_goes_through_an_api_that_restarts_under_it() -> None:
    """`chalice local` restarts on every change: for a moment its port refuses connections. A refused
    request never arrived, so the client sends it again, POST or not."""
    gone = Loopback(lambda seen: HEALTHY)
    port = gone.server.server_address[1]
    gone.server.server_close()
    restarted: list[Loopback] = []

    def wait_and_restart(seconds: float) -> None:  # the API comes back while the client waits
        restarted.append(Loopback(lambda seen: Reply(202, job_view(1, status="QUEUED")), port=port).__enter__())

    client = Client(f"http://127.0.0.1:{port}", api_key="k" * 20, sleep=wait_and_restart)
    try:
        assert client.create_job("vid_x", {"num_hands": 1})["status"] == "QUEUED"
        (server,) = restarted
        assert [(s.method, s.path) for s in server.seen] == [("POST", "/videos/vid_x/jobs")]
    finally:
        for server in restarted:
            server.__exit__()


def test_every_kind_of_no_answer_is_one_exception_type() -> None:
    with scripted([Reply(action="reset")]) as server:
        client, _ = recording_client(server.url, connection_retries=2)
        with pytest.raises(HandpipeConnectionError) as reset:
            client.get_job("job_x")
        assert len(server.seen) == 3
    with scripted([Reply(action="hang")]) as server:
        client = Client(server.url, timeout_s=0.2, retry=RetryPolicy(connection_retries=0))
        with pytest.raises(HandpipeConnectionError, match=r"did not answer within 0\.2 s") as slow:
            client.get_job("job_x")
    closed = Loopback(lambda seen: HEALTHY)  # bound, then closed: nothing listens on its port
    closed.server.server_close()
    waits: list[float] = []
    client = Client(closed.url, retry=RetryPolicy(connection_retries=2), sleep=waits.append)
    with pytest.raises(HandpipeConnectionError, match="connection refused") as refused:
        client.create_job("vid_x")  # refused: never arrived, so even a POST is tried again
    assert waits == [0.5, 1.0]
    with pytest.raises(HandpipeConnectionError, match="its host name does not resolve"):
        Client("http://no-such-host.invalid", retry=RetryPolicy(connection_retries=0)).health()
    for error in (reset.value, slow.value, refused.value):
        assert isinstance(error, HandpipeError) and isinstance(error, ConnectionError)


def test_health_reports_a_degraded_api_at_once() -> None:
    degraded = {"status": "degraded", "checks": {"database": "failing: timeout", "bucket": "ok"}}
    with scripted([Reply(503, degraded)]) as server:
        client, waits = recording_client(server.url)
        assert client.health() == degraded
    assert waits == [] and len(server.seen) == 1
    closed = Loopback(lambda seen: HEALTHY)
    closed.server.server_close()
    client, waits = recording_client(closed.url)
    with pytest.raises(HandpipeConnectionError):
        client.health()  # a probe: whoever polls it learns at once that nothing answers
    assert waits == []


# ------------------------------------------------------------------------------ jobs across videos, cancel, wait


def test_list_jobs_filters_and_pages_through_get_jobs() -> None:
    jobs = [job_view(n, status="FAILED" if n % 2 else "SUCCEEDED", tag="day1") for n in range(1, 8)]
    with Loopback(JobsApi(jobs)) as server:
        client = Client(server.url, api_key="k" * 20)
        failed = list(client.list_jobs(status="failed", tag="day1", page_size=2))
        assert [j["id"] for j in failed] == [j["id"] for j in jobs if j["status"] == "FAILED"]
        assert [s.query.get("next_token") for s in server.seen] == [None, "2"]
        assert server.seen[0].query == {"status": "FAILED", "tag": "day1", "limit": "2"}
        server.seen.clear()
        first_three = list(client.list_jobs(limit=3, page_size=50))
        assert len(first_three) == 3 and server.seen[0].query["limit"] == "3"
        since = dt.datetime(2026, 1, 31, 9, 0, tzinfo=dt.UTC)
        list(client.list_jobs(created_after=since, video_id=jobs[0]["video_id"]))
        assert server.seen[-1].query["created_after"] == "2026-01-31T09:00:00+00:00"
        list(client.list_jobs(created_after=1_780_000_000_000))
        assert server.seen[-1].query["created_after"] == "1780000000000"


def test_cancel_a_running_job_and_a_finished_one() -> None:
    jobs = [job_view(1, status="IN_PROGRESS"), job_view(2, status="SUCCEEDED")]
    with Loopback(JobsApi(jobs)) as server:
        client = Client(server.url, api_key="k" * 20)
        assert client.cancel_job(jobs[0]["id"])["status"] == "CANCELLED"
        with pytest.raises(ApiError) as finished:
            client.cancel_job(jobs[1]["id"])
        assert finished.value.status == 409 and "SUCCEEDED" in finished.value.message
        assert [s.method for s in server.seen] == ["POST", "POST"] and server.seen[0].body == b""


def test_wait_ends_on_cancelled_and_times_out_with_its_own_error() -> None:
    states = [job_view(1, status="QUEUED"), job_view(1, status="IN_PROGRESS"), job_view(1, status="CANCELLED")]
    with scripted([Reply(200, s) for s in states]) as server:
        client, waits = recording_client(server.url)
        seen: list[str] = []
        job = client.wait_for_job(states[0]["id"], on_progress=lambda j: seen.append(j["status"]), poll_s=0.25)
    assert job["status"] == "CANCELLED" and seen == ["QUEUED", "IN_PROGRESS", "CANCELLED"] and waits == [0.25, 0.25]
    with scripted([Reply(200, job_view(1, status="IN_PROGRESS"))]) as server:
        client = Client(server.url, api_key="k" * 20)
        with pytest.raises(HandpipeTimeout, match="is still IN_PROGRESS after 0 s"):
            client.wait_for_job(states[0]["id"], timeout_s=0, poll_s=0.01)


def test_create_job_sends_tag_and_webhook_in_the_agreed_shape() -> None:
    with scripted([Reply(202, job_view(1, status="QUEUED"))]) as server:
        Client(server.url, api_key="k" * 20).create_job(
            "vid_x", {"num_hands": 1}, tag="day1", webhook_url="https://example.com/hook"
        )
    assert json.loads(server.seen[0].body) == {
        "options": {"num_hands": 1},
        "tag": "day1",
        "notify": {"webhook_url": "https://example.com/hook"},
    }


def test_the_webhook_secret_and_its_rotation() -> None:
    versions = [1]

    def script(seen: Seen) -> Reply:
        if seen.method == "POST" and seen.path == "/webhook-secret/rotate":
            versions.append(versions[-1] + 1)
        elif not (seen.method == "GET" and seen.path == "/webhook-secret"):
            return Reply(404, {"code": "not_found", "message": "no such route"})
        view = {"secret": f"s{versions[-1]}", "version": versions[-1], "rotated_at": None}
        return Reply(200, {**view, "header": "X-Handpipe-Signature", "algorithm": "sha256=<hex HMAC-SHA256>"})

    with Loopback(script) as server:
        client = Client(server.url, api_key="k" * 20)
        assert client.webhook_secret()["version"] == 1
        rotated = client.rotate_webhook_secret()
        assert (rotated["secret"], rotated["version"]) == ("s2", 2) and server.seen[-1].body == b""


def test_verify_webhook_checks_the_raw_body_against_the_secret() -> None:
    body = json.dumps({"type": "job.succeeded", "event_id": "evt_1", "job_id": "job_x", "time": time.time()}).encode()
    header = sign_body(body, "s3cret")
    assert verify_webhook(body, header, "s3cret")
    assert verify_webhook(body.decode(), header, "s3cret")
    assert not verify_webhook(body + b" ", header, "s3cret")
    assert not verify_webhook(body, header, "another")
    assert not verify_webhook(body, None, "s3cret")
