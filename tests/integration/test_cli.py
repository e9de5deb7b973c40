"""The `handpipe` command as a user runs it, against the real routes over HTTP (moto, SQLite, a real
worker run between commands) and, for GET /jobs and cancel, a loopback server speaking their agreed
shape: tables with headers, pure JSON with --json, outputs under .handpipe/, batches with a tag and a
summary, options checked before anything is uploaded, and failures as one `handpipe: error:` line."""

from __future__ import annotations

import json
import re
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chalicelib.runtime import Runtime, runtime, use_runtime
from handpipe.cli import main
from tests.support.http_api import HttpApi
from tests.support.loopback import JobsApi, Loopback, Reply, Seen, job_view
from tests.support.paths import data_path
from tests.support.waiting import wait_for

CLIP = "videos/asl_thanks_two_hands.mkv"  # 51 frames: quick through the real worker
OTHER_CLIP = "videos/asl_again_two_hands.mkv"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(err: str) -> str:
    """The failure's line: the last on stderr, the only one with the prefix (a progress bar's lines on
    a pipe may come before it), and no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err
    assert [line for line in lines if line.startswith("handpipe: error: ")] == [lines[-1]], err
    return lines[-1]


def ids(text: str, prefix: str) -> list[str]:
    return list(dict.fromkeys(re.findall(rf"\b{prefix}_[0-9a-f]{{32}}\b", text)))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder of its own (the `env` fixture keeps its database in tmp_path)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("HANDPIPE_API_KEY", raising=False)
    monkeypatch.delenv("HANDPIPE_API_URL", raising=False)
    return work


def test_one_video_from_submit_to_delete(http_api: HttpApi, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api = http_api.args
    status, out, _ = run(capsys, "submit", str(data_path(CLIP)), "--tag", "t1", "--sample-fps", "15", *api)
    assert status == 0, out
    (video_id,), (job_id,) = ids(out, "vid"), ids(out, "job")
    assert f"handpipe wait {job_id}" in out
    http_api.env.process(job_id)

    assert run(capsys, "wait", job_id, *api)[1].strip() == f"job {job_id} SUCCEEDED"
    status, out, _ = run(capsys, "status", job_id, "--json", *api)
    job = json.loads(out)  # nothing but the JSON on stdout
    assert status == 0 and job["status"] == "SUCCEEDED" and job["tag"] == "t1" and job["options"]["sample_fps"] == 15

    shown = run(capsys, "videos", *api)[1].splitlines()
    assert shown[0].split() == ["VIDEO", "STATUS", "REGISTERED", "LATEST", "JOB", "JOB", "STATUS", "TITLE"]
    assert shown[1].split()[:2] == [video_id, "PROCESSED"] and job_id in shown[1] and "SUCCEEDED" in shown[1]
    listed = json.loads(run(capsys, "videos", "--status", "processed", "--json", *api)[1])
    assert [(v["id"], v["latest_job"]) for v in listed] == [(video_id, {"id": job_id, "status": "SUCCEEDED"})]
    assert run(capsys, "videos", "--status", "Failed", *api)[1].strip() == "no videos with status FAILED"

    frames = json.loads(run(capsys, "frames", job_id, "--start-ms", "500", "--end-ms", "1000", "--json", *api)[1])
    assert frames and all(500 <= f["timestamp_ms"] < 1000 for f in frames) and "landmarks" in frames[0]["hands"][0]
    table = run(capsys, "frames", job_id, "--start", "0", "--end", "200", *api)[1].splitlines()
    assert table[0].split() == ["FRAME", "TIME", "MS", "HANDS"] and len(table) > 1

    status, out, _ = run(capsys, "result", job_id, *api)
    saved = Path(".handpipe/results") / f"{job_id}.json"
    assert status == 0 and f"result     {saved}" in out and "gestures" in out
    assert json.loads((in_tmp / saved).read_text())["summary"]["frames_processed"] == job["summary"]["frames_processed"]
    assert sorted(p.name for p in in_tmp.iterdir()) == [".handpipe"]  # nothing left in the working folder
    described = json.loads(run(capsys, "result", job_id, "--json", "--out", "r.json", *api)[1])
    assert described["path"] == "r.json" and described["result"]["key"].endswith("result.json.gz")
    assert run(capsys, "export", job_id, *api)[0] == 0
    assert (in_tmp / ".handpipe" / "exports" / f"{job_id}.csv").read_text().startswith("job_id,video_id,frame_index")

    assert run(capsys, "delete", video_id, *api)[1].startswith(f"deleted video {video_id} (")
    status, out, err = run(capsys, "delete", video_id, *api)
    assert status == 1 and out == "" and one_error_line(err).endswith("(HTTP 404)")


def test_bad_options_fail_before_the_upload_and_leave_no_video(
    http_api: HttpApi, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = str(data_path(CLIP))
    status, out, err = run(capsys, "submit", clip, "--num-hands", "9", *http_api.args)
    assert status == 2 and out == "" and "--num-hands must be between 1 and 4" in one_error_line(err)
    (in_tmp / "empty.mp4").write_bytes(b"")
    status, _, err = run(capsys, "submit", "empty.mp4", *http_api.args)
    assert status == 2 and one_error_line(err) == "handpipe: error: empty.mp4 is empty (0 bytes)"
    assert http_api.env.call("GET", "/videos")[1]["videos"] == []


def test_a_wrong_key_and_an_api_that_is_not_there_say_what_to_do(
    http_api: HttpApi, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "jobs", "--api-url", http_api.url, "--api-key", "wrong-key-0123456789abcdef")
    assert status == 1 and one_error_line(err).endswith("(HTTP 403): check --api-key or HANDPIPE_API_KEY")
    closed = Loopback(lambda seen: Reply())
    closed.server.server_close()
    status, _, err = run(capsys, "videos", "--api-url", closed.url.removeprefix("http://"), "--api-key", "k" * 20)
    assert status == 1 and "connection refused" in one_error_line(err) and "handpipe up" in err
    status, out, _ = run(capsys, "health", "--api-url", http_api.url)
    assert status == 0 and out.splitlines()[0] == f"{http_api.url}: ok"
    assert json.loads(run(capsys, "health", "--json", "--api-url", http_api.url)[1])["status"] == "ok"


def test_a_folder_is_one_batch_with_a_tag_a_bar_and_a_summary(
    http_api: HttpApi, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = http_api.env
    folder = in_tmp / "day1"
    folder.mkdir()
    for name in (CLIP, OTHER_CLIP):
        shutil.copy(data_path(name), folder)
    (folder / "notes.txt").write_text("not a video: left out")
    codes: list[int] = []
    command = threading.Thread(target=lambda: codes.append(main(["submit", str(folder), "--wait", *http_api.args])))
    command.start()

    def worked() -> bool:  # what the queues' consumers would do, while the command waits
        if bodies := env.take("jobs"):
            env.deliver("jobs", bodies)
        while env.run_worker():
            env.deliver("events", env.take("events"))
        return not command.is_alive()

    wait_for(worked, "the batch to be processed and waited for", timeout_s=300, poll_s=0.2)
    out, err = capsys.readouterr()
    assert codes == [0], out + err
    lines = out.splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("FILE"))
    assert lines[header].split() == ["FILE", "VIDEO", "JOB", "STATUS", "NOTE"]
    rows = lines[header + 1 : header + 3]
    assert [r.split()[0] for r in rows] == [str(folder / Path(OTHER_CLIP).name), str(folder / Path(CLIP).name)]
    assert all(r.split()[3] == "SUCCEEDED" for r in rows)
    (tag,) = re.findall(r"^tag (batch-\S+): list these jobs with `handpipe jobs --tag \1`$", out, re.M)
    assert "uploading" in err and "MB" in err  # one bar over the batch's bytes, on stderr
    for video_id in ids("\n".join(rows), "vid"):
        (job,) = env.call("GET", f"/videos/{video_id}/jobs")[1]["jobs"]
        assert job["tag"] == tag and job["status"] == "SUCCEEDED"


def test_a_batch_with_a_refused_file_exits_non_zero_and_sends_the_rest(
    http_api: HttpApi, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small, large = data_path(CLIP), data_path(OTHER_CLIP)
    env = http_api.env
    limit = (small.stat().st_size + large.stat().st_size) // 2
    strict = replace(runtime().settings, max_upload_bytes=limit)
    use_runtime(Runtime(strict, s3_client=env.s3, sqs_client=env.sqs, database=env.db))
    status, out, _ = run(capsys, "submit", str(small), str(large), "--tag", "mixed", "--json", *http_api.args)
    rows = json.loads(out)
    assert status == 1
    assert [(r["file"], r["status"]) for r in rows] == [(str(small), "QUEUED"), (str(large), "NOT SENT")]
    assert rows[0]["error"] is None and rows[1]["video_id"] is None and "HTTP 413" in rows[1]["error"]
    assert [v["title"] for v in http_api.env.call("GET", "/videos")[1]["videos"]] == [small.stem]


def test_a_failed_upload_removes_its_registration(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video_id = "vid_" + "1" * 32

    def script(seen: Seen) -> Reply:
        if seen.method == "POST" and seen.path == "/videos":
            size = json.loads(seen.body)["size_bytes"]
            upload = {"method": "PUT", "url": f"{server.url}/bucket", "headers": {"Content-Type": "video/mp4"}}
            return Reply(201, {"id": video_id, "size_bytes": size, "upload": upload})
        if seen.method == "PUT":
            return Reply(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
        return Reply(200, {"deleted": video_id, "objects_removed": 0})

    server = Loopback(script)
    with server:
        two = [str(data_path(CLIP)), str(data_path(OTHER_CLIP))]
        api = ["--api-url", server.url, "--api-key", "k" * 20]
        status, out, _ = run(capsys, "submit", *two, "--json", *api)
        rows = json.loads(out)
        assert status == 1 and [r["status"] for r in rows] == ["NOT SENT", "NOT SENT"]
        assert (
            rows[0]["error"] == "not sent: HTTP 403: AccessDenied: Request has expired (its registration was removed)"
        )
        assert [(s.method, s.path) for s in server.seen].count(("DELETE", f"/videos/{video_id}")) == 2
        server.seen.clear()
        status, out, err = run(capsys, "submit", two[0], *api)
        assert status == 1 and one_error_line(err) == (
            f"handpipe: error: {Path(two[0]).name} was not uploaded: HTTP 403: AccessDenied: Request has expired "
            "(its registration was removed)"
        )
        assert [s.method for s in server.seen] == ["POST", "PUT", "DELETE"]


def jobs_api(jobs: list[dict[str, Any]]) -> tuple[Loopback, list[str]]:
    server = Loopback(JobsApi(jobs))
    return server, ["--api-url", server.url, "--api-key", "k" * 20]


def test_jobs_finds_a_batch_by_tag_and_status(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = [job_view(n, status="FAILED" if n < 3 else "SUCCEEDED", tag="day1" if n % 2 else "day2") for n in range(6)]
    server, api = jobs_api(jobs)
    with server:
        out = run(capsys, "jobs", "--tag", "day1", *api)[1].splitlines()
        assert out[0].split() == ["JOB", "VIDEO", "STATUS", "PROGRESS", "CREATED", "TAG"]
        assert [line.split()[0] for line in out[1:]] == [j["id"] for j in jobs if j["tag"] == "day1"]
        found = json.loads(run(capsys, "jobs", "--status", "failed", "--tag", "day1", "--json", *api)[1])
        assert [j["id"] for j in found] == [jobs[1]["id"]]
        assert server.seen[-1].query == {"status": "FAILED", "tag": "day1", "limit": "20"}
        assert len(json.loads(run(capsys, "jobs", "--limit", "2", "--json", *api)[1])) == 2
        run(capsys, "jobs", "--since", "2026-01-31", "--video", jobs[0]["video_id"], *api)
        assert server.seen[-1].query["created_after"] == "2026-01-31"
        assert server.seen[-1].query["video_id"] == jobs[0]["video_id"]
        assert run(capsys, "jobs", "--tag", "nothing", *api)[1].strip() == "no jobs match"


def test_cancel_and_wait_against_the_cancel_route(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running, finished = job_view(1, status="IN_PROGRESS"), job_view(2, status="SUCCEEDED")
    server, api = jobs_api([running, finished])
    with server:
        status, out, err = run(capsys, "wait", running["id"], "--timeout", "0", *api)
        assert (
            status == 1
            and one_error_line(err) == f"handpipe: error: job {running['id']} is still IN_PROGRESS after 0 s"
        )
        assert run(capsys, "cancel", running["id"], *api)[1].strip() == f"job {running['id']} CANCELLED"
        status, out, err = run(capsys, "wait", running["id"], "--json", *api)
        assert status == 1 and json.loads(out)["status"] == "CANCELLED"
        assert one_error_line(err) == f"handpipe: error: job {running['id']} ended CANCELLED"
        status, out, err = run(capsys, "cancel", finished["id"], *api)
        assert status == 1 and out == "" and one_error_line(err).endswith("SUCCEEDED (HTTP 409)")


def test_webhook_secret_prints_and_rotates(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def script(seen: Seen) -> Reply:
        version = 2 if seen.path.endswith("/rotate") else 1
        return Reply(
            200, {"secret": f"s{version}", "version": version, "rotated_at": None, "header": "X", "algorithm": "a"}
        )

    with Loopback(script) as server:
        api = ["--api-url", server.url, "--api-key", "k" * 20]
        assert run(capsys, "webhook-secret", *api)[1].splitlines()[0] == "secret     s1"
        assert json.loads(run(capsys, "webhook-secret", "--rotate", "--json", *api)[1])["secret"] == "s2"
        assert [(s.method, s.path) for s in server.seen] == [
            ("GET", "/webhook-secret"),
            ("POST", "/webhook-secret/rotate"),
        ]


def test_process_writes_under_handpipe_unless_told(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "process", str(data_path(CLIP)), "--sample-fps", "10")
    saved = Path(".handpipe/results/asl_thanks_two_hands.hands.json")
    assert status == 0 and f"result     {saved}" in out
    assert json.loads((in_tmp / saved).read_text())["summary"]["frames_processed"] > 0
    assert sorted(p.name for p in in_tmp.iterdir()) == [".handpipe"]
    assert run(capsys, "process", str(data_path(CLIP)), "--sample-fps", "10", "--out", "mine.json.gz")[0] == 0
    assert (in_tmp / "mine.json.gz").read_bytes()[:2] == b"\x1f\x8b"
