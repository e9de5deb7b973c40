"""The tracker warm-up the app sends with every segment but the first (Settings.warmup_ms, the default
bench/warmup.py chose on the shared clips): cut every second, far more often than real segments, each
clip's merge holds the single pass's frames with the same hands in each, and landmarks within 0.01 on all
but a few hands where MediaPipe's tracker settles on another fit. A cold start at the cut (no warm-up)
does not, so the test can tell."""

from __future__ import annotations

from dataclasses import fields
from functools import cache
from typing import Any

import pytest
from handpipe_worker.engine import process_video
from handpipe_worker.models import ModelCache
from handpipe_worker.video import FrameIndex, VideoFile

from chalicelib.config import Settings
from chalicelib.shared.contracts import ProcessOptions
from chalicelib.shared.results import merge_parts
from tests.support.paths import data_path

MODELS = ModelCache()
SEGMENT_MS = 1000
DEFAULT_WARMUP_MS = int(next(f.default for f in fields(Settings) if f.name == "warmup_ms"))  # type: ignore[arg-type]
CLIPS = ("one_hand_landscape.mp4", "asl_again_two_hands.mkv", "asl_thanks_two_hands.mkv", "one_hand_wave_portrait.mp4")


@cache
def single_pass(name: str) -> tuple[dict[str, Any], FrameIndex]:
    path = data_path(f"videos/{name}")
    with VideoFile(path) as video:
        index = video.build_index()
    return process_video(path, ProcessOptions(), models=MODELS), index


def split_pass(name: str, warmup_ms: int) -> dict[str, Any]:
    whole, index = single_pass(name)
    starts = list(range(0, int(index.duration_ms), SEGMENT_MS))
    parts = [
        process_video(
            data_path(f"videos/{name}"),
            ProcessOptions(start_ms=start or None, end_ms=starts[n + 1] if n + 1 < len(starts) else None),
            models=MODELS,
            warmup_ms=warmup_ms if start else 0,
            frame_index=index,
        )
        for n, start in enumerate(starts)
    ]
    return merge_parts(parts)


def shifts(single: dict[str, Any], merged: dict[str, Any]) -> list[float]:
    whole = {f["index"]: f["hands"] for f in single["frames"]}
    return [
        min(
            max(
                abs(p - q)
                for u, v in zip(hand["landmarks"], twin["landmarks"], strict=True)
                for p, q in zip(u, v, strict=True)
            )
            for twin in whole[frame["index"]]
        )
        for frame in merged["frames"]
        for hand in frame["hands"]
        if whole.get(frame["index"])
    ]


@pytest.mark.parametrize("name", CLIPS)
def test_the_default_warm_up_merges_into_the_single_pass(name: str) -> None:
    whole, _ = single_pass(name)
    merged = split_pass(name, DEFAULT_WARMUP_MS)
    assert [f["index"] for f in merged["frames"]] == [f["index"] for f in whole["frames"]]
    assert [f["timestamp_ms"] for f in merged["frames"]] == [f["timestamp_ms"] for f in whole["frames"]]
    assert [len(f["hands"]) for f in merged["frames"]] == [len(f["hands"]) for f in whole["frames"]]
    assert merged["summary"] == whole["summary"]
    moved = [s for s in shifts(whole, merged) if s > 0.01]
    assert len(moved) <= 0.02 * len(shifts(whole, merged)), (name, sorted(moved)[-5:])


def test_without_a_warm_up_the_cuts_show() -> None:
    """The control: the same cuts started cold move landmarks well beyond the tolerance."""
    whole, _ = single_pass("one_hand_wave_portrait.mp4")
    cold = shifts(whole, split_pass("one_hand_wave_portrait.mp4", 0))
    assert max(cold) > 0.05
