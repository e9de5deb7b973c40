"""End to end through the one-process local stack: moto, SQLite, the routes over HTTP, pollers and
worker processes running real MediaPipe; and the `handpipe` command a new user runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from handpipe_worker.engine import process_video

from chalicelib.shared.contracts import ProcessOptions
from handpipe import cli
from handpipe.client import ApiError, Client
from handpipe.local.stack import LocalStack
from tests.support.footage import reference
from tests.support.paths import REPO, data_path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("stack")
    with LocalStack(port=0, data_dir=data_dir, workers=2, bucket="stack-e2e", prefix="e2e") as running:
        yield running


def test_portrait_clip_end_to_end_through_the_api(stack: LocalStack, tmp_path: Path) -> None:
    assert stack.info is not None
    client = Client(stack.info.api_url, api_key=stack.info.api_key)
    assert client.health()["status"] == "ok"
    with pytest.raises(ApiError) as refused:
        list(Client(stack.info.api_url).list_videos())
    assert refused.value.status == 401
    video_path = data_path("videos/one_hand_wave_portrait.mp4")
    video = client.register_video(video_path, title="wave")
    client.upload(video, video_path)
    job = client.create_job(video["id"], {"num_hands": 2})
    seen_progress: list[int] = []
    finished = client.wait(
        job["id"], on_progress=lambda j: seen_progress.append(j["progress"]["frames_done"]), poll_s=0.2
    )
    assert finished["status"] == "SUCCEEDED", finished
    assert finished["summary"]["frames_with_hands"] >= 170
    assert finished["video"]["orientation"] == "portrait"

    frames = list(client.frames(job["id"], page_size=50))
    assert [f["index"] for f in frames] == list(range(180))
    assert sum(1 for f in frames if f["hands"]) >= 170
    assert max(len(f["hands"]) for f in frames) == 1

    middle = list(client.frames(job["id"], start_ms=2000, end_ms=3000))
    assert len(middle) == 30 and all(2000 <= f["timestamp_ms"] < 3000 for f in middle)

    pictures = client.download_pictures(job["id"], tmp_path / "pictures", wait_s=60)
    assert sorted(p.name for p in pictures) == [f"{job['id']}-contact_sheet.png", f"{job['id']}-timeline.png"]
    # the CLI's export command over HTTP, as a user runs it
    api = ["--api-url", stack.info.api_url, "--api-key", stack.info.api_key]
    assert cli.main(["export", job["id"], "--format", "csv", "--out", str(tmp_path / "rows.csv"), *api]) == 0
    rows = (tmp_path / "rows.csv").read_text().splitlines()
    assert len(rows) == 1 + finished["summary"]["hands_seen"] and rows[0].startswith("job_id,video_id,frame_index")
    full = client.download_result(job["id"])
    assert full["summary"] == {k: v for k, v in finished["summary"].items() if k not in ("stats", "decode")}
    assert [v["id"] for v in client.list_videos()] == [video["id"]]

    with pytest.raises(ApiError) as refused:
        client.create_job(video["id"], {"num_hands": 7})
    assert refused.value.status == 400 and "num_hands" in refused.value.message
    assert stack.drain(timeout_s=30)


def test_a_job_fans_out_over_worker_processes_and_merges_into_one_pass(tmp_path: Path) -> None:
    """2 s segments of the 6 s clip on 2 worker processes: the result equals a single pass."""
    with LocalStack(port=0, data_dir=tmp_path, workers=2, bucket="stack-fan", prefix="fan", segment_ms=2000) as stack:
        assert stack.info is not None
        client = Client(stack.info.api_url, api_key=stack.info.api_key)
        job = client.submit(data_path("videos/one_hand_wave_portrait.mp4"))
        finished = client.wait(job["id"], poll_s=0.3, timeout_s=300)
        assert finished["status"] == "SUCCEEDED", finished
        assert finished["progress"]["segments_total"] == 3 == finished["progress"]["segments_done"]
        assert finished["progress"]["frames_total"] == 180
        merged = client.download_result(job["id"])
    single = process_video(data_path("videos/one_hand_wave_portrait.mp4"), ProcessOptions())
    assert [f["index"] for f in merged["frames"]] == [f["index"] for f in single["frames"]]
    assert [len(f["hands"]) for f in merged["frames"]] == [len(f["hands"]) for f in single["frames"]]
    assert [f["timestamp_ms"] for f in merged["frames"]] == [f["timestamp_ms"] for f in single["frames"]]
    # Later segments seek to the keyframe before their 2 s warm-up (this clip has keyframes at frames 0,
    # 88 and 176) and decode from there to the frame after their end: exactly that, no more.
    ref = reference(data_path("videos/one_hand_wave_portrait.mp4"))
    expected = sum(
        ref.decoded_by_segment(start, end, 2000 if start else 0)
        for start, end in [(0, 2000), (2000, 4000), (4000, None)]
    )
    assert merged["stats"]["frames_decoded"] == expected


def test_a_worker_killed_mid_item_is_retried_and_the_job_completes(tmp_path: Path) -> None:
    """SIGKILL the worker process while it runs; SQS redelivers after the visibility timeout."""
    with LocalStack(
        port=0, data_dir=tmp_path, workers=1, bucket="stack-kill", prefix="kill", work_visibility_s=3
    ) as stack:
        assert stack.info is not None and stack.worker_pool is not None
        client = Client(stack.info.api_url, api_key=stack.info.api_key)
        job = client.submit(data_path("videos/one_hand_wave_portrait.mp4"))
        for _ in range(600):  # until the worker has reported progress, so it is mid-item
            if client.get_job(job["id"])["progress"]["frames_done"] > 0:
                break
            time.sleep(0.1)
        state = client.get_job(job["id"])
        assert state["status"] == "IN_PROGRESS" and state["progress"]["frames_done"] < 180
        pids = stack.worker_pool.worker_pids()
        assert pids, "no worker process to kill"
        for pid in pids:
            os.kill(pid, 9)
        finished = client.wait(job["id"], poll_s=0.5, timeout_s=300)
        assert finished["status"] == "SUCCEEDED", finished
        assert finished["summary"]["frames_processed"] == 180
        [work_poller] = [p for p in stack.pollers if p.name.startswith("work")]
        assert work_poller.stats.handler_errors >= 1  # the killed attempt, which SQS redelivered


def test_the_handpipe_command_runs_the_demo_on_the_shipped_sample(tmp_path: Path) -> None:
    """What the README's first command ends with: the demo on the sample clip, readable results."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "handpipe.cli",
            "demo",
            "--data-dir",
            str(tmp_path / "data"),
            "--workers",
            "1",
            "--api-url",
            "http://127.0.0.1:9",
            "--out",
            str(tmp_path / "result.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    # --api-url pointing nowhere is refused clearly rather than silently starting something else.
    assert done.returncode == 1 and "cannot reach the handpipe API" in done.stderr

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "handpipe.cli",
            "demo",
            "--data-dir",
            str(tmp_path / "data"),
            "--workers",
            "1",
            "--out",
            str(tmp_path / "result.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "HANDPIPE_API_URL": "http://127.0.0.1:9"},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    out = done.stdout
    assert "SUCCEEDED" in out and "720x1280 portrait" in out
    assert "frames     180 decoded, 180 processed" in out and "with hands" in out and "hands at" in out
    # the wave is an open hand, labelled by the rules (no gesture_recognizer.task given)
    assert "gestures   open_palm " in out and "[rules on the landmarks]" in out
    assert (tmp_path / "result.json").stat().st_size > 10_000
    assert (REPO / "handpipe" / "samples" / "one_hand_wave_portrait.mp4").stat().st_size < 1_000_000
