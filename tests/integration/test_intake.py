"""Upload-triggered intake through the app's `intake_uploads` consumer: the notifications moto's bucket
really sends to the "uploads" queue (as S3 does in AWS), redelivered ones, keys that are not ours to take,
and objects that cannot be processed; and GET /jobs's filters and pages over the API."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from chalicelib.config import Settings
from chalicelib.runtime import Runtime, runtime, use_runtime
from chalicelib.service.errors import InvalidInput
from chalicelib.service.intake import NotificationError, parse_notification
from chalicelib.service.job_search import build_filter
from chalicelib.shared.states import JOB_STATUSES
from chalicelib.web.openapi import load_openapi
from tests.support.api import OTHER, Env, register
from tests.support.paths import data_path

CLIP_NAME = "videos/asl_thanks_two_hands.mkv"


def clip() -> Path:
    """The shared clip, resolved when a test runs (a missing data folder skips or fails that test, not the module)."""
    return data_path(CLIP_NAME)


def deliver_uploads(env: Env, bodies: list[str]) -> None:
    event = env.client.events.generate_sqs_event(message_bodies=bodies, queue_name="handpipe-uploads")
    env.client.lambda_.invoke("intake_uploads", event)


def put(env: Env, key: str, body: bytes | None = None, content_type: str | None = None) -> list[str]:
    """Put an object as a user would (plain put_object); the notifications the bucket sent for it."""
    extra = {"ContentType": content_type} if content_type else {}
    env.s3.put_object(Bucket=env.bucket, Key=key, Body=clip().read_bytes() if body is None else body, **extra)
    return env.take("uploads")


def jobs_of(env: Env, **filters: Any) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={quote_plus(str(v))}" for k, v in filters.items())
    status, page = env.call("GET", "/jobs" + (f"?{query}" if query else ""))
    assert status == 200, page
    jobs: list[dict[str, Any]] = page["jobs"]
    return jobs


def test_an_object_put_under_the_owners_prefix_is_registered_and_its_job_queued(env: Env) -> None:
    key = "incoming/tester/day 1/take+2 (left).mkv"  # spaces and a plus: S3 form-encodes the key
    bodies = put(env, key)
    # S3 (and moto) first sends a test event to a queue it is told to notify; then the object's record.
    assert [json.loads(b).get("Event") for b in bodies] == ["s3:TestEvent", None] and quote_plus(key) in bodies[1]
    assert parse_notification(bodies[0]) == []
    [created] = parse_notification(bodies[1])
    assert created.key == key and created.size == clip().stat().st_size
    deliver_uploads(env, bodies)
    [job] = jobs_of(env, tag="upload-trigger")
    assert job["status"] == "QUEUED" and job["options"]["num_hands"] == 2  # ProcessOptions' defaults
    video = env.call("GET", f"/videos/{job['video_id']}")[1]
    assert video["s3_key"] == key and video["status"] == "UPLOADED" and video["filename"] == "take_2_left.mkv"
    assert video["size_bytes"] == clip().stat().st_size and video["content_type"] == "video/x-matroska"
    # The other owner sees none of it.
    assert env.call("GET", "/jobs", headers=OTHER)[1]["jobs"] == []
    finished = env.process(job["id"])
    assert finished["status"] == "SUCCEEDED", finished


def test_a_redelivered_notification_creates_nothing_new(env: Env) -> None:
    bodies = put(env, "incoming/tester/once.mkv")
    deliver_uploads(env, bodies)
    [job] = jobs_of(env)
    assert len(env.take("jobs")) == 1
    # SQS delivers at least once: the same message again, and the same record inside one message twice.
    deliver_uploads(env, bodies)
    deliver_uploads(env, [json.dumps({"Records": json.loads(bodies[-1])["Records"] * 2})])
    assert [j["id"] for j in jobs_of(env)] == [job["id"]]
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM videos") == {"n": 1}
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM object_intake") == {"n": 1}
    # The job was still QUEUED, so its request went out again (an earlier delivery may have died
    # before sending it); planning is idempotent, so the repeats change nothing.
    requests = env.take("jobs")
    assert len(requests) == 3
    env.deliver("jobs", requests)
    assert env.process(job["id"])["status"] == "SUCCEEDED"
    deliver_uploads(env, bodies)
    assert env.take("jobs") == [] and len(jobs_of(env)) == 1


def test_a_new_version_of_the_same_key_is_a_new_job_on_the_same_video(env: Env) -> None:
    deliver_uploads(env, put(env, "incoming/tester/again.mkv"))
    deliver_uploads(env, put(env, "incoming/tester/again.mkv", clip().read_bytes() + b"\0"))
    jobs = jobs_of(env)
    assert len(jobs) == 2 and len({j["video_id"] for j in jobs}) == 1


def test_objects_that_cannot_be_processed_get_a_failed_job_with_the_reason(env: Env) -> None:
    deliver_uploads(env, put(env, "incoming/tester/notes.txt", b"hello", "text/plain"))
    deliver_uploads(env, put(env, "incoming/tester/empty.mp4", b""))
    deliver_uploads(env, put(env, "incoming/tester/page.mp4", b"<html></html>", "text/html"))
    use_runtime(
        Runtime(
            replace(runtime().settings, max_upload_bytes=1000), s3_client=env.s3, sqs_client=env.sqs, database=env.db
        )
    )
    deliver_uploads(env, put(env, "incoming/tester/big.mkv"))
    failed = {env.call("GET", f"/videos/{j['video_id']}")[1]["s3_key"]: j for j in jobs_of(env, status="failed")}
    assert {key: job["error"]["code"] for key, job in failed.items()} == {
        "incoming/tester/notes.txt": "not_a_video",
        "incoming/tester/empty.mp4": "empty_object",
        "incoming/tester/page.mp4": "not_a_video",
        "incoming/tester/big.mkv": "too_large",
    }
    assert "text/html" in failed["incoming/tester/page.mp4"]["error"]["message"]
    assert "over the limit of 1000 bytes" in failed["incoming/tester/big.mkv"]["error"]["message"]
    assert env.take("jobs") == []  # nothing was queued


def test_keys_intake_does_not_take(env: Env) -> None:
    # Registered through POST /videos by key first: the caller's, and it makes its own jobs.
    bodies = put(env, "incoming/tester/mine.mkv")
    status, video = env.call("POST", "/videos", {"s3_key": "incoming/tester/mine.mkv"})
    assert status == 201
    deliver_uploads(env, bodies)
    # No owner folder, a folder marker, another bucket's object, and our own uploads (videos/ is not
    # under the prefix, so S3 does not even report it; a record of it is ignored all the same).
    deliver_uploads(env, put(env, "incoming/loose.mkv") + put(env, "incoming/tester/folder/", b""))
    foreign = json.loads(bodies[-1])
    foreign["Records"][0]["s3"]["bucket"]["name"] = "someone-elses-bucket"
    ours = json.loads(bodies[-1])
    ours["Records"][0]["s3"]["object"]["key"] = quote_plus(video["s3_key"].replace("incoming/", "results/"))
    deliver_uploads(env, [json.dumps(foreign), json.dumps(ours), json.dumps({"Event": "s3:TestEvent"})])
    assert jobs_of(env) == []
    assert env.db.fetchone("SELECT COUNT(*) AS n FROM videos") == {"n": 1}


def test_a_message_that_is_not_a_notification_fails_for_the_dead_letter_queue(env: Env) -> None:
    for body in ("nonsense", "[]", '{"Records": [{"s3": {}}]}', '{"no": "records"}'):
        with pytest.raises(NotificationError):
            parse_notification(body)
    with pytest.raises(RuntimeError, match="1 upload notification"):
        deliver_uploads(env, ["nonsense"])


def test_the_owner_and_the_stage_set_the_default_options(env: Env) -> None:
    settings: Settings = replace(
        runtime().settings,
        upload_trigger_options={"num_hands": 1, "sample_fps": 5},
        upload_trigger_owner_options={"tester": {"sample_fps": 10}},
        upload_trigger_tag="lab-drop",
    )
    use_runtime(Runtime(settings, s3_client=env.s3, sqs_client=env.sqs, database=env.db))
    deliver_uploads(env, put(env, "incoming/tester/a.mkv"))
    deliver_uploads(env, put(env, "incoming/someone-else/b.mkv"))
    mine = jobs_of(env, tag="lab-drop")
    assert [(j["options"]["num_hands"], j["options"]["sample_fps"]) for j in mine] == [(1, 10)]
    [theirs] = jobs_of(env, tag="lab-drop") and env.call("GET", "/jobs", headers=OTHER)[1]["jobs"]
    assert (theirs["options"]["num_hands"], theirs["options"]["sample_fps"]) == (1, 5)


# ------------------------------------------------------------------------------------ GET /jobs


def test_get_jobs_filters_and_pages_across_the_callers_videos(env: Env) -> None:
    first, second = register(env), register(env)
    made = []
    for n in range(5):
        video = first if n % 2 == 0 else second
        status, job = env.call("POST", f"/videos/{video['id']}/jobs", {"tag": "batch-a" if n < 3 else "batch-b"})
        assert status == 202, job
        made.append(job)
        if n == 1:  # the two made so far run to the end: statuses differ, and no video reaches its cap
            env.process(job["id"])
    other = register(env, headers=OTHER)
    assert env.call("POST", f"/videos/{other['id']}/jobs", {"tag": "batch-a"}, headers=OTHER)[0] == 202

    newest_first = [j["id"] for j in reversed(made)]
    assert [j["id"] for j in jobs_of(env)] == newest_first
    assert [j["id"] for j in jobs_of(env, tag="batch-a")] == newest_first[2:]
    assert [j["id"] for j in jobs_of(env, video_id=second["id"])] == [made[3]["id"], made[1]["id"]]
    assert [j["id"] for j in jobs_of(env, status="succeeded")] == [made[1]["id"], made[0]["id"]]
    assert [j["id"] for j in jobs_of(env, status="QUEUED", tag="batch-a")] == [made[2]["id"]]
    after = made[3]["timings"]["created_at"]
    assert [j["id"] for j in jobs_of(env, created_after=after)] == newest_first[:2]
    iso = datetime.fromtimestamp(after / 1000, tz=UTC).isoformat()
    assert [j["id"] for j in jobs_of(env, created_after=iso)] == newest_first[:2]

    seen, token, pages = [], None, 0
    while True:
        page = env.call("GET", "/jobs?limit=2" + (f"&next_token={token}" if token else ""))[1]
        seen += [j["id"] for j in page["jobs"]]
        pages, token = pages + 1, page["next_token"]
        if not token:
            break
    assert seen == newest_first and pages == 3

    token = env.call("GET", "/jobs?limit=2")[1]["next_token"]
    for bad in ("garbage", token + "0", "x" + token, token.replace("_job_", "_")):
        status, error = env.call("GET", f"/jobs?limit=2&next_token={bad}")
        assert status == 400 and "next_token" in error["message"], bad
    for query, word in (
        ("status=sleeping", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("video_id=nope", "video_id"),
        ("created_after=yesterday", "created_after"),
    ):
        status, error = env.call("GET", f"/jobs?{query}")
        assert status == 400 and word in error["message"], (query, error)


def test_the_documents_job_status_filter_is_the_state_machines_in_any_case() -> None:
    """GET /jobs?status= takes every JobStatus in any case and nothing else (a new status needs the document too)."""
    pattern = re.compile(load_openapi()["components"]["parameters"]["job_status"]["schema"]["pattern"])
    for status in JOB_STATUSES:
        for spelled in (status, status.lower(), status.title()):
            assert pattern.search(spelled), spelled
            assert (
                build_filter(owner=None, status=spelled, tag=None, video_id=None, created_after=None).status == status
            )
    for other in ("", "DONE", " QUEUED", "QUEUEDX"):
        assert not pattern.search(other)
        with pytest.raises(InvalidInput):
            build_filter(owner=None, status=other, tag=None, video_id=None, created_after=None)
