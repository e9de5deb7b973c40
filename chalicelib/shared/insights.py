"""What users want from raw landmarks (gestures, hand tracks, motion), computed from a result document.
Pure standard-library Python so the API Lambda, which has no numpy, can serve it next to the result."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .gestures import GESTURES, WRIST, classify_gesture, openness

INSIGHTS_FORMAT = "handpipe.insights"
INSIGHTS_VERSION = 1

# MediaPipe's canned gestures as a gesture_recognizer.task names them, in the vocabulary of GESTURES.
CANNED_GESTURES = {
    "None": "none",
    "Open_Palm": "open_palm",
    "Closed_Fist": "closed_fist",
    "Pointing_Up": "pointing_up",
    "Thumb_Up": "thumb_up",
    "Thumb_Down": "thumb_down",
    "Victory": "victory",
    "ILoveYou": "i_love_you",
}
RULES_METHOD = "rules"
RECOGNIZER_METHOD = "gesture_recognizer"

# A track or range survives a gap without its hand of up to this long (as the result's hand_time_ranges).
GAP_MS = 300.0
# Tracks: a hand continues a track last seen at most this long ago, within this wrist distance (normalized
# units) plus MAX_JUMP_PER_S for every second since; a handedness mismatch costs HANDEDNESS_PENALTY.
TRACK_MAX_GAP_MS = 1000.0
MAX_JUMP = 0.25
MAX_JUMP_PER_S = 0.5
HANDEDNESS_PENALTY = 0.1
SERIES_MAX_POINTS = 200

Ref = tuple[int, int]  # (frame index, position of the hand in that frame's hands[])

# ------------------------------------------------------------------------------------ tracks


def _frames_by_index(frames: Iterable[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    return {int(frame["index"]): frame for frame in frames}


def _wrist(hand: Mapping[str, Any]) -> tuple[float, float]:
    return float(hand["landmarks"][WRIST][0]), float(hand["landmarks"][WRIST][1])


def _best_matching(costs: Sequence[Mapping[int, float]]) -> list[int | None]:
    """For each hand, the track it continues (None: a new track), minimising the summed cost over all
    one-to-one matchings; a new track costs more than any allowed match. Frames hold at most 4 hands
    and few tracks are active at once, so trying every matching is cheap."""
    new_track = MAX_JUMP + MAX_JUMP_PER_S * TRACK_MAX_GAP_MS / 1000.0 + HANDEDNESS_PENALTY
    best: tuple[float, list[int | None]] = (math.inf, [None] * len(costs))

    def search(i: int, used: frozenset[int], total: float, chosen: list[int | None]) -> None:
        nonlocal best
        if total >= best[0]:
            return
        if i == len(costs):
            best = (total, list(chosen))
            return
        for track_id, cost in sorted(costs[i].items(), key=lambda item: item[1]):
            if track_id not in used:
                search(i + 1, used | {track_id}, total + cost, [*chosen, track_id])
        search(i + 1, used, total + new_track, [*chosen, None])

    search(0, frozenset(), 0.0, [])
    return best[1]


def assign_tracks(frames: Sequence[Mapping[str, Any]]) -> list[list[Ref]]:
    """Split the hands of a result into tracks, one per physical hand as far as can be told: each
    track is the list of (frame index, hand position in hands[]) it holds, in time order, and tracks
    are numbered by first appearance.

    A hand may continue a track last seen at most TRACK_MAX_GAP_MS ago whose last wrist position is
    within MAX_JUMP normalized units (plus MAX_JUMP_PER_S per second of absence). The cost of a match
    is the wrist distance, plus HANDEDNESS_PENALTY when the hand's label differs from the track's
    majority label: position decides and the label breaks near-ties, because MediaPipe swaps the
    labels of two hands that come close (the ASL clips do it) far more often than hands jump. Each
    frame takes the one-to-one matching of least total cost, so two hands never share a track."""
    tracks: list[list[Ref]] = []
    seen: list[tuple[float, tuple[float, float]]] = []  # per track: last time and wrist
    labels: list[Counter[str]] = []  # per track: handedness label counts
    for frame in frames:
        t = float(frame["timestamp_ms"])
        hands = frame["hands"]
        costs: list[dict[int, float]] = []
        for hand in hands:
            options: dict[int, float] = {}
            for track_id, (seen_ms, seen_wrist) in enumerate(seen):
                gap_ms = t - seen_ms
                distance = math.dist(_wrist(hand), seen_wrist)
                if gap_ms > TRACK_MAX_GAP_MS or distance > MAX_JUMP + MAX_JUMP_PER_S * gap_ms / 1000.0:
                    continue
                majority = labels[track_id].most_common(1)[0][0]
                options[track_id] = distance + (HANDEDNESS_PENALTY if majority != hand["handedness"] else 0.0)
            costs.append(options)
        for h_pos, (hand, match) in enumerate(zip(hands, _best_matching(costs), strict=True)):
            track_id = len(tracks) if match is None else match
            if match is None:
                tracks.append([])
                seen.append((t, _wrist(hand)))
                labels.append(Counter())
            tracks[track_id].append((int(frame["index"]), h_pos))
            seen[track_id] = (t, _wrist(hand))
            labels[track_id][hand["handedness"]] += 1
    return tracks


def _track_hands(
    track: Sequence[Ref], by_index: Mapping[int, Mapping[str, Any]]
) -> list[tuple[float, Mapping[str, Any]]]:
    return [(float(by_index[f]["timestamp_ms"]), by_index[f]["hands"][h]) for f, h in track]


def _majority_handedness(hands: Iterable[Mapping[str, Any]]) -> str:
    counts = Counter(hand["handedness"] for hand in hands)
    return counts.most_common(1)[0][0] if counts else "unknown"


def _segments(times: Sequence[float], gap_ms: float = GAP_MS) -> list[tuple[int, int]]:
    """Runs of positions [start, stop) whose consecutive times are at most gap_ms apart."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(times) + 1):
        if i == len(times) or times[i] - times[i - 1] > gap_ms:
            if i > start:
                runs.append((start, i))
            start = i
    return runs


