"""Every frame, its true timestamp, on the footage phones really produce: variable frame rate with a
dropped-frame hole, B-frames with an edit list (negative first DTS), a stream that starts at 1.4 s,
rotation metadata, an NTSC time base. Each generated clip is checked against an independent PyAV pass,
whole and split into segments through the local stack; a segment reads only its share of the object."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import boto3
import pytest
from handpipe_worker.engine import process_video
from handpipe_worker.handler import Worker, WorkerSettings
from handpipe_worker.models import ModelCache
from handpipe_worker.pictures import annotated_video

from chalicelib.shared.contracts import ProbeRequest, ProcessOptions, WorkItem, frame_index_key, part_key
from chalicelib.shared.results import MergeError, merge_parts
from handpipe.client import Client
from handpipe.local.pollers import LambdaContext
from handpipe.local.stack import LocalStack
from tests.support.footage import HARD_CASES, Clip, reference, write_clip

MODELS = ModelCache()
SEGMENT_MS = 1000
WARMUP_MS = 2000


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("footage")
    return {clip.name: write_clip(clip, folder) for clip in HARD_CASES}


@pytest.fixture(scope="module")
def single_passes(clips: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {name: process_video(path, ProcessOptions(), models=MODELS) for name, path in clips.items()}


def landmark_shift(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(
        abs(p - q) for u, v in zip(a["landmarks"], b["landmarks"], strict=True) for p, q in zip(u, v, strict=True)
    )


@pytest.mark.parametrize("clip", HARD_CASES, ids=[c.name for c in HARD_CASES])
def test_every_frame_once_with_its_true_timestamp(
    clip: Clip, clips: dict[str, Path], single_passes: dict[str, Any]
) -> None:
    ref = reference(clips[clip.name])
    result = single_passes[clip.name]
    assert [f["index"] for f in result["frames"]] == list(range(ref.frame_count))
    assert [f["timestamp_ms"] for f in result["frames"]] == [round(t, 3) for t in ref.timestamps_ms]
    assert result["frames"][0]["timestamp_ms"] == 0.0  # an edit list's negative DTS or a 1.4 s start is not a time
    stats = result["stats"]
    assert stats["frames_decoded"] == stats["frames_processed"] == ref.frame_count
    video = result["video"]
    assert (video["width"], video["height"], video["orientation"]) == (360, 640, "portrait")
    assert video["rotation"] == (360 - clip.rotation) % 360 and video["frame_count"] == ref.frame_count
    assert video["frame_rate_mode"] == ("variable" if clip.name.startswith("vfr") else "constant")
    # upright: the waving hand's wrist is below its middle fingertip in nearly every frame
    hands = [f["hands"][0] for f in result["frames"] if f["hands"]]
    assert len(hands) >= 0.9 * ref.frame_count
    upright = sum(1 for h in hands if h["landmarks"][0][1] > h["landmarks"][12][1])
    assert upright >= 0.9 * len(hands)


def test_the_hard_cases_are_what_they_claim(clips: dict[str, Path]) -> None:
    """The generator makes the harsh cases, not friendly ones: checked on the files themselves."""
    assert reference(clips["bframes_editlist"]).first_dts is not None
    assert (reference(clips["bframes_editlist"]).first_dts or 0) < 0
    assert reference(clips["start_time"]).start_time == 1400
    times = reference(clips["vfr_hole"]).timestamps_ms
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) >= 400 and min(gaps) <= 25
    assert {reference(clips[f"rotate_{d}"]).rotation for d in (90, 180, 270)} == {90, -180, -90}
    ntsc = reference(clips["ntsc_2997"]).timestamps_ms
    assert ntsc[1] == pytest.approx(1001 / 30, abs=1e-9)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("exact-stack")
    with LocalStack(
        port=0, data_dir=data_dir, workers=2, bucket="exact", prefix="exact", segment_ms=SEGMENT_MS, quiet=True
    ) as running:
        yield running


def test_split_jobs_equal_a_single_pass_through_the_local_stack(
    stack: LocalStack, clips: dict[str, Path], single_passes: dict[str, Any]
) -> None:
    assert stack.info is not None
    client = Client(stack.info.api_url, api_key=stack.info.api_key)
    submitted = {name: client.submit(path)["id"] for name, path in clips.items()}
    for name, job_id in submitted.items():
        job = client.wait(job_id, poll_s=0.3, timeout_s=600)
        assert job["status"] == "SUCCEEDED", (name, job)
        assert (job["progress"]["segments_total"] or 0) >= 3, name
        merged = client.download_result(job_id)
        whole = single_passes[name]
        ref = reference(clips[name])
        assert [f["index"] for f in merged["frames"]] == [f["index"] for f in whole["frames"]], name
        assert [f["timestamp_ms"] for f in merged["frames"]] == [f["timestamp_ms"] for f in whole["frames"]], name
        assert [len(f["hands"]) for f in merged["frames"]] == [len(f["hands"]) for f in whole["frames"]], name
        for ours, theirs in zip(merged["frames"], whole["frames"], strict=True):
            for hand in ours["hands"]:
                twin = min(theirs["hands"], key=lambda other: landmark_shift(hand, other))
                assert landmark_shift(hand, twin) <= 0.01, (name, ours["index"])
        # each segment decoded from the keyframe before its warm-up to the frame after its end: no more
        segments = job["progress"]["segments_total"] or 0
        starts = [i * SEGMENT_MS for i in range(segments)]
        ends: list[int | None] = [*starts[1:], None]
        expected = sum(
            ref.decoded_by_segment(start, end, WARMUP_MS if start else 0)
            for start, end in zip(starts, ends, strict=True)
        )
        assert merged["stats"]["frames_decoded"] == expected, name
        assert merged["range"]["first_index"] == 0 and merged["range"]["end_index"] == ref.frame_count
        assert merged["video"]["frame_count"] == ref.frame_count
        assert merged["video"] == whole["video"], name  # the probe's index and a whole pass agree on the facts
        size = clips[name].stat().st_size
        assert 0 < merged["stats"]["bytes_read"] <= segments * size


# ------------------------------------------------------------------------------------ ranged reads


def _long_clip(folder: Path) -> Path:
    """20 s at 30 fps with a keyframe a second and big frames (about 50 MB), so a segment's share is
    many 1 MiB blocks: the worker must read about its share, not the file."""
    path = folder / "long.mp4"
    import numpy as np

    rng = np.random.default_rng(5)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.options = {"g": "30", "preset": "ultrafast", "qp": "10"}
        for number in range(600):
            picture = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = number
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_a_segment_reads_about_its_share_of_the_object(aws_env: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=aws_env, region_name="us-east-1")
    bucket = "ranged-reads"
    s3.create_bucket(Bucket=bucket)
    events = sqs.create_queue(QueueName="ranged-events")["QueueUrl"]
    clip = _long_clip(tmp_path)
    key = "videos/vid_long/long.mp4"
    s3.upload_file(str(clip), bucket, key)
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    assert size > 15 * (1 << 20)
    worker = Worker(s3, sqs, WorkerSettings(events_queue_url=events), models=MODELS)
    job, video = "job_" + "1" * 32, "vid_" + "2" * 32
    item = WorkItem(
        job_id=job,
        video_id=video,
        segment=2,
        bucket=bucket,
        video_key=key,
        part_key=part_key(video, job, 2),
        options=ProcessOptions(start_ms=12000, end_ms=16000, sample_fps=1),
        warmup_ms=WARMUP_MS,
    )
    # the probe indexes the object first (demuxing all of it, once per object version)
    probe = ProbeRequest(job_id=job, video_id=video, bucket=bucket, video_key=key)
    assert worker.handle_batch({"Records": [_record(probe.to_json())]}, LambdaContext("worker", 900)) == {
        "batchItemFailures": []
    }
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    assert s3.head_object(Bucket=bucket, Key=frame_index_key(video, etag))["ContentLength"] > 0
    assert worker.handle_batch({"Records": [_record(item.to_json())]}, LambdaContext("worker", 900)) == {
        "batchItemFailures": []
    }
    part = json.loads(gzip.decompress(s3.get_object(Bucket=bucket, Key=item.part_key)["Body"].read()))
    # frames from the keyframe at 10 s (the warm-up's start) to 16 s: 6 s of 20, plus the index
    share = 6 / 20
    assert part["range"]["first_index"] == 360 and part["range"]["end_index"] == 480
    assert [f["index"] for f in part["frames"]] == [360, 390, 420, 450]
    print(f"segment read {part['stats']['bytes_read']} of {size} bytes")
    # beyond its share: the container index and at most one read-ahead (4 MiB) past each end
    assert share * size * 0.9 <= part["stats"]["bytes_read"] <= share * size + 9 * (1 << 20)


def _record(body: str) -> dict[str, Any]:
    return {"messageId": "m-1", "body": body, "attributes": {"ApproximateReceiveCount": "1"}}


# ------------------------------------------------------------------------------------ merge by identity


def test_merge_checks_frame_identity_and_names_both_segments(single_passes: dict[str, Any]) -> None:
    whole = single_passes["vfr_hole"]
    frames = whole["frames"]
    cut = next(f for f in frames if f["timestamp_ms"] >= 1500)

    def part(start_ms: int, end_ms: int | None, first: int, end: int | None) -> dict[str, Any]:
        chosen = [f for f in frames if first <= f["index"] < (end if end is not None else 10**9)]
        return {
            **whole,
            "range": {"start_ms": start_ms, "end_ms": end_ms, "first_index": first, "end_index": end},
            "frames": chosen,
        }

    good = merge_parts([part(1500, None, cut["index"], len(frames)), part(0, 1500, 0, cut["index"])])
    assert [f["index"] for f in good["frames"]] == [f["index"] for f in frames]
    with pytest.raises(MergeError, match=r"segments 0 and 1 .*gap.*frame 41.*frame 42"):
        merge_parts([part(0, 1500, 0, 41), part(1500, None, 42, len(frames))])
    with pytest.raises(MergeError, match=r"segments 0 and 1 .*overlap"):
        merge_parts([part(0, 1500, 0, 44), part(1500, None, 42, len(frames))])
    shifted = part(1500, None, cut["index"], len(frames))
    shifted["frames"] = [dict(f, timestamp_ms=f["timestamp_ms"] - 1000) for f in shifted["frames"]]
    with pytest.raises(MergeError, match="segment 1 appears twice or out of order"):
        merge_parts([part(0, 1500, 0, cut["index"]), shifted])


# ------------------------------------------------------------------------------------ annotated video


def test_the_annotated_video_is_h264_with_every_frame_at_its_time(
    clips: dict[str, Path], single_passes: dict[str, Any], tmp_path: Path
) -> None:
    source = clips["vfr_bframes"]
    out = annotated_video(source, single_passes["vfr_bframes"], tmp_path / "annotated.mp4")
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: playable while it downloads
    ref = reference(source)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (360, 640)
    drawn = reference(out)
    assert drawn.frame_count == ref.frame_count
    assert [round(t, 3) for t in drawn.timestamps_ms] == [round(t, 3) for t in ref.timestamps_ms]
