"""The engine on real footage with real MediaPipe: what a person watching each clip would expect."""

from __future__ import annotations

import io
import json
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from handpipe_worker.engine import VideoDecodeError, probe, process_video
from handpipe_worker.models import ModelCache, ModelError, assemble_bundled

from chalicelib.shared.contracts import ProcessOptions
from chalicelib.shared.results import MergeError, merge_parts
from tests.support.footage import write_video
from tests.support.paths import REPO, data_path

SCHEMA = json.loads((REPO / "docs" / "result.schema.json").read_text())
MODELS = ModelCache()


def valid(result: dict[str, Any]) -> dict[str, Any]:
    jsonschema.validate(result, SCHEMA)
    summary, frames = result["summary"], result["frames"]
    assert summary["frames_processed"] == len(frames) == result["stats"]["frames_processed"]
    assert summary["frames_with_hands"] == sum(1 for f in frames if f["hands"])
    assert [f["index"] for f in frames] == sorted({f["index"] for f in frames})
    return result


@cache
def run(name: str, **options: Any) -> dict[str, Any]:
    """One engine run per clip and option set for the whole session (MediaPipe costs seconds)."""
    return valid(process_video(data_path(f"videos/{name}"), ProcessOptions(**options), models=MODELS))


def with_hands(result: dict[str, Any]) -> int:
    return int(result["summary"]["frames_with_hands"])


def hands_per_frame(result: dict[str, Any]) -> list[int]:
    return [len(f["hands"]) for f in result["frames"]]


# ------------------------------------------------------------------------------------ real footage


def test_portrait_wave_finds_one_upright_hand_in_nearly_every_frame() -> None:
    result = run("one_hand_wave_portrait.mp4")
    video = result["video"]
    assert (video["width"], video["height"], video["orientation"]) == (720, 1280, "portrait")
    assert video["frame_count"] == 180 and video["fps"] == pytest.approx(30.0)
    assert len(result["frames"]) == 180
    assert with_hands(result) >= 170
    assert max(hands_per_frame(result)) == 1
    points = np.array([h["landmarks"] for f in result["frames"] for h in f["hands"]])
    inside = ((points[..., 0] >= 0) & (points[..., 0] <= 1) & (points[..., 1] >= 0) & (points[..., 1] <= 1)).mean()
    assert inside > 0.9  # fingertips leave the picture at the top of a wave, the hand does not
    centres = points[..., :2].mean(axis=1)
    assert ((centres >= 0) & (centres <= 1)).all()
    # Upright: an open waving hand has its middle fingertip (12) above its wrist (0).
    upright = [h["landmarks"][12][1] < h["landmarks"][0][1] for f in result["frames"] for h in f["hands"]]
    assert sum(upright) / len(upright) > 0.9
    # World landmarks are metres around the hand's centre: a hand spans roughly 0.1-0.25 m.
    world = np.array(result["frames"][90]["hands"][0]["world_landmarks"])
    assert 0.05 < np.linalg.norm(world[0] - world[12]) < 0.3
    assert "mirrored" in result["conventions"]["handedness"]
    assert result["decode"]["complete"] is True
    stats = result["stats"]
    assert stats["frames_decoded"] == 180 and stats["inference_s"] > 0 and stats["fps"] > 0


def test_landscape_clip_one_hand_throughout() -> None:
    result = run("one_hand_landscape.mp4")
    assert (result["video"]["width"], result["video"]["height"]) == (640, 360)
    assert len(result["frames"]) == 202
    assert with_hands(result) >= 190
    assert sum(1 for n in hands_per_frame(result) if n > 1) <= 5


@pytest.mark.parametrize(
    ("name", "frames", "min_with_hands", "min_two_hands"),
    [("asl_again_two_hands.mkv", 77, 60, 40), ("asl_thanks_two_hands.mkv", 51, 45, 30)],
)
def test_sign_language_clips_show_two_hands(name: str, frames: int, min_with_hands: int, min_two_hands: int) -> None:
    result = run(name)
    assert result["video"]["container"] == "mkv" and result["video"]["fps"] == pytest.approx(30.0)
    assert len(result["frames"]) == frames
    assert with_hands(result) >= min_with_hands
    assert sum(1 for n in hands_per_frame(result) if n == 2) >= min_two_hands
    assert set(result["summary"]["handedness_counts"]) == {"Left", "Right"}