def _frame_step_ms(times: Sequence[float]) -> float:
    """The typical time between observations (median), to give a run of frames its length."""
    steps = sorted(b - a for a, b in zip(times, times[1:], strict=False) if b > a)
    if not steps:
        return 0.0
    return steps[len(steps) // 2]


# ------------------------------------------------------------------------------------ smoothing


def mode_filter(labels: Sequence[str], window: int = 5) -> list[str]:
    """Each label replaced by the most common one in a centred window (ties keep the label in place,
    else the one nearest the centre), so a flicker of one or two frames disappears."""
    half = max(0, window // 2)
    out: list[str] = []
    for i, own in enumerate(labels):
        lo, hi = max(0, i - half), min(len(labels), i + half + 1)
        counts = Counter(labels[lo:hi])
        best = max(counts.values())
        tied = {label for label, n in counts.items() if n == best}
        if own in tied:
            out.append(own)
            continue
        nearest = min((abs(j - i), j) for j in range(lo, hi) if labels[j] in tied)
        out.append(labels[nearest[1]])
    return out


def _ranges_for_track(
    track_id: int,
    handedness: str,
    observations: Sequence[tuple[float, str, float]],
    *,
    min_duration_ms: float,
    window: int,
) -> list[dict[str, Any]]:
    times = [t for t, _, _ in observations]
    step = _frame_step_ms(times)
    ranges: list[dict[str, Any]] = []
    for start, stop in _segments(times):
        smoothed = mode_filter([label for _, label, _ in observations[start:stop]], window)
        run_start = 0
        for i in range(1, len(smoothed) + 1):
            if i < len(smoothed) and smoothed[i] == smoothed[run_start]:
                continue
            first, last = start + run_start, start + i - 1
            # a run ends where the next one starts, or one frame step after its last frame
            start_ms, end_ms = times[first], times[last + 1] if last + 1 < stop else times[last] + step
            if end_ms - start_ms >= min_duration_ms:
                label = smoothed[run_start]
                scores = [s for _, lab, s in observations[first : last + 1] if lab == label]
                ranges.append(
                    {
                        "track": track_id,
                        "handedness": handedness,
                        "label": label,
                        "start_ms": round(start_ms, 3),
                        "end_ms": round(end_ms, 3),
                        "duration_ms": round(end_ms - start_ms, 3),
                        "frames": last - first + 1,
                        "score": round(sum(scores) / len(scores), 3) if scores else 0.0,
                    }
                )
            run_start = i
    return ranges


def _aspect(result_or_none: Mapping[str, Any] | None) -> float:
    video = (result_or_none or {}).get("video") or {}
    width, height = video.get("width"), video.get("height")
    return float(width) / float(height) if width and height else 1.0


def recognizer_label(name: str) -> str:
    """A GestureRecognizer category name in handpipe's vocabulary: a canned gesture as in GESTURES, any
    other (a custom classifier's) in snake_case; an empty name is "none"."""
    if name in CANNED_GESTURES:
        return CANNED_GESTURES[name]
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_") or "none"


def _recognizer_labels(model: Mapping[str, Any], labels: Mapping[Ref, tuple[str, float]]) -> list[str]:
    """What a recognizer can say: its model's labels where the result names them, the ones it gave, none."""
    named = {recognizer_label(str(name)) for name in model.get("gesture_labels") or []}
    return sorted(named | {label for label, _ in labels.values()} | {"none"})


def _labels(frames: Sequence[Mapping[str, Any]], aspect_ratio: float) -> dict[Ref, tuple[str, float]]:
    """Every hand's gesture and score: the recognizer's where the result carries one (a job run with a
    gesture_recognizer.task), else classify_gesture's."""
    labels: dict[Ref, tuple[str, float]] = {}
    for frame in frames:
        for h_pos, hand in enumerate(frame["hands"]):
            recognized = hand.get("gesture")
            labels[(int(frame["index"]), h_pos)] = (
                (recognizer_label(str(recognized["label"])), float(recognized["score"]))
                if recognized is not None
                else classify_gesture(
                    hand["landmarks"], hand["world_landmarks"], hand["handedness"], aspect_ratio=aspect_ratio
                )
            )
    return labels


def _gesture_ranges(
    frames: Sequence[Mapping[str, Any]],
    tracks: Sequence[Sequence[Ref]],
    labels: Mapping[Ref, tuple[str, float]],
    *,
    min_duration_ms: float,
    window: int,
) -> list[dict[str, Any]]:
    by_index = _frames_by_index(frames)
    ranges: list[dict[str, Any]] = []
    for track_id, track in enumerate(tracks):
        hands = _track_hands(track, by_index)
        observations = [(t, *labels[ref]) for (t, _), ref in zip(hands, track, strict=True)]
        ranges += _ranges_for_track(
            track_id,
            _majority_handedness(h for _, h in hands),
            observations,
            min_duration_ms=min_duration_ms,
            window=window,
        )
    return sorted(ranges, key=lambda r: (r["start_ms"], r["track"]))


def gesture_ranges(
    frames: Sequence[Mapping[str, Any]],
    *,
    min_duration_ms: float = 200,
    window: int = 5,
    aspect_ratio: float = 1.0,
) -> list[dict[str, Any]]:
    """Smoothed gesture time ranges per hand track: {track, handedness, label, start_ms, end_ms
    (exclusive: the next frame's time, or the last frame's plus one frame step at the end of the
    track's run), duration_ms, frames, score (mean per-frame score of the label)}, sorted by
    start. Per-frame labels are mode-filtered over `window` observations of the track, runs shorter
    than `min_duration_ms` are dropped, and a track absent for more than GAP_MS starts new ranges.
    `none` ranges (no recognised gesture) are listed too."""
    tracks = assign_tracks(frames)
    labels = _labels(frames, aspect_ratio)
    return _gesture_ranges(frames, tracks, labels, min_duration_ms=min_duration_ms, window=window)


# ------------------------------------------------------------------------------------ motion


def _time_ranges(times: Sequence[float], step_ms: float, gap_ms: float = GAP_MS) -> list[list[float]]:
    return [[round(times[a], 3), round(times[b - 1] + step_ms, 3)] for a, b in _segments(times, gap_ms)]


def _downsample(series: Sequence[tuple[float, float]], max_points: int) -> list[list[float]]:
    """At most max_points [t, value] pairs: the mean of each of max_points equal slices of the series."""
    if len(series) <= max_points:
        return [[round(t, 3), round(v, 3)] for t, v in series]
    out: list[list[float]] = []
    for k in range(max_points):
        chunk = series[k * len(series) // max_points : (k + 1) * len(series) // max_points]
        if chunk:
            out.append(
                [round(sum(t for t, _ in chunk) / len(chunk), 3), round(sum(v for _, v in chunk) / len(chunk), 3)]
            )
    return out


def handedness_timeline(
    observations: Iterable[tuple[float, str]], step_ms: float = 0.0, gap_ms: float = GAP_MS
) -> dict[str, list[list[float]]]:
    """When each handedness label is seen: {label: [[start_ms, end_ms], ...]}, runs of the label's
    observations merged across gaps of up to gap_ms; end_ms is the last sighting plus step_ms."""
    times: dict[str, list[float]] = {}
    for t, label in observations:
        times.setdefault(label, []).append(t)
    return {label: _time_ranges(sorted(ts), step_ms, gap_ms) for label, ts in sorted(times.items())}


def _moving_average(points: Sequence[tuple[float, float]], radius: int = 1) -> list[tuple[float, float]]:
    """Each point replaced by the mean of itself and `radius` neighbours either side: keeps landmark
    jitter out of path lengths and speeds."""
    out: list[tuple[float, float]] = []
    for i in range(len(points)):
        window = points[max(0, i - radius) : i + radius + 1]
        out.append((sum(x for x, _ in window) / len(window), sum(y for _, y in window) / len(window)))
    return out


def _track_motion(
    track_id: int,
    hands: Sequence[tuple[float, Mapping[str, Any]]],
    frame_size: tuple[int, int] | None,
) -> dict[str, Any]:
    times = [t for t, _ in hands]
    step = _frame_step_ms(times)
    wrists = [(float(h["landmarks"][WRIST][0]), float(h["landmarks"][WRIST][1])) for _, h in hands]
    path = 0.0
    path_px = 0.0
    moving_ms = 0.0
    speeds: list[float] = []
    for start, stop in _segments(times):
        smooth = _moving_average(wrists[start:stop])
        for k in range(1, len(smooth)):
            (x0, y0), (x1, y1) = smooth[k - 1], smooth[k]
            dt = (times[start + k] - times[start + k - 1]) / 1000.0
            step_len = math.hypot(x1 - x0, y1 - y0)
            path += step_len
            if frame_size is not None:
                path_px += math.hypot((x1 - x0) * frame_size[0], (y1 - y0) * frame_size[1])
            if dt > 0:
                moving_ms += dt * 1000.0
                speeds.append(step_len / dt)
    present = _time_ranges(times, step)
    series = [(t, openness(h["world_landmarks"])) for t, h in hands]
    values = [v for _, v in series]
    summary: dict[str, Any] = {
        "track": track_id,
        "handedness": _majority_handedness(h for _, h in hands),
        "frames": len(hands),
        "first_ms": round(times[0], 3),
        "last_ms": round(times[-1], 3),
        "time_on_screen_ms": round(sum(end - start for start, end in present), 3),
        "present": present,
        "wrist_path_length": round(path, 4),
        "wrist_mean_speed": round(path / (moving_ms / 1000.0), 4) if moving_ms > 0 else 0.0,
        "wrist_max_speed": round(max(speeds), 4) if speeds else 0.0,
        "openness_mean": round(sum(values) / len(values), 3),
        "openness": _downsample(series, SERIES_MAX_POINTS),
        "handedness_timeline": handedness_timeline(((t, h["handedness"]) for t, h in hands), step),
    }
    if frame_size is not None:
        summary["wrist_path_length_px"] = round(path_px, 1)
    return summary


def motion_summary(
    frames: Sequence[Mapping[str, Any]],
    *,
    tracks: Sequence[Sequence[Ref]] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Per hand track: when it is on screen, how far and fast its wrist moves and how open the hand
    is over time, and when each handedness label is seen (overall and per track).

    Wrist path and speeds are in normalized image units (x by the frame width, y by its height; world
    landmarks are centred on the hand, so they carry no translation) and per second; with `frame_size`
    (width, height) the path is also given in pixels. Times are in ms; time on screen sums the track's
    presence ranges (gaps without the hand up to GAP_MS bridged, each range ending one frame step after
    its last sighting). Openness is 0 (fist) to 1 (spread hand) per frame, as [[t_ms, openness], ...]
    downsampled to at most SERIES_MAX_POINTS points."""
    tracks = assign_tracks(frames) if tracks is None else tracks
    by_index = _frames_by_index(frames)
    summaries = [
        _track_motion(track_id, _track_hands(track, by_index), frame_size) for track_id, track in enumerate(tracks)
    ]
    all_times = sorted({float(f["timestamp_ms"]) for f in frames})
    seen = [(float(f["timestamp_ms"]), hand["handedness"]) for f in frames for hand in f["hands"]]
    return {
        "units": {
            "time": "ms",
            "wrist_path_length": "normalized image units (x by frame width, y by frame height)",
            "wrist_speed": "normalized image units per second",
            "openness": "0 (fist) to 1 (spread hand)",
        },
        "tracks": summaries,
        "handedness_timeline": handedness_timeline(seen, _frame_step_ms(all_times)),
    }


# ------------------------------------------------------------------------------------ the document


def analyze(result: Mapping[str, Any], *, min_duration_ms: float = 200, window: int = 5) -> dict[str, Any]:
    """The insights document for a result (docs/results-format.md): hand tracks, per-frame and
    smoothed gestures, and the motion summary. JSON-serialisable. Gestures come from MediaPipe's
    GestureRecognizer when the result carries them (method "gesture_recognizer", with the .task it
    came from as `model`), else from classify_gesture (method "rules")."""
    frames = result["frames"]
    video = result.get("video") or {}
    aspect = _aspect(result)
    frame_size = (int(video["width"]), int(video["height"])) if video.get("width") and video.get("height") else None
    tracks = assign_tracks(frames)
    labels = _labels(frames, aspect)
    by_index = _frames_by_index(frames)
    model = result.get("model") or {}
    recognized = model.get("task") == RECOGNIZER_METHOD or any("gesture" in h for f in frames for h in f["hands"])
    return {
        "format": INSIGHTS_FORMAT,
        "version": INSIGHTS_VERSION,
        "source": {
            "filename": video.get("filename"),
            "duration_ms": video.get("duration_ms"),
            "frames_processed": len(frames),
        },
        "tracks": [
            {
                "track": track_id,
                "handedness": _majority_handedness(by_index[f]["hands"][h] for f, h in track),
                "hands": [[f, h] for f, h in track],
            }
            for track_id, track in enumerate(tracks)
        ],
        "gestures": {
            "method": RECOGNIZER_METHOD if recognized else RULES_METHOD,
            "model": model.get("source") if recognized else None,
            "labels": _recognizer_labels(model, labels) if recognized else list(GESTURES),
            "per_frame": [[f, h, label, score] for (f, h), (label, score) in labels.items()],
            "ranges": _gesture_ranges(frames, tracks, labels, min_duration_ms=min_duration_ms, window=window),
        },
        "motion": motion_summary(frames, tracks=tracks, frame_size=frame_size),
    }
