"""Routes and queue handlers through chalice.test.Client, on moto S3/SQS and a real SQLite file;
the worker runs for real on the messages the orchestrator sends."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chalicelib.adapters.database import Database, IntegrityError
from chalicelib.adapters.migrations import LATEST_VERSION, MIGRATIONS
from chalicelib.config import Settings
from chalicelib.runtime import Runtime, runtime, use_runtime
from chalicelib.service import orchestration as orchestration_module
from chalicelib.service.common import new_id, now_ms
from chalicelib.service.orchestration import SweepReport
from chalicelib.service.videos import incoming_prefix
from handpipe.local.pollers import LambdaContext
from tests.support.api import OTHER, OTHER_KEY, Env, register
from tests.support.paths import data_path

# ------------------------------------------------------------------------------------ the whole flow


def test_register_upload_trigger_process_and_read_back(env: Env) -> None:
    video = register(env)
    assert video["status"] == "REGISTERED" and video["upload"]["method"] == "PUT"
    status, job = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"num_hands": 2}, "tag": "exp-1"})
    assert status == 202 and job["status"] == "QUEUED" and job["tag"] == "exp-1"
    assert env.call("GET", f"/videos/{video['id']}")[1]["status"] == "UPLOADED"

    finished = env.process(job["id"])
    assert finished["status"] == "SUCCEEDED", finished
    assert finished["progress"]["percent"] == 100.0 and finished["progress"]["segments_done"] == 1
    assert finished["video"]["container"] == "mkv" and finished["timings"]["run_ms"] is not None
    assert finished["summary"]["frames_with_hands"] >= 45

    status, result = env.call("GET", f"/jobs/{job['id']}/result")
    assert status == 200 and result["summary"]["frames_processed"] == 51
    with urllib.request.urlopen(result["result"]["url"]) as response:
        assert response.read()[:2] == b"\x1f\x8b"  # the full result, gzip
    # Pictures drawn by the worker after the job succeeded; no annotated video unless asked for.
    assert result["pictures"]["annotated_video"] is None
    for name in ("contact_sheet", "timeline"):
        with urllib.request.urlopen(result["pictures"][name]) as response:
            assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"

    status, page = env.call("GET", f"/jobs/{job['id']}/frames?start_ms=500&end_ms=1000&max_results=5")
    assert status == 200 and len(page["frames"]) == 5 and page["next_token"]
    seen = list(page["frames"])
    while page["next_token"]:
        page = env.call(
            "GET", f"/jobs/{job['id']}/frames?start_ms=500&end_ms=1000&max_results=5&next_token={page['next_token']}"
        )[1]
        seen += page["frames"]
    stamps = [f["timestamp_ms"] for f in seen]
    assert stamps == sorted(set(stamps)) and all(500 <= t < 1000 for t in stamps) and len(stamps) == 15
    assert all(len(h["landmarks"]) == 21 for f in seen for h in f["hands"])

    video_after = env.call("GET", f"/videos/{video['id']}")[1]
    assert video_after["status"] == "PROCESSED" and video_after["metadata"]["fps"] == pytest.approx(30)
    jobs = env.call("GET", f"/videos/{video['id']}/jobs")[1]["jobs"]
    assert [j["id"] for j in jobs] == [job["id"]]


def run_records(env: Env, bodies: list[str]) -> None:
    records = [
        {"messageId": str(n), "body": b, "attributes": {"ApproximateReceiveCount": "1"}} for n, b in enumerate(bodies)
    ]
    env.worker.handle_batch({"Records": records}, LambdaContext("worker", 900))


def test_redelivered_messages_change_nothing_twice(env: Env) -> None:
    """Every message of every hop delivered twice, and events also out of order."""
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    [request] = env.take("jobs")
    env.deliver("jobs", [request])
    env.deliver("jobs", [request])
    probes = env.take("work")  # the job stays QUEUED until the probe answers: asked twice, harmless
    assert 1 <= len(probes) <= 2 and all('"video.probe"' in p for p in probes)
    run_records(env, probes * 2)
    probed = env.take("events")
    env.deliver("events", probed)
    env.deliver("events", probed)
    items = env.take("work")
    assert len(items) == 1 and '"work.item"' in items[0]  # one work item per segment, whatever came twice
    run_records(env, items * 2)
    events = env.take("events")
    env.deliver("events", events)
    before = env.call("GET", f"/jobs/{job['id']}")[1]
    env.deliver("events", list(reversed(events)) * 2)  # again, twice, out of order
    after = env.call("GET", f"/jobs/{job['id']}")[1]
    assert before["status"] == after["status"] == "SUCCEEDED"
    assert after["progress"] == before["progress"] and after["timings"] == before["timings"]
    row = env.db.fetchone("SELECT segments_done, frames_done FROM jobs WHERE id = ?", [job["id"]])
    assert row == {"segments_done": 1, "frames_done": 51}
    [render] = env.take("work")  # the pictures are asked for once, however often the last event came
    assert '"job.render"' in render


def test_undecodable_upload_fails_the_job_with_the_reason(env: Env, tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_bytes(b"not a video at all\n" * 100)
    status, video = env.call(
        "POST", "/videos", {"filename": "notes.mp4", "content_type": "video/mp4", "size_bytes": fake.stat().st_size}
    )
    env.upload(video, fake)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    finished = env.process(job["id"])
    assert finished["status"] == "FAILED"
    assert finished["error"]["code"] == "not_video" and "not a video" in finished["error"]["message"]
    assert env.call("GET", f"/videos/{video['id']}")[1]["status"] == "FAILED"
    assert env.call("GET", f"/jobs/{job['id']}/result")[0] == 409


def test_client_token_makes_the_request_idempotent(env: Env) -> None:
    video = register(env)
    body = {"options": {"sample_fps": 5}, "client_token": "run-1"}
    first = env.call("POST", f"/videos/{video['id']}/jobs", body)
    again = env.call("POST", f"/videos/{video['id']}/jobs", body)
    assert first[0] == 202 and again[0] == 200 and again[1]["id"] == first[1]["id"]
    assert len(env.take("jobs")) == 1  # queued once
    status, error = env.call(
        "POST", f"/videos/{video['id']}/jobs", {"options": {"sample_fps": 6}, "client_token": "run-1"}
    )
    assert status == 409 and "client_token" in error["message"]


def test_time_range_and_sampling_reach_the_worker(env: Env) -> None:
    video = register(env)
    job = env.call(
        "POST", f"/videos/{video['id']}/jobs", {"options": {"start_ms": 500, "end_ms": 1500, "sample_fps": 10}}
    )[1]
    finished = env.process(job["id"])
    assert finished["status"] == "SUCCEEDED"
    frames = env.call("GET", f"/jobs/{job['id']}/frames?max_results=1000")[1]["frames"]
    assert len(frames) == 10 and all(500 <= f["timestamp_ms"] < 1500 for f in frames)


# ------------------------------------------------------------------------------------ listing


def test_videos_newest_first_with_status_filter_and_pagination(env: Env) -> None:
    ids = [register(env, upload=False)["id"] for _ in range(5)]
    seen, token = [], None
    while True:
        path = "/videos?limit=2" + (f"&next_token={token}" if token else "")
        status, page = env.call("GET", path)
        assert status == 200 and len(page["videos"]) <= 2
        seen += [v["id"] for v in page["videos"]]
        token = page["next_token"]
        if not token:
            break
    assert seen == list(reversed(ids))
    assert env.call("GET", "/videos?status=PROCESSED")[1]["videos"] == []
    assert len(env.call("GET", "/videos?status=REGISTERED")[1]["videos"]) == 5


def test_register_an_object_already_in_the_bucket(env: Env) -> None:
    env.s3.upload_file(str(data_path("videos/asl_thanks_two_hands.mkv")), env.bucket, "incoming/tester/thanks.mkv")
    status, video = env.call("POST", "/videos", {"s3_key": "incoming/tester/thanks.mkv", "title": "from the bucket"})
    assert status == 201 and video["status"] == "UPLOADED" and "upload" not in video
    assert video["size_bytes"] == data_path("videos/asl_thanks_two_hands.mkv").stat().st_size
    status, error = env.call("POST", "/videos", {"s3_key": "incoming/tester/missing.mkv"})
    assert status == 409 and "no object" in error["message"]


def put_incoming(env: Env, *keys: str) -> None:
    for key in keys:
        env.s3.put_object(Bucket=env.bucket, Key=key, Body=b"not really a video", ContentType="video/mp4")


def bucket_keys(env: Env, prefix: str = "incoming/") -> set[str]:
    return {item["Key"] for item in env.s3.list_objects_v2(Bucket=env.bucket, Prefix=prefix).get("Contents", [])}


def test_a_caller_registers_keys_only_under_its_own_incoming_prefix(env: Env) -> None:
    put_incoming(env, "incoming/someone-else/theirs.mp4", "incoming/tester/mine.mp4", "incoming/loose.mp4")
    for key in ("incoming/someone-else/theirs.mp4", "incoming/loose.mp4", "incoming/tester", "videos/x/a.mp4"):
        status, error = env.call("POST", "/videos", {"s3_key": key})
        assert status == 403 and "incoming/tester/" in error["message"], (key, error)
    for key in ("incoming/tester/../someone-else/theirs.mp4", "incoming/tester//mine.mp4", "incoming/tester/"):
        status, error = env.call("POST", "/videos", {"s3_key": key, "filename": "x.mp4"})
        assert status == 400 and "s3_key" in error["message"], (key, error)
    status, theirs = env.call("POST", "/videos", {"s3_key": "incoming/someone-else/theirs.mp4"}, headers=OTHER)
    assert status == 201, theirs
    assert env.call("POST", "/videos", {"s3_key": "incoming/tester/mine.mp4"})[0] == 201
    # The owner's own prefix is percent-encoded, so "a/b" cannot reach into "a"'s folder or back.
    assert incoming_prefix("arn:aws:iam::1:user/a") == "incoming/arn%3Aaws%3Aiam%3A%3A1%3Auser%2Fa/"
    assert not incoming_prefix("team/b").startswith(incoming_prefix("team"))


def test_one_video_per_key_a_second_registration_is_a_conflict(env: Env) -> None:
    put_incoming(env, "incoming/tester/once.mp4")
    first = env.call("POST", "/videos", {"s3_key": "incoming/tester/once.mp4"})
    assert first[0] == 201
    status, error = env.call("POST", "/videos", {"s3_key": "incoming/tester/once.mp4", "title": "again"})
    assert status == 409 and "already registered" in error["message"]
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM videos") == {"n": 1}
    # The database's unique index holds even when two registrations race past the first check.
    video = runtime().videos.get(first[1]["id"])
    assert video is not None
    with pytest.raises(IntegrityError):
        runtime().videos.add(replace(video, id=new_id("vid")))


def test_deleting_a_video_registered_by_key_removes_exactly_that_key(env: Env) -> None:
    put_incoming(
        env,
        "incoming/tester/a.mp4",
        "incoming/tester/a.mp4.bak",
        "incoming/tester/a.mp4/inside.mp4",
        "incoming/tester/b.mp4",
    )
    video = env.call("POST", "/videos", {"s3_key": "incoming/tester/a.mp4"})[1]
    status, done = env.call("DELETE", f"/videos/{video['id']}")
    assert status == 200 and done["objects_removed"] == 1
    assert bucket_keys(env) == {
        "incoming/tester/a.mp4.bak",
        "incoming/tester/a.mp4/inside.mp4",
        "incoming/tester/b.mp4",
    }
    # Gone already (someone else removed it): nothing removed, and the count says so.
    video = env.call("POST", "/videos", {"s3_key": "incoming/tester/b.mp4"})[1]
    env.s3.delete_object(Bucket=env.bucket, Key="incoming/tester/b.mp4")
    assert env.call("DELETE", f"/videos/{video['id']}")[1]["objects_removed"] == 0
    assert bucket_keys(env) == {"incoming/tester/a.mp4.bak", "incoming/tester/a.mp4/inside.mp4"}


# ------------------------------------------------------------------------------------ delete


def test_delete_removes_objects_and_rows_but_not_while_a_job_runs(env: Env) -> None:
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    status, error = env.call("DELETE", f"/videos/{video['id']}")
    assert status == 409 and "running" in error["message"]
    env.process(job["id"])
    listed = env.s3.list_objects_v2(Bucket=env.bucket, Prefix=f"results/{video['id']}/")["KeyCount"]
    # the probe's frame index, the part and its head, the merged result, the insights, three exports and
    # two pictures
    assert listed == 10
    status, done = env.call("DELETE", f"/videos/{video['id']}")
    assert status == 200 and done["objects_removed"] == 11  # and the video
    assert env.s3.list_objects_v2(Bucket=env.bucket, Prefix=f"results/{video['id']}/")["KeyCount"] == 0
    assert env.s3.list_objects_v2(Bucket=env.bucket, Prefix=f"videos/{video['id']}/")["KeyCount"] == 0
    assert env.call("GET", f"/videos/{video['id']}")[0] == 404
    assert env.call("GET", f"/jobs/{job['id']}")[0] == 404
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM segments WHERE job_id = ?", [job["id"]]) == {"n": 0}


# ------------------------------------------------------------------------------------ bad input


def test_trigger_before_upload_is_a_conflict(env: Env) -> None:
    video = register(env, upload=False)
    status, error = env.call("POST", f"/videos/{video['id']}/jobs", {})
    assert status == 409 and "uploaded" in error["message"]
    assert env.take("jobs") == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("GET", "/videos/vid_" + "0" * 32, None, 404, "no video"),
        ("GET", "/videos/../../etc/passwd", None, 403, ""),  # no such route, as API Gateway answers
        ("GET", "/jobs/job_" + "f" * 32, None, 404, "no job"),
        ("GET", "/jobs/' OR 1=1 --", None, 404, "no job"),
        ("GET", "/videos?limit=0", None, 400, "limit"),
        ("GET", "/videos?limit=abc", None, 400, "limit"),
        ("GET", "/videos?status=DROP TABLE videos", None, 400, "status"),
        ("GET", "/videos?next_token=!!!", None, 400, "next_token"),
        ("POST", "/videos", {"filename": "clip.exe"}, 400, "filename"),
        ("POST", "/videos", {"filename": "clip.mp4", "size_bytes": -1}, 400, "size_bytes"),
        ("POST", "/videos", {"filename": "clip.mp4", "size_bytes": 10**15}, 413, "limit"),
        ("POST", "/videos", {"filename": "clip.mp4", "content_type": "text/html"}, 400, "content_type"),
        ("POST", "/videos", {"filename": "clip.mp4", "colour": "red"}, 400, "unknown field"),
        ("POST", "/videos", {"title": "no file"}, 400, "filename is required"),
        ("POST", "/videos", {"filename": "clip.mp4", "size_bytes": 9, "title": "bell\x07"}, 400, "control"),
        ("POST", "/videos", {"filename": "clip.mp4"}, 400, "size_bytes is required"),
        ("POST", "/videos", {"filename": 42}, 400, "must be a string"),
        ("POST", "/videos", [1, 2], 400, "JSON object"),
        ("POST", "/videos", {"s3_key": "../../secret.mp4"}, 403, "s3_key"),  # outside the caller's prefix
    ],
)
def test_bad_requests_get_a_clear_4xx(env: Env, method: str, path: str, body: Any, status: int, fragment: str) -> None:
    got, answer = env.call(method, path, body)
    assert got == status, answer
    assert isinstance(answer, dict) and fragment in answer["message"]
    assert "Traceback" not in json.dumps(answer)
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM videos") == {"n": 0}


def test_hostile_input_is_a_4xx_not_a_500(env: Env) -> None:
    status, answer = env.call("POST", "/videos", raw=b"[" * 30_000 + b"]" * 30_000)
    assert status == 400 and "nested too deeply" in answer["message"]
    for key in ("x" * 600, "incoming/tester/" + "a" * 600 + ".mp4"):  # 513 to 900 characters
        status, answer = env.call("POST", "/videos", {"s3_key": key})
        assert status == 400 and "longer than 512" in answer["message"], answer
    # A header value of non-ASCII characters, as a client may send it (latin-1 on the wire).
    status, answer = env.call("GET", "/videos", headers={"x-api-key": "clé-0123456789abcdefgh"})
    assert status == 403 and "not valid" in answer["message"]
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM videos") == {"n": 0}


def test_malformed_json_and_bad_job_options(env: Env) -> None:
    status, answer = env.call("POST", "/videos", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["message"]
    video = register(env)
    for options, fragment in [
        ({"num_hands": 9}, "num_hands"),
        ({"model": "huge"}, "model"),
        ({"sample_fps": "fast"}, "sample_fps"),
        ({"min_detection_confidence": 1.5}, "min_detection_confidence"),
        ({"bogus": 1}, "unknown option"),
    ]:
        status, answer = env.call("POST", f"/videos/{video['id']}/jobs", {"options": options})
        assert status == 400 and fragment in answer["message"], (options, answer)
    assert env.take("jobs") == []
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM jobs") == {"n": 0}
    # Valid by the OpenAPI document, which cannot compare two fields: a job over an empty range is made
    # FAILED at once, with the reason, and nothing is queued.
    status, job = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"start_ms": 5000, "end_ms": 1000}})
    assert status == 202 and job["status"] == "FAILED" and job["error"]["code"] == "empty_range", job
    assert "end_ms (1000) is not after start_ms (5000)" in job["error"]["message"]
    assert env.take("jobs") == []


def test_filenames_are_sanitised_into_the_key(env: Env) -> None:
    status, video = env.call("POST", "/videos", {"filename": "../../my clip (final)?.MP4", "size_bytes": 1000})
    assert status == 201
    assert video["filename"] == "my_clip_final.mp4"
    assert video["s3_key"] == f"videos/{video['id']}/my_clip_final.mp4"


def test_frames_and_result_wait_for_success(env: Env) -> None:
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    assert env.call("GET", f"/jobs/{job['id']}/frames")[0] == 409
    assert env.call("GET", f"/jobs/{job['id']}/result")[0] == 409


def test_health_checks_every_dependency(env: Env) -> None:
    status, answer = env.call("GET", "/health")
    assert status == 200 and answer["status"] == "ok"
    assert set(answer["checks"]) == {"database", "bucket", "jobs_queue", "work_queue"}


def test_poison_job_request_is_retried_not_swallowed(env: Env) -> None:
    event = env.client.events.generate_sqs_event(message_bodies=["{garbage"], queue_name="handpipe-jobs")
    with pytest.raises(RuntimeError, match="redeliver"):
        env.client.lambda_.invoke("plan_jobs", event)


def test_migrate_function_applies_migrations_once(env: Env) -> None:
    fresh = Database.from_url("sqlite:///:memory:")
    use_runtime(Runtime(Settings(bucket="b", jobs_queue_url="j", work_queue_url="w", db_url="x"), database=fresh))
    first = env.client.lambda_.invoke("migrate", {}).payload
    again = env.client.lambda_.invoke("migrate", {}).payload
    assert first["applied"] == [step.version for step in MIGRATIONS] and again["applied"] == []
    assert again["version"] == LATEST_VERSION
    assert fresh.fetchone("SELECT COUNT(*) AS n FROM videos") == {"n": 0}


# ------------------------------------------------------------------------------------ authentication

PROTECTED_ROUTES = [
    ("GET", "/videos"),
    ("POST", "/videos"),
    ("GET", f"/videos/vid_{'0' * 32}"),
    ("DELETE", f"/videos/vid_{'0' * 32}"),
    ("POST", f"/videos/vid_{'0' * 32}/jobs"),
    ("GET", f"/videos/vid_{'0' * 32}/jobs"),
    ("GET", f"/jobs/job_{'0' * 32}"),
    ("GET", f"/jobs/job_{'0' * 32}/result"),
    ("GET", f"/jobs/job_{'0' * 32}/frames"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED_ROUTES)
def test_every_route_but_health_needs_a_valid_key(env: Env, method: str, path: str) -> None:
    status, answer = env.call(method, path, {"filename": "a.mp4"}, headers={"x-api-key": ""})
    assert status == 401 and "x-api-key" in answer["message"]
    status, answer = env.call(method, path, {"filename": "a.mp4"}, headers={"x-api-key": "wrong-key-0123456789"})
    assert status == 403 and "not valid" in answer["message"]
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM videos") == {"n": 0}


def test_health_and_the_api_description_are_public(env: Env) -> None:
    assert env.call("GET", "/health", headers={"x-api-key": ""})[0] == 200
    assert env.call("GET", "/openapi.json", headers={"x-api-key": ""})[0] == 200


def test_callers_see_only_their_own_videos_and_jobs(env: Env) -> None:
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    other = {"x-api-key": OTHER_KEY}
    assert env.call("GET", "/videos", headers=other)[1]["videos"] == []
    for method, path in [
        ("GET", f"/videos/{video['id']}"),
        ("DELETE", f"/videos/{video['id']}"),
        ("GET", f"/videos/{video['id']}/jobs"),
        ("POST", f"/videos/{video['id']}/jobs"),
        ("GET", f"/jobs/{job['id']}"),
        ("GET", f"/jobs/{job['id']}/result"),
        ("GET", f"/jobs/{job['id']}/frames"),
    ]:
        status, _ = env.call(method, path, {} if method == "POST" else None, headers=other)
        assert status == 404, (method, path)  # not 403: another caller's ids do not even exist for them
    assert env.call("GET", f"/videos/{video['id']}")[0] == 200
    assert [v["id"] for v in env.call("GET", "/videos")[1]["videos"]] == [video["id"]]


def test_upload_urls_are_scoped_signed_for_type_and_size_and_expire(env: Env) -> None:
    video = register(env, upload=False)
    url = video["upload"]["url"]
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert urllib.parse.urlparse(url).path.endswith(video["s3_key"])
    assert int(query["X-Amz-Expires"][0]) == video["upload"]["expires_in_s"] == 900
    assert {"content-type", "content-length"} <= set(query["X-Amz-SignedHeaders"][0].split(";"))
    assert video["upload"]["headers"]["Content-Length"] == str(video["size_bytes"])


# ------------------------------------------------------------------------------------ reliability


def test_sweeper_fails_jobs_stuck_past_the_deadline(env: Env) -> None:
    video = register(env)
    queued = env.call("POST", f"/videos/{video['id']}/jobs", {"client_token": "a"})[1]
    env.take("jobs")  # the request is lost: the job would wait forever
    scheduled = env.client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
    )
    env.client.lambda_.invoke("sweep_stuck_jobs", scheduled)
    assert env.call("GET", f"/jobs/{queued['id']}")[1]["status"] == "QUEUED"  # not yet past the deadline
    assert env.take("jobs") == []
    rt = runtime()

    def sweep(now: int) -> SweepReport:
        return orchestration_module.sweep(
            rt.videos, rt.jobs, rt.store, rt.jobs_queue, rt.work_queue, rt.settings, now=now
        )

    # Past the silence limit the request is sent again (planning is idempotent) ...
    soon = now_ms() + (rt.settings.segment_silence_s + 1) * 1000
    assert sweep(soon).requested == [queued["id"]]
    assert [json.loads(body)["job_id"] for body in env.take("jobs")] == [queued["id"]]
    # ... and past the deadline a job still QUEUED fails with the reason.
    later = now_ms() + 2 * 3600 * 1000
    assert sweep(later).failed == [queued["id"]]
    failed = env.call("GET", f"/jobs/{queued['id']}")[1]
    assert (
        failed["status"] == "FAILED"
        and failed["error"]["code"] == "stuck"
        and "dead-letter" in failed["error"]["message"]
    )
    assert sweep(later).failed == []  # once only


def test_videos_over_the_limits_fail_at_the_probe(env: Env) -> None:
    strict = replace(runtime().settings, max_duration_ms=1000, max_pixels=640 * 480)
    use_runtime(Runtime(strict, s3_client=env.s3, sqs_client=env.sqs, database=env.db))
    video = register(env)  # 1.7 s of 640x480: over the duration limit, inside the size limit
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    finished = env.process(job["id"])
    assert finished["status"] == "FAILED" and finished["error"]["code"] == "limit_exceeded"
    assert finished["error"]["message"] == "the video lasts 1.7 s, over the limit of 1.0 s"
    assert env.take("work") == []  # nothing was sent to the workers


def test_poison_messages_end_in_the_dead_letter_queue(env: Env) -> None:
    """A body that is not a job request fails every delivery; after max receives (2 here) SQS moves it."""
    env.sqs.send_message(QueueUrl=env.queues["jobs"], MessageBody='{"version": 1, "type": "nonsense"}')
    for _ in range(3):
        got = env.sqs.receive_message(QueueUrl=env.queues["jobs"], VisibilityTimeout=0, AttributeNames=["All"])
        for message in got.get("Messages", []):
            event = env.client.events.generate_sqs_event(message_bodies=[message["Body"]], queue_name="handpipe-jobs")
            with pytest.raises(RuntimeError, match="redeliver"):
                env.client.lambda_.invoke("plan_jobs", event)
    dead = env.sqs.receive_message(QueueUrl=env.dlqs["jobs"], WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in dead] == ['{"version": 1, "type": "nonsense"}']


def test_queued_work_waits_out_a_database_outage_and_completes(env: Env, tmp_path: Path) -> None:
    """While the database is down the consumers fail (SQS keeps the messages) and the API answers 503;
    when it is back, the same messages complete the job."""
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    healthy = runtime()
    down = Database.from_url(f"sqlite:///{tmp_path / 'no-such-dir' / 'handpipe.db'}")
    use_runtime(Runtime(healthy.settings, s3_client=env.s3, sqs_client=env.sqs, database=down))
    requests = env.take("jobs")
    with pytest.raises(RuntimeError, match="redeliver"):
        env.deliver("jobs", requests)
    status, answer = env.call("GET", f"/jobs/{job['id']}")
    assert status == 503 and answer["code"] == "unavailable"
    use_runtime(healthy)  # the database is back: SQS delivers the same request again
    env.deliver("jobs", requests)
    while env.run_worker():
        env.deliver("events", env.take("events"))
    assert env.call("GET", f"/jobs/{job['id']}")[1]["status"] == "SUCCEEDED"
