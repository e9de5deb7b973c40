"""Insights (gestures, tracks, motion) and pictures on real footage with real MediaPipe: the labels a
person looking at each photo or clip would give, plus the smoothing, tracking and drawing around them."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from handpipe_worker.engine import process_video
from handpipe_worker.models import ModelCache
from handpipe_worker.pictures import HAND_CONNECTIONS, annotated_video, contact_sheet, draw_hands, timeline_png

from chalicelib.shared.contracts import ProcessOptions
from chalicelib.shared.gestures import GESTURES, classify_gesture
from chalicelib.shared.insights import analyze, assign_tracks, gesture_ranges, mode_filter, motion_summary
from tests.support.footage import reference
from tests.support.paths import REPO, data_path

MODELS = ModelCache()  # the bundled "full" model, assembled once

STILL_FRAMES = 10
TRANSFORMS = {
    "upright": lambda image: image,
    "rot90": lambda image: cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE),
    "rot180": lambda image: cv2.rotate(image, cv2.ROTATE_180),
    "rot270": lambda image: cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE),
    "mirror": lambda image: cv2.flip(image, 1),
}


@cache
def photo(name: str, transform: str = "upright") -> dict[str, Any]:
    """The engine's result for a photo shown as a short still video (10 identical frames, so the
    tracker settles as it does on footage). Cached for the session: MediaPipe costs seconds."""
    image = TRANSFORMS[transform](cv2.imread(str(data_path(f"images/{name}"))))
    height, width = image.shape[:2]
    image = image[: height - height % 2, : width - width % 2]  # even sizes for the mp4v encoder
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{Path(name).stem}-{transform}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (image.shape[1], image.shape[0]))
        for _ in range(STILL_FRAMES):
            writer.write(image)
        writer.release()
        result = process_video(path, ProcessOptions(num_hands=2), models=MODELS)
    assert len(result["frames"]) == STILL_FRAMES
    return result


@cache
def clip(name: str) -> dict[str, Any]:
    return process_video(data_path(f"videos/{name}"), ProcessOptions(num_hands=2), models=MODELS)


@cache
def insights_of(name: str) -> dict[str, Any]:
    return analyze(clip(name))


def track_labels(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(handedness, smoothed label) of each track of a still: the label held over its frames."""
    ranges = analyze(result)["gestures"]["ranges"]
    labels: list[tuple[str, str]] = []
    for track in assign_tracks(result["frames"]):
        assert len(track) == STILL_FRAMES, "a still hand keeps one track over all its frames"
        held = [r for r in ranges if r["track"] == len(labels)]
        assert len(held) == 1 and held[0]["frames"] == STILL_FRAMES, held
        labels.append((held[0]["handedness"], held[0]["label"]))
    return labels


def wrist(result: dict[str, Any], frame_index: int, hand_index: int) -> tuple[float, float]:
    frame = next(f for f in result["frames"] if f["index"] == frame_index)
    x, y, _ = frame["hands"][hand_index]["landmarks"][0]
    return x, y


# ------------------------------------------------------------------------------------ photos


def test_thumb_up_photo_is_thumb_up() -> None:
    assert track_labels(photo("thumb_up.jpg")) == [("Left", "thumb_up")]


def test_open_palm_photo_is_open_palm() -> None:
    assert track_labels(photo("open_palm.jpg")) == [("Right", "open_palm")]


def test_ok_sign_photo_labels_each_hand_truthfully() -> None:
    """SOURCES.md calls it "two people each making an OK sign", but only the woman facing the camera
    makes one (index curled onto the thumb, three fingers up). The hand found in front of the other
    person is a thumbs-up: thumb straight up over curled fingers. The OK sign is none of the labels."""
    result = photo("ok_sign_two_people.jpg")
    labels = track_labels(result)
    assert len(labels) == 2
    tracks = assign_tracks(result["frames"])
    # The OK sign is the higher hand, on the left (her raised right hand).
    ok_track = min(range(2), key=lambda t: wrist(result, *tracks[t][0])[1])
    assert wrist(result, *tracks[ok_track][0])[0] < wrist(result, *tracks[1 - ok_track][0])[0]
    assert labels[ok_track][1] == "none"
    assert labels[1 - ok_track][1] == "thumb_up"
    per_frame = analyze(result)["gestures"]["per_frame"]
    ok_hands = {tuple(ref) for ref in tracks[ok_track]}
    assert all(label == "none" for f, h, label, _ in per_frame if (f, h) in ok_hands)
    assert not any(label == "closed_fist" for *_, label, _ in per_frame)