def test_thumb_up_hand_enters_and_leaves() -> None:
    result = run("thumb_up_landscape_720p.mp4")
    assert (result["video"]["width"], result["video"]["height"]) == (1280, 720)
    assert 150 <= with_hands(result) < 195
    # The hand is not there for the whole clip: there are frames without hands at an end.
    counts = hands_per_frame(result)
    assert counts[0] == 0 or counts[-1] == 0
    ranges = result["summary"]["hand_time_ranges"]
    assert ranges and ranges[0]["start_ms"] > 0 or ranges[-1]["end_ms"] < result["frames"][-1]["timestamp_ms"]


def test_road_traffic_at_12_5_fps_has_no_hands() -> None:
    result = run("no_hands_road.mp4")
    assert result["video"]["fps"] == pytest.approx(12.5)
    assert len(result["frames"]) == 377
    assert with_hands(result) == 0 and result["summary"]["hand_time_ranges"] == []
    # Timestamps come from the container: 80 ms apart at 12.5 fps.
    assert result["frames"][10]["timestamp_ms"] == pytest.approx(800, abs=1)


def test_generated_noise_and_blanked_footage_have_no_hands(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(40)]
    result = valid(process_video(write_video(tmp_path / "noise.mp4", noise), models=MODELS))
    assert len(result["frames"]) == 40 and with_hands(result) == 0

    capture = cv2.VideoCapture(str(data_path("videos/one_hand_wave_portrait.mp4")))
    blank: list[np.ndarray] = []
    while len(blank) < 30 and (frame := capture.read()[1]) is not None:
        blank.append(np.full_like(frame, 128))
    result = valid(process_video(write_video(tmp_path / "blank.mp4", blank, 30.0), models=MODELS))
    assert len(result["frames"]) == 30 and with_hands(result) == 0


# ------------------------------------------------------------------------------------ options


def test_time_range_reports_only_its_frames() -> None:
    result = run("one_hand_wave_portrait.mp4", start_ms=2000, end_ms=4000)
    stamps = [f["timestamp_ms"] for f in result["frames"]]
    assert min(stamps) >= 2000 and max(stamps) < 4000
    assert len(stamps) == 60
    assert result["range"] == {"start_ms": 2000, "end_ms": 4000, "first_index": 60, "end_index": 120}
    assert with_hands(result) >= 57


def test_sampling_keeps_at_most_n_frames_a_second() -> None:
    result = run("one_hand_wave_portrait.mp4", sample_fps=5.0)
    stamps = [f["timestamp_ms"] for f in result["frames"]]
    assert len(stamps) == 30
    assert all(b - a >= 190 for a, b in zip(stamps, stamps[1:], strict=False))
    assert result["stats"]["frames_decoded"] == 180
    assert with_hands(result) >= 28


def test_num_hands_caps_detections() -> None:
    result = run("asl_again_two_hands.mkv", num_hands=1)
    assert max(hands_per_frame(result)) == 1
    assert with_hands(result) >= 55


def test_lite_model_still_finds_the_hand() -> None:
    result = run("one_hand_wave_portrait.mp4", model="lite")
    assert result["model"]["name"] == "lite" and "hand_landmark_lite" in result["model"]["source"]
    assert with_hands(result) >= 170


def test_user_supplied_task_bundle(tmp_path: Path) -> None:
    task = tmp_path / "hand_landmarker.task"
    task.write_bytes(assemble_bundled("full").data)
    options = ProcessOptions(model_uri=str(task), start_ms=0, end_ms=1000)
    result = valid(process_video(data_path("videos/one_hand_wave_portrait.mp4"), options, models=MODELS))
    assert result["model"] == {**result["model"], "name": "custom", "source": str(task)}
    assert with_hands(result) >= 28

    not_a_bundle = tmp_path / "bad.task"
    not_a_bundle.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a MediaPipe .task bundle"):
        process_video(data_path("videos/one_hand_wave_portrait.mp4"), ProcessOptions(model_uri=str(not_a_bundle)))


# ------------------------------------------------------------------------------------ merging parts


def landmark_shift(a: dict[str, Any], b: dict[str, Any]) -> float:
    """How far one hand's landmarks lie from another's: the mean image-plane distance, normalized."""
    return float(np.linalg.norm((np.array(a["landmarks"]) - np.array(b["landmarks"]))[:, :2], axis=1).mean())


