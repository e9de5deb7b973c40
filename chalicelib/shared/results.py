"""The result format (docs/results-format.md): building a result from frames, summarising it,
merging the parts of one job, and (de)serialising. Shared by the worker, which writes parts, and the
app, which merges them and serves frames; the worker image copies this file."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from typing import Any

RESULT_FORMAT = "handpipe.result"
RESULT_VERSION = 1

ORIENTATION_CONVENTION = (
    "upright: frames are rotated by the container's rotation metadata before detection; "
    "normalized x grows to the right and y downwards in the upright picture"
)
HANDEDNESS_CONVENTION = (
    "mediapipe-mirrored: labels are MediaPipe's, which assume a mirrored (selfie) image; in unmirrored "
    "footage (a rear camera) 'Left' is the subject's right hand"
)


class MergeError(ValueError):
    """Parts that do not form one job's result (overlap, gap, mixed videos or options)."""


# A hand lost for less than this is still "present": a range should not break on a one-frame miss.
RANGE_GAP_MS = 300.0


def summarize(frames: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals and the time ranges in which at least one hand is visible. A range runs from the first
    to the last frame with hands of a run in which no gap without hands exceeds RANGE_GAP_MS."""
    ranges: list[dict[str, float]] = []
    with_hands = hands_seen = max_hands = 0
    handedness: dict[str, int] = {}
    for frame in frames:
        hands = frame["hands"]
        if hands:
            with_hands += 1
            hands_seen += len(hands)
            max_hands = max(max_hands, len(hands))
            for hand in hands:
                handedness[hand["handedness"]] = handedness.get(hand["handedness"], 0) + 1
            if ranges and frame["timestamp_ms"] - ranges[-1]["end_ms"] <= RANGE_GAP_MS:
                ranges[-1]["end_ms"] = frame["timestamp_ms"]
            else:
                ranges.append({"start_ms": frame["timestamp_ms"], "end_ms": frame["timestamp_ms"]})
    return {
        "frames_processed": len(frames),
        "frames_with_hands": with_hands,
        "max_hands_in_frame": max_hands,
        "hands_seen": hands_seen,
        "handedness_counts": dict(sorted(handedness.items())),
        "hand_time_ranges": ranges,
    }


def build_result(
    *,
    video: dict[str, Any],
    model: dict[str, Any],
    options: dict[str, Any],
    time_range: dict[str, Any],
    frames: list[dict[str, Any]],
    stats: dict[str, Any],
    decode: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "video": video,
        "model": model,
        "options": options,
        "conventions": {"orientation": ORIENTATION_CONVENTION, "handedness": HANDEDNESS_CONVENTION},
        "range": time_range,
        "decode": decode,
        "summary": summarize(frames),
        "stats": stats,
        "frames": frames,
    }


def part_head(part: dict[str, Any]) -> dict[str, Any]:
    """A part without its frames: what the job's summary, and the checks that its parts form one video,
    need. The worker stores it next to the part (contracts.part_head_key), so the job can be finished
    from a few KB per segment instead of from every frame."""
    return {key: value for key, value in part.items() if key != "frames"}


def check_parts(heads: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The parts (or their heads) in time order, once they are checked to cover adjacent ranges of the
    same video with the same options: each [start, end) in ms and, from the frame index,
    [first_index, end_index) in frames, the next starting exactly where one ends. Every refusal
    (MergeError) names the two segments by position in time."""
    ordered = sorted(heads, key=lambda p: p["range"]["start_ms"])
    if not ordered:
        raise MergeError("no parts to merge")
    first = ordered[0]
    for number, (previous, part) in enumerate(zip(ordered, ordered[1:], strict=False)):
        pair = f"segments {number} and {number + 1}"
        if part["video"] != first["video"] or part["model"] != first["model"]:
            raise MergeError(f"{pair} come from different videos or models")
        if _options_without_range(part) != _options_without_range(first):
            raise MergeError(f"{pair} were processed with different options")
        ends, starts = previous["range"], part["range"]
        if ends["end_ms"] != starts["start_ms"]:
            raise MergeError(
                f"{pair} do not meet: segment {number} ends at {ends['end_ms']} ms, "
                f"segment {number + 1} starts at {starts['start_ms']} ms"
            )
        end_index, first_index = ends.get("end_index"), starts.get("first_index")
        if end_index is not None and first_index is not None and end_index != first_index:
            kind = "a gap" if end_index < first_index else "an overlap"
            raise MergeError(
                f"{pair} do not meet frame for frame ({kind}): segment {number} ends before frame {end_index}, "
                f"segment {number + 1} starts at frame {first_index}"
            )
    return ordered


def merge_summaries(summaries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The summary a single pass gives, from its adjacent parts' summaries in time order: totals add
    up, and a hand range that ends within RANGE_GAP_MS of the next part's first range joins it, exactly
    as `summarize` joins frames (a range's end is its last frame with hands)."""
    total: dict[str, Any] = {
        "frames_processed": 0,
        "frames_with_hands": 0,
        "max_hands_in_frame": 0,
        "hands_seen": 0,
        "handedness_counts": {},
        "hand_time_ranges": [],
    }
    ranges: list[dict[str, float]] = total["hand_time_ranges"]
    for summary in summaries:
        for key in ("frames_processed", "frames_with_hands", "hands_seen"):
            total[key] += summary[key]
        total["max_hands_in_frame"] = max(total["max_hands_in_frame"], summary["max_hands_in_frame"])
        for label, count in summary["handedness_counts"].items():
            total["handedness_counts"][label] = total["handedness_counts"].get(label, 0) + count
        for hand_range in summary["hand_time_ranges"]:
            if ranges and hand_range["start_ms"] - ranges[-1]["end_ms"] <= RANGE_GAP_MS:
                ranges[-1]["end_ms"] = hand_range["end_ms"]
            else:
                ranges.append(dict(hand_range))
    total["handedness_counts"] = dict(sorted(total["handedness_counts"].items()))
    return total


def merge_heads(heads: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What the merged result will hold apart from its frames (video, model, options, range, decode,
    summary, stats), from the parts' heads: the same values merge_parts gives, without reading a frame."""
    ordered = check_parts(heads)
    first, last = ordered[0], ordered[-1]
    incomplete = [p["decode"] for p in ordered if not p["decode"]["complete"]]
    options = dict(first["options"])
    options.update(start_ms=first["options"].get("start_ms"), end_ms=last["options"].get("end_ms"))
    time_range = {"start_ms": first["range"]["start_ms"], "end_ms": last["range"]["end_ms"]}
    if "first_index" in first["range"]:
        time_range.update(first_index=first["range"]["first_index"], end_index=last["range"].get("end_index"))
    return {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "video": first["video"],
        "model": first["model"],
        "options": options,
        "range": time_range,
        "decode": incomplete[0] if incomplete else first["decode"],
        "summary": merge_summaries(p["summary"] for p in ordered),
        "stats": _sum_stats(p["stats"] for p in ordered),
    }


def merge_parts(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Join the parts of one job into the result a single pass over their joint range gives.

    The parts must pass `check_parts`; their frames are checked by identity too: indices inside their
    part's range, indices and timestamps strictly increasing across parts."""
    ordered = check_parts(parts)
    frames: list[dict[str, Any]] = []
    for number, part in enumerate(ordered):
        low, high = part["range"].get("first_index"), part["range"].get("end_index")
        for frame in part["frames"]:
            if (low is not None and frame["index"] < low) or (high is not None and frame["index"] >= high):
                raise MergeError(f"segment {number} reports frame {frame['index']}, outside its frames [{low}, {high})")
            if frames and (
                frame["index"] <= frames[-1]["index"] or frame["timestamp_ms"] <= frames[-1]["timestamp_ms"]
            ):
                raise MergeError(
                    f"frame {frame['index']} at {frame['timestamp_ms']} ms of segment {number} appears twice or out "
                    f"of order (after frame {frames[-1]['index']} at {frames[-1]['timestamp_ms']} ms)"
                )
            frames.append(frame)
    head = merge_heads(part_head(p) for p in ordered)
    return build_result(
        video=head["video"],
        model=head["model"],
        options=head["options"],
        time_range=head["range"],
        frames=frames,
        stats=head["stats"],
        decode=head["decode"],
    )


def _options_without_range(part: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in part["options"].items() if k not in ("start_ms", "end_ms")}


def _sum_stats(all_stats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {
        "frames_decoded": 0,
        "frames_processed": 0,
        "frames_with_hands": 0,
        "decode_s": 0.0,
        "inference_s": 0.0,
        "wall_s": 0.0,
    }
    read: int | None = None
    for stats in all_stats:
        for key in total:
            total[key] += stats[key]
        if "bytes_read" in stats:
            read = (read or 0) + int(stats["bytes_read"])
    if read is not None:
        total["bytes_read"] = read
    return finish_stats(total)


def finish_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Round the timings and derive frames per second (processed frames over wall time)."""
    for key in ("decode_s", "inference_s", "wall_s"):
        stats[key] = round(stats[key], 4)
    stats["fps"] = round(stats["frames_processed"] / stats["wall_s"], 2) if stats["wall_s"] > 0 else 0.0
    return stats


def frames_between(result: dict[str, Any], start_ms: float, end_ms: float | None) -> list[dict[str, Any]]:
    return [
        f for f in result["frames"] if f["timestamp_ms"] >= start_ms and (end_ms is None or f["timestamp_ms"] < end_ms)
    ]


def to_gzip(result: dict[str, Any]) -> bytes:
    # mtime=0 keeps the bytes identical when the same result is written twice.
    # Level 6: the same size as 9 for this data at a third of the time (the merge of a long job waits on it).
    return gzip.compress(json.dumps(result, separators=(",", ":")).encode(), compresslevel=6, mtime=0)


def from_gzip(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(gzip.decompress(data))
    if result.get("format") != RESULT_FORMAT:
        raise ValueError("not a handpipe result")
    return result


def expected_frames(
    duration_ms: float | None, fps: float | None, start_ms: float, end_ms: float | None, sample_fps: float | None
) -> int | None:
    """How many frames a pass over [start_ms, end_ms) (None: to the end) should give, from the container's
    duration and rate, sampled at `sample_fps` (None: every frame); None when the container does not say.
    The one formula the planner (frames_total) and the engine (progress) share; at least 1."""
    if duration_ms is None or fps is None or fps <= 0:
        return None
    span_s = max(0.0, min(duration_ms if end_ms is None else end_ms, duration_ms) - start_ms) / 1000.0
    return max(1, round(span_s * min(fps, sample_fps or fps)))
