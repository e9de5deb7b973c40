"""A job's summary from its parts' heads (results.merge_heads) is the summary of its merged frames, for
any cut: hand ranges that touch across a cut within RANGE_GAP_MS join, as a single pass joins them."""

from __future__ import annotations

import random
from typing import Any

import pytest

from chalicelib.shared.results import RANGE_GAP_MS, MergeError, merge_heads, merge_parts, part_head, summarize


def _frames(seed: int, count: int = 400) -> list[dict[str, Any]]:
    """Frames at uneven times, runs of hands (one or two, either label) and gaps around RANGE_GAP_MS."""
    rng = random.Random(seed)
    frames, now, hands = [], 0.0, 0
    for index in range(count):
        if rng.random() < 0.08:
            hands = rng.choice([0, 0, 1, 2])
        labels = [rng.choice(["Left", "Right"]) for _ in range(hands)]
        frames.append({"index": index, "timestamp_ms": round(now, 3), "hands": [{"handedness": h} for h in labels]})
        now += rng.choice([33.367, 40.0, RANGE_GAP_MS - 1, RANGE_GAP_MS, RANGE_GAP_MS + 1, 25.0, 33.367])
    return frames


def _part(frames: list[dict[str, Any]], low: int, high: int, total: int) -> dict[str, Any]:
    chosen = frames[low:high]
    start = frames[low]["timestamp_ms"] if low else 0
    end = frames[high]["timestamp_ms"] if high < total else None
    return {
        "video": {"filename": "clip.mp4"},
        "model": {"name": "full"},
        "options": {"num_hands": 2, "start_ms": start or None, "end_ms": end},
        "range": {"start_ms": start, "end_ms": end, "first_index": low, "end_index": high},
        "decode": {"complete": True},
        "summary": summarize(chosen),
        "stats": {
            "frames_decoded": len(chosen),
            "frames_processed": len(chosen),
            "frames_with_hands": sum(1 for f in chosen if f["hands"]),
            "decode_s": 0.1,
            "inference_s": 0.2,
            "wall_s": 0.3,
        },
        "frames": chosen,
    }


@pytest.mark.parametrize("seed", range(12))
def test_the_heads_summary_is_the_merged_frames_summary(seed: int) -> None:
    frames = _frames(seed)
    rng = random.Random(1000 + seed)
    cuts = sorted(rng.sample(range(1, len(frames)), rng.randint(1, 9)))
    bounds = [0, *cuts, len(frames)]
    parts = [_part(frames, a, b, len(frames)) for a, b in zip(bounds, bounds[1:], strict=False)]
    rng.shuffle(parts)  # the order the events arrived in does not matter
    head = merge_heads(part_head(p) for p in parts)
    merged = merge_parts(parts)
    assert head["summary"] == merged["summary"] == summarize(frames)
    assert head["stats"] == merged["stats"] and head["range"] == merged["range"]
    assert {k: v for k, v in merged.items() if k not in ("frames", "conventions")} == head


def test_heads_that_do_not_meet_are_refused_without_reading_a_frame() -> None:
    frames = _frames(3)
    first, second = _part(frames, 0, 100, 400), _part(frames, 100, 400, 400)
    gap = {**part_head(second), "range": {**second["range"], "first_index": 102}}
    with pytest.raises(MergeError, match="segments 0 and 1 .*gap"):
        merge_heads([part_head(first), gap])
    other = {**part_head(second), "options": {**second["options"], "num_hands": 1}}
    with pytest.raises(MergeError, match="different options"):
        merge_heads([part_head(first), other])