@pytest.mark.parametrize(
    ("name", "cuts", "sample_fps"),
    [
        ("one_hand_wave_portrait.mp4", [3000], None),
        ("one_hand_wave_portrait.mp4", [1300, 2500, 4100], None),
        ("one_hand_wave_portrait.mp4", [1700, 4100], 7.0),
        ("one_hand_wave_portrait.mp4", [2000], 0.5),
        ("asl_again_two_hands.mkv", [900, 1900], None),
    ],
)
def test_parts_merge_into_the_single_pass_result(name: str, cuts: list[int], sample_fps: float | None) -> None:
    """Segments seek to their start less a 2 s warm-up for the tracker; merged, they equal one pass:
    the same frames, the same hands, landmarks within 0.01 of the frame size."""
    whole = run(name, sample_fps=sample_fps)
    bounds = [0, *cuts, None]
    parts = [
        valid(
            process_video(
                data_path(f"videos/{name}"),
                ProcessOptions(start_ms=start or None, end_ms=end, sample_fps=sample_fps),
                models=MODELS,
                warmup_ms=2000 if start else 0,
            )
        )
        for start, end in zip(bounds, bounds[1:], strict=False)
    ]
    merged = valid(merge_parts(reversed(parts)))  # order of arrival does not matter
    assert [f["index"] for f in merged["frames"]] == [f["index"] for f in whole["frames"]]
    assert hands_per_frame(merged) == hands_per_frame(whole)
    for ours, theirs in zip(merged["frames"], whole["frames"], strict=True):
        for hand in ours["hands"]:
            # Hands are matched by position: MediaPipe's order of two hands is not part of the contract.
            twin = min(theirs["hands"], key=lambda other: landmark_shift(hand, other))
            assert twin["handedness"] == hand["handedness"]
            assert landmark_shift(hand, twin) <= 0.01, f"frame {ours['index']} moved more than 0.01"
    assert merged["summary"]["frames_with_hands"] == whole["summary"]["frames_with_hands"]
    assert merged["range"] == {
        "start_ms": 0,
        "end_ms": None,
        "first_index": 0,
        "end_index": whole["video"]["frame_count"],
    }


def test_merge_refuses_overlaps_and_gaps() -> None:
    whole = run("one_hand_wave_portrait.mp4")
    part_a = {**whole, "range": {"start_ms": 0, "end_ms": 3000}}
    part_b = {**whole, "range": {"start_ms": 2000, "end_ms": None}}
    with pytest.raises(MergeError, match="do not meet"):
        merge_parts([part_a, part_b])
    overlapping = {**whole, "range": {"start_ms": 3000, "end_ms": None}}
    with pytest.raises(MergeError, match="twice"):
        merge_parts([part_a, overlapping])
    with pytest.raises(MergeError, match="no parts"):
        merge_parts([])


# ------------------------------------------------------------------------------------ bad files


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(VideoDecodeError, match="empty") as caught:
        process_video(empty, models=MODELS)
    assert caught.value.code == "empty"


@pytest.mark.parametrize("content", [b"this is a text file, not a video\n" * 100, bytes(range(256)) * 64])
def test_not_a_video_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(content)
    with pytest.raises(VideoDecodeError, match="not a video") as caught:
        process_video(fake, models=MODELS)
    assert caught.value.code == "not_video"


def test_truncated_file_processes_what_decodes_and_says_where_it_stopped(tmp_path: Path) -> None:
    source = data_path("videos/one_hand_wave_portrait.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(source[: len(source) * 6 // 10])
    result = valid(process_video(cut, ProcessOptions(sample_fps=10), models=MODELS))
    decode = result["decode"]
    assert decode["complete"] is False and "truncated" in decode["error"]
    assert 0 < decode["stopped_at_ms"] < 6000
    assert 10 <= len(result["frames"]) < 60 and with_hands(result) >= 10

    header_only = tmp_path / "header.mp4"
    header_only.write_bytes(source[:2000])
    with pytest.raises(VideoDecodeError):
        process_video(header_only, models=MODELS)


def test_probe_reads_container_facts_without_decoding() -> None:
    info = probe(data_path("videos/asl_thanks_two_hands.mkv"))
    assert (info.width, info.height, info.container, info.codec) == (640, 480, "mkv", "h264")
    assert info.duration_ms == pytest.approx(51 * 1000 / 30, abs=40)


def test_bundled_models_are_zip_bundles_of_the_package_files() -> None:
    for variant in ("full", "lite"):
        names = zipfile.ZipFile(io.BytesIO(assemble_bundled(variant).data)).namelist()
        assert sorted(names) == ["hand_detector.tflite", "hand_landmarks_detector.tflite"]
    with pytest.raises(ModelError, match="unknown model"):
        assemble_bundled("huge")