@pytest.mark.parametrize(
    ("name", "transform", "expected"),
    [
        ("thumb_up.jpg", "rot180", "thumb_down"),  # the same hand upside down: the thumb points down
        ("thumb_up.jpg", "rot90", "none"),  # the thumb points sideways: neither up nor down
        ("thumb_up.jpg", "rot270", "none"),
        ("thumb_up.jpg", "mirror", "thumb_up"),
        ("open_palm.jpg", "rot90", "open_palm"),  # finger states do not depend on the hand's rotation
        ("open_palm.jpg", "rot180", "open_palm"),
    ],
)
def test_turned_photos(name: str, transform: str, expected: str) -> None:
    (handedness, label), *others = track_labels(photo(name, transform))
    assert not others and label == expected
    if transform == "mirror":  # MediaPipe's label follows the mirror image
        assert handedness != track_labels(photo(name))[0][0]


# ------------------------------------------------------------------------------------ clips


def test_waving_open_hand_is_mostly_open_palm() -> None:
    """The selfie clip: an open hand waving for most of its 6 s, closing into a fist twice (about 1 s
    and 4.3 s in) and ending with a thumbs-up over the last ~0.8 s."""
    result = clip("one_hand_wave_portrait.mp4")
    ranges = insights_of("one_hand_wave_portrait.mp4")["gestures"]["ranges"]
    duration = result["video"]["duration_ms"]
    longest = max(ranges, key=lambda r: r["duration_ms"])
    assert longest["label"] == "open_palm" and longest["duration_ms"] > 2000
    open_ms = sum(r["duration_ms"] for r in ranges if r["label"] == "open_palm")
    assert open_ms > 0.55 * duration
    assert ranges[-1]["label"] == "thumb_up" and ranges[-1]["duration_ms"] >= 500
    assert ranges[-1]["end_ms"] == pytest.approx(duration, abs=50)
    assert any(r["label"] == "closed_fist" for r in ranges)
    assert {r["label"] for r in ranges} <= {"open_palm", "closed_fist", "thumb_up", "none"}
    assert all(b["start_ms"] >= a["end_ms"] - 1 for a, b in zip(ranges, ranges[1:], strict=False))


def test_thumbs_up_clip_holds_a_thumb_up() -> None:
    """The woman raises her fist from about 0.9 s and holds a thumbs-up from about 2 s to the end."""
    result = clip("thumb_up_landscape_720p.mp4")
    ranges = insights_of("thumb_up_landscape_720p.mp4")["gestures"]["ranges"]
    thumbs = [r for r in ranges if r["label"] == "thumb_up"]
    assert thumbs and max(r["duration_ms"] for r in thumbs) >= 3000
    assert max(ranges, key=lambda r: r["duration_ms"])["label"] == "thumb_up"
    assert thumbs[-1]["end_ms"] == pytest.approx(result["video"]["duration_ms"], abs=100)
    first = ranges[0]
    assert first["label"] == "closed_fist" and first["start_ms"] < thumbs[0]["start_ms"]
    assert not any(r["label"] in ("open_palm", "thumb_down") for r in ranges)


def test_two_hands_keep_their_own_tracks() -> None:
    """ASL "again": the signer's hands come together in front of his chest. MediaPipe swaps their
    Left/Right labels in a few frames when they are close; the tracks follow the hands, not the labels."""
    result = clip("asl_again_two_hands.mkv")
    tracks = assign_tracks(result["frames"])
    assert len(tracks) == 2
    assert all(len(track) >= 40 for track in tracks)
    owner = {ref: t for t, track in enumerate(tracks) for ref in track}
    assert len(owner) == sum(len(f["hands"]) for f in result["frames"])  # every hand in exactly one track
    both = 0
    for frame in result["frames"]:
        refs = [(frame["index"], h) for h in range(len(frame["hands"]))]
        assert len({owner[ref] for ref in refs}) == len(refs)  # never two hands of a frame in one track
        if len(refs) == 2:
            both += 1
            xs = {owner[ref]: wrist(result, *ref)[0] for ref in refs}
            # the signer's left hand stays on the right of the picture, his right hand on the left
            assert xs[0] > xs[1]
    assert both >= 40
    insights = analyze(result)
    assert [t["handedness"] for t in insights["tracks"]] == ["Left", "Right"]
    assert [len(t["hands"]) for t in insights["tracks"]] == [len(t) for t in tracks]


