"""The orchestrator's container index (chalicelib.shared.mp4index) against what the worker's PyAV demux
says, frame for frame, on the hard footage and the shared clips; what it declines goes to a worker's
probe. Through moto S3 it reads only the box headers and the moov, and plan_job starts the segments at
once, the frame index stored where the workers read it."""

from __future__ import annotations

import json
import os
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from handpipe_worker.video import FrameIndex, VideoFile

from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job, Video
from chalicelib.service.common import new_id, now_ms
from chalicelib.service.orchestration import plan_job
from chalicelib.shared.contracts import JobRequested, frame_index_key, video_key
from chalicelib.shared.mp4index import read_index
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.storage import ObjectStore
from handpipe.local.aws import aws_clients
from tests.support.databases import Store
from tests.support.footage import HARD_CASES, Clip, source_frames, write_clip
from tests.support.paths import data_path

SHARED = [
    "one_hand_wave_portrait.mp4",
    "one_hand_landscape.mp4",
    "thumb_up_landscape_720p.mp4",
    "no_hands_road.mp4",
    "asl_again_two_hands.mkv",
    "asl_thanks_two_hands.mkv",
]
EXTRA = (
    Clip("start_mp4", time_base=Fraction(1, 1000), ticks=tuple(i * 33 for i in range(60)), start_ticks=1400),
    Clip("start_bframes", ticks=tuple(i * 3000 for i in range(60)), start_ticks=126000, b_frames=2),
    Clip("quicktime", suffix=".mov", ticks=tuple(i * 3000 for i in range(60)), b_frames=2),
)


def _write_moov_at_end(path: Path) -> Path:
    """mp4v written the way OpenCV writes it: the moov after the mdat."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 360, 640, "yuv420p"
        for picture in source_frames(50):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _write_fragmented(path: Path) -> Path:
    with av.open(str(path), mode="w", options={"movflags": "frag_keyframe+empty_moov"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 360, 640, "yuv420p"
        stream.codec_context.options = {"g": "10"}
        for picture in source_frames(40):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mp4index")
    made = {clip.name: write_clip(clip, folder) for clip in (*HARD_CASES, *EXTRA)}
    made["moov_at_end"] = _write_moov_at_end(folder / "moov_at_end.mp4")
    made.update({Path(name).stem: data_path(f"videos/{name}") for name in SHARED})
    return made


def _demuxed(path: Path) -> tuple[FrameIndex, dict[str, Any]]:
    with VideoFile(path) as video:
        index = video.build_index()
        return index, video.describe(index).to_dict()


def test_the_container_index_is_the_demuxers_frame_for_frame(clips: dict[str, Path]) -> None:
    answered = []
    for name, path in clips.items():
        with open(path, "rb") as file:
            found = read_index(file, os.path.getsize(path))
        if path.suffix == ".mkv":
            assert found is None, name  # Matroska: a worker probes it
            continue
        assert found is not None, f"{name}: an MP4 this reader should model"
        index, info = _demuxed(path)
        assert FrameIndex.from_bytes(found.index_bytes()) == index, name
        assert found.video_metadata(info["filename"]) == info, name
        answered.append(name)
    # the B-frames with an edit list, the VFR hole, rotations, NTSC, a delayed start, QuickTime, mp4v
    assert len(answered) == len(clips) - 3


def test_what_it_does_not_model_is_declined(tmp_path: Path) -> None:
    fragmented = _write_fragmented(tmp_path / "fragmented.mp4")
    assert VideoFile(fragmented).build_index().frame_count == 40  # a real video, which a worker can probe
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data_path("videos/one_hand_landscape.mp4").read_bytes()[:5000])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x08free" + os.urandom(4000))
    for path in (fragmented, cut, garbage):
        with open(path, "rb") as file:
            assert read_index(file, os.path.getsize(path)) is None, path.name


def test_plan_job_reads_only_the_index_and_starts_the_segments_without_a_probe(
    store: Store, moto_endpoint: str, clips: dict[str, Path]
) -> None:
    s3, sqs = aws_clients(moto_endpoint)
    bucket = f"index-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    work_url = sqs.create_queue(QueueName=f"work-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    settings = Settings(bucket=bucket, jobs_queue_url="unused", work_queue_url=work_url, segment_ms=1000)
    videos, jobs, objects = VideoRepository(store.db), JobRepository(store.db), ObjectStore(s3, bucket)
    outcomes: dict[str, str] = {}
    for name in ("moov_at_end", "thumb_up_landscape_720p", "asl_thanks_two_hands"):
        path = clips[name]
        video_id, now = new_id("vid"), now_ms()
        key = video_key(video_id, path.name)
        s3.upload_file(str(path), bucket, key)
        videos.add(
            Video(id=video_id, title=name, filename=path.name, content_type="video/mp4", s3_key=key,
                  status="UPLOADED", created_at=now, updated_at=now)
        )  # fmt: skip
        job, _ = jobs.create(Job(id=new_id("job"), video_id=video_id, status="QUEUED", options={}, created_at=now,
                                 updated_at=now))  # fmt: skip
        request = JobRequested(job_id=job.id, video_id=video_id)
        outcomes[name] = plan_job(videos, jobs, MessageQueue(sqs, work_url), settings, request, store=objects)
        if path.suffix == ".mkv":
            continue
        index, info = _demuxed(path)
        video = videos.get(video_id)
        assert video is not None and video.metadata == {**info, "filename": path.name}
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        stored = FrameIndex.from_bytes(objects.get_bytes(frame_index_key(video_id, etag)))
        assert stored == index
        planned = jobs.get(job.id)
        assert planned is not None and planned.status == "IN_PROGRESS" and planned.segments_total >= 2
    assert outcomes["asl_thanks_two_hands"] == "probing"  # Matroska: a worker's probe, as before
    assert outcomes["moov_at_end"].startswith("container index: planned")
    kinds: list[str] = []
    while got := sqs.receive_message(QueueUrl=work_url, MaxNumberOfMessages=10).get("Messages", []):
        kinds.extend(json.loads(m["Body"])["type"] for m in got)
    assert kinds.count("video.probe") == 1 and "work.item" in kinds


def test_a_ranged_read_of_the_index_fetches_a_fraction_of_the_object(moto_endpoint: str, tmp_path: Path) -> None:
    """Of a clip of more than 4 MB whose moov follows its mdat, the orchestrator reads the box headers and
    the moov only, in blocks of 256 KiB."""
    s3, _ = aws_clients(moto_endpoint)
    bucket = f"ranged-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    # noise does not compress: a 10 MB+ mdat before a moov of a few KB
    rng = np.random.default_rng(5)
    with av.open(str(tmp_path / "longer.mp4"), mode="w") as target:
        stream = target.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 360, 640, "yuv420p"
        stream.codec_context.options = {"qscale": "2"}
        for _ in range(120):
            picture = rng.integers(0, 256, (640, 360, 3), dtype=np.uint8)
            target.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        target.mux(stream.encode(None))
    longer = tmp_path / "longer.mp4"
    s3.upload_file(str(longer), bucket, "videos/longer.mp4")
    reader = ObjectStore(s3, bucket).open_ranged("videos/longer.mp4", block_size=256 << 10)
    found = read_index(reader, reader.size)
    assert found is not None and len(found.pts) == 120
    assert reader.size > 4 * (1 << 20) and reader.bytes_fetched <= 3 * (256 << 10), (reader.size, reader.bytes_fetched)