def test_motion_summary_of_the_wave() -> None:
    result = clip("one_hand_wave_portrait.mp4")
    insights = insights_of("one_hand_wave_portrait.mp4")
    motion = insights["motion"]
    (track,) = motion["tracks"]
    duration = result["video"]["duration_ms"]
    assert track["handedness"] == "Left" and track["frames"] == 180
    assert track["first_ms"] == 0 and track["time_on_screen_ms"] == pytest.approx(duration, abs=100)
    assert track["present"] == [[0.0, pytest.approx(duration, abs=100)]]
    assert track["wrist_path_length"] > 0.5  # waving across a good part of the picture
    assert track["wrist_path_length_px"] > track["wrist_path_length"] * 700
    assert 0 < track["wrist_mean_speed"] <= track["wrist_max_speed"] < 10
    assert track["wrist_mean_speed"] == pytest.approx(track["wrist_path_length"] / (duration / 1000), rel=0.05)
    series = track["openness"]
    assert len(series) == 180 and all(0 <= v <= 1 for _, v in series)
    ranges = insights["gestures"]["ranges"]

    def mean_openness(label: str) -> float:
        values = [v for t, v in series for r in ranges if r["label"] == label and r["start_ms"] <= t < r["end_ms"]]
        return sum(values) / len(values)

    assert mean_openness("open_palm") > 0.75 and mean_openness("closed_fist") < 0.3
    assert track["handedness_timeline"] == {"Left": [[0.0, pytest.approx(duration, abs=100)]]}
    assert motion["handedness_timeline"] == track["handedness_timeline"]


def test_motion_summary_of_a_hand_that_enters() -> None:
    result = clip("thumb_up_landscape_720p.mp4")
    (track,) = insights_of("thumb_up_landscape_720p.mp4")["motion"]["tracks"]
    assert 500 < track["first_ms"] < 1500  # the hand comes into the picture about 0.9 s in
    assert track["time_on_screen_ms"] < result["video"]["duration_ms"] - 500
    assert track["openness_mean"] < 0.3  # a fist, then a thumbs-up: fingers curled throughout


def test_insights_document_shape() -> None:
    result = clip("asl_again_two_hands.mkv")
    insights = json.loads(json.dumps(analyze(result)))  # JSON-serialisable as it is
    assert insights["format"] == "handpipe.insights" and insights["version"] == 1
    gestures = insights["gestures"]
    assert gestures["method"] == "rules"
    assert len(gestures["per_frame"]) == sum(len(f["hands"]) for f in result["frames"])
    for frame_index, hand_index, label, score in gestures["per_frame"]:
        assert isinstance(frame_index, int) and isinstance(hand_index, int)
        assert label in GESTURES and 0 <= score <= 1
    for item in gestures["ranges"]:
        assert item["label"] in GESTURES and item["duration_ms"] >= 200
        assert item["end_ms"] - item["start_ms"] == pytest.approx(item["duration_ms"])
    assert len(insights["motion"]["tracks"]) == len(insights["tracks"]) == 2
    assert set(insights["motion"]["handedness_timeline"]) == {"Left", "Right"}


def test_insights_need_no_numpy() -> None:
    """The API Lambda has no numpy: analyze() must run with numpy (and cv2) impossible to import."""
    script = (
        "import json, sys\n"
        "sys.modules['numpy'] = None\n"
        "sys.modules['cv2'] = None\n"
        "from chalicelib.shared.insights import analyze\n"
        "print(json.dumps(analyze(json.load(sys.stdin))['gestures']['ranges']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(photo("open_palm.jpg")),
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["label"] for r in json.loads(done.stdout)] == ["open_palm"]


# ------------------------------------------------------------------------------------ smoothing


def still_sequence(hands: list[dict[str, Any]], step_ms: float = 1000 / 30) -> list[dict[str, Any]]:
    return [{"index": i, "timestamp_ms": round(i * step_ms, 3), "hands": [hand]} for i, hand in enumerate(hands)]


def moved_to(hand: dict[str, Any], wrist_xy: tuple[float, float]) -> dict[str, Any]:
    """The same hand shifted in the picture so its wrist lands on wrist_xy (world landmarks unchanged)."""
    moved = copy.deepcopy(hand)
    dx, dy = wrist_xy[0] - hand["landmarks"][0][0], wrist_xy[1] - hand["landmarks"][0][1]
    moved["landmarks"] = [[x + dx, y + dy, z] for x, y, z in hand["landmarks"]]
    return moved


@pytest.mark.parametrize("flicker", [1, 2])
def test_a_flicker_of_a_frame_or_two_makes_no_range(flicker: int) -> None:
    """Real hands: 30 frames of the open palm with `flicker` frames of the thumbs-up in the middle."""
    palm = photo("open_palm.jpg")["frames"][-1]["hands"][0]
    thumb = moved_to(photo("thumb_up.jpg")["frames"][-1]["hands"][0], tuple(palm["landmarks"][0][:2]))
    hands = [palm] * 15 + [thumb] * flicker + [palm] * 15
    frames = still_sequence(hands)
    raw = [classify_gesture(h["landmarks"], h["world_landmarks"], h["handedness"])[0] for h in hands]
    assert raw.count("thumb_up") == flicker  # the flicker is there before smoothing
    ranges = gesture_ranges(frames)
    assert [(r["label"], r["frames"]) for r in ranges] == [("open_palm", len(hands))]
    assert ranges[0]["start_ms"] == 0 and ranges[0]["end_ms"] == pytest.approx(len(hands) * 1000 / 30, abs=1)


def test_a_held_gesture_makes_a_range_and_short_ones_do_not() -> None:
    palm = photo("open_palm.jpg")["frames"][-1]["hands"][0]
    thumb = moved_to(photo("thumb_up.jpg")["frames"][-1]["hands"][0], tuple(palm["landmarks"][0][:2]))
    frames = still_sequence([palm] * 15 + [thumb] * 9 + [palm] * 15)  # 9 frames: 300 ms
    assert [r["label"] for r in gesture_ranges(frames)] == ["open_palm", "thumb_up", "open_palm"]
    assert gesture_ranges(frames)[1]["duration_ms"] == pytest.approx(300, abs=1)
    assert [r["label"] for r in gesture_ranges(frames, min_duration_ms=400)] == ["open_palm", "open_palm"]


def test_mode_filter() -> None:
    assert mode_filter(list("aaaabaaaa")) == list("aaaaaaaaa")
    assert mode_filter(list("aaaabbaaaa")) == list("aaaaaaaaaa")
    assert mode_filter(list("aaaabbbbb")) == list("aaaabbbbb")
    assert mode_filter([]) == []


def test_a_long_absence_splits_ranges_and_tracks_follow_the_nearest_wrist() -> None:
    palm = photo("open_palm.jpg")["frames"][-1]["hands"][0]
    left, right = moved_to(palm, (0.2, 0.8)), moved_to(palm, (0.8, 0.8))
    frames = still_sequence([left] * 10) + [
        {"index": 10 + i, "timestamp_ms": 1000 + i * 33.3, "hands": [right, moved_to(left, (0.21, 0.8))]}
        for i in range(10)
    ]
    tracks = assign_tracks(frames)
    assert len(tracks) == 2
    assert tracks[0] == [(i, 0) for i in range(10)] + [(10 + i, 1) for i in range(10)]  # the same hand, moved 0.01
    ranges = gesture_ranges(frames)
    assert [(r["track"], r["label"]) for r in ranges] == [(0, "open_palm"), (0, "open_palm"), (1, "open_palm")]


def test_motion_series_is_downsampled() -> None:
    """The wave's frames four times over at 120 fps (each frame repeated): 720 frames, still 6 s."""
    frames = clip("one_hand_wave_portrait.mp4")["frames"]
    slow = [
        {**f, "index": 4 * i + k, "timestamp_ms": (4 * i + k) * 1000 / 120}
        for i, f in enumerate(frames)
        for k in range(4)
    ]
    (track,) = motion_summary(slow)["tracks"]
    assert track["frames"] == 720 and len(track["openness"]) == 200
    assert track["time_on_screen_ms"] == pytest.approx(6000, abs=50)
    assert [t for t, _ in track["openness"]] == sorted(t for t, _ in track["openness"])


# ------------------------------------------------------------------------------------ pictures


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_draw_hands_draws_on_a_copy() -> None:
    result = photo("open_palm.jpg")
    hands = result["frames"][-1]["hands"]
    blank = np.zeros((224, 224, 3), np.uint8)
    drawn = draw_hands(blank, hands, ["open_palm"])
    assert not blank.any()
    assert (drawn.sum(axis=2) > 0).mean() > 0.02
    assert len(HAND_CONNECTIONS) == 21 and {i for pair in HAND_CONNECTIONS for i in pair} == set(range(21))


def test_contact_sheet() -> None:
    result = clip("one_hand_wave_portrait.mp4")
    sheet = decode_png(
        contact_sheet(
            data_path("videos/one_hand_wave_portrait.mp4"), result, insights=insights_of("one_hand_wave_portrait.mp4")
        )
    )
    tile_w = 1200 // 4
    assert sheet.shape == (3 * round(tile_w * 1280 / 720), 1200, 3)
    assert sheet.std() > 30
    # no hands at all: the sheet still shows evenly sampled frames
    bare = {**result, "frames": [{**f, "hands": []} for f in result["frames"]]}
    empty = decode_png(
        contact_sheet(data_path("videos/one_hand_wave_portrait.mp4"), bare, columns=2, rows=2, width=400)
    )
    assert empty.shape == (2 * round(200 * 1280 / 720), 400, 3) and empty.std() > 30


def test_timeline() -> None:
    wave = decode_png(timeline_png(clip("one_hand_wave_portrait.mp4"), insights_of("one_hand_wave_portrait.mp4")))
    asl = decode_png(timeline_png(clip("asl_again_two_hands.mkv"), insights_of("asl_again_two_hands.mkv"), width=900))
    assert wave.shape[1] == 1200 and asl.shape[1] == 900
    assert asl.shape[0] > wave.shape[0]  # a lane per track
    assert wave.std() > 20
    green = np.all(wave == (80, 175, 76), axis=2).sum()  # open_palm's colour fills most of the lane
    blue = np.all(wave == (200, 120, 30), axis=2).sum()  # thumb_up's
    assert green > 3 * blue > 0


def test_annotated_video(tmp_path: Path) -> None:
    """On every processed frame the skeleton is drawn over the hand; a frame not processed gets the
    last drawing when it is at most two frames newer, and none after that."""
    source = data_path("videos/asl_again_two_hands.mkv")
    result = clip("asl_again_two_hands.mkv")
    every_fourth = {**result, "frames": [f for f in result["frames"] if f["index"] % 4 == 0]}
    out = annotated_video(source, every_fourth, tmp_path / "annotated.mp4")
    assert out == tmp_path / "annotated.mp4"

    # every frame at its source's time (an independent PyAV pass over both files), so VFR stays VFR
    assert reference(out).timestamps_ms == pytest.approx(reference(source).timestamps_ms, abs=0.001)
    capture = cv2.VideoCapture(str(out))
    ours = [capture.read()[1] for _ in range(77)]
    assert capture.read()[0] is False
    capture.release()
    capture = cv2.VideoCapture(str(source))
    originals = [capture.read()[1] for _ in range(77)]
    capture.release()
    assert all(frame is not None and frame.shape == (480, 640, 3) for frame in ours)

    def change_around_hands(index: int, hands_from: int) -> tuple[float, float]:
        """Mean absolute difference from the source inside the boxes of the hands of frame
        `hands_from`, and outside them."""
        frame = next(f for f in result["frames"] if f["index"] == hands_from)
        mask = np.zeros((480, 640), bool)
        for hand in frame["hands"]:
            xs = [p[0] * 640 for p in hand["landmarks"]]
            ys = [p[1] * 480 for p in hand["landmarks"]]
            mask[max(0, math.floor(min(ys))) : math.ceil(max(ys)), max(0, math.floor(min(xs))) : math.ceil(max(xs))] = (
                True
            )
        diff = np.abs(ours[index].astype(int) - originals[index].astype(int)).mean(axis=2)
        return float(diff[mask].mean()), float(diff[~mask].mean())

    processed_with_two_hands = next(
        f["index"] for f in every_fourth["frames"] if len(f["hands"]) == 2 and f["index"] + 3 < 77
    )
    inside, outside = change_around_hands(processed_with_two_hands, processed_with_two_hands)
    assert inside > 15 and inside > 4 * outside  # drawn over the hands, the rest only re-encoded
    held, _ = change_around_hands(processed_with_two_hands + 2, processed_with_two_hands)
    assert held > 15  # two frames later: still drawn
    dropped, _ = change_around_hands(processed_with_two_hands + 3, processed_with_two_hands)
    assert dropped < 0.5 * held  # three frames later: no drawing

    out = annotated_video(source, result, tmp_path / "full.mp4", insights_of("asl_again_two_hands.mkv"))
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 77
    capture.release()
