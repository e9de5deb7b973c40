"""Exact against adaptive detection (`ProcessOptions.detection`) on the shared clips, in one process:
CPU per frame, frames with hands, frames whose hand count differs and how far landmarks move.

    .venv/bin/python bench/adaptive.py [--rounds 2] [--interval-ms 300] [--scan-frames 1,3]

bench/worker.py runs this too (its RESULT line carries the adaptive_* keys). CPU seconds
(time.process_time, every thread of this process) rather than wall time: on a shared machine other
users slow the wall clock, not the CPU work. Each mode runs `rounds` times alternating; the least CPU
of each is kept. See docs/performance.md ("Adaptive detection").
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import data_dir, exit_status, log, print_header, print_result
from handpipe_worker.engine import process_video
from handpipe_worker.models import ModelCache
from handpipe_worker.video import VideoFile

from chalicelib.shared.contracts import ProcessOptions

CLIPS = (
    "videos/one_hand_wave_portrait.mp4",
    "videos/one_hand_landscape.mp4",
    "videos/thumb_up_landscape_720p.mp4",
    "videos/asl_again_two_hands.mkv",
    "videos/asl_thanks_two_hands.mkv",
    "videos/no_hands_road.mp4",
)
ONE_HAND_SHARE = 0.95  # a clip is one-hand footage when at least this share of its hand frames hold one hand
LANDMARK_TOLERANCE = 0.005


@dataclass
class Compared:
    """Adaptive against exact on one clip, frame by frame."""

    frames: int
    exact_with_hands: int
    adaptive_with_hands: int
    lost: int  # frames with hands in exact mode, none in adaptive
    gained: int
    count_diff: int  # frames whose hand count differs
    count_diff_late: int  # of those, frames not within the interval after exact's count went up
    max_landmark_diff: float  # over frames with the same count, hands paired by nearest
    within_tolerance: float  # share of those hands within LANDMARK_TOLERANCE

    @classmethod
    def of(cls, exact: dict[str, Any], adaptive: dict[str, Any], interval_ms: float) -> Compared:
        e = {f["index"]: f for f in exact["frames"]}
        a = {f["index"]: f for f in adaptive["frames"]}
        if set(e) != set(a):
            raise SystemExit(f"exact and adaptive processed different frames ({len(e)} against {len(a)})")
        rises: list[float] = []  # times exact mode's hand count went up
        previous = 0
        for index in sorted(e):
            count = len(e[index]["hands"])
            if count > previous:
                rises.append(e[index]["timestamp_ms"])
            previous = count
        diff_frames = [i for i in e if len(e[i]["hands"]) != len(a[i]["hands"])]
        late = [
            i
            for i in diff_frames
            if not any(0 <= e[i]["timestamp_ms"] - rise <= interval_ms for rise in rises)
            or len(a[i]["hands"]) > len(e[i]["hands"])
        ]
        diffs = [
            _nearest(hand, a[i]["hands"])
            for i in e
            if len(e[i]["hands"]) == len(a[i]["hands"])
            for hand in e[i]["hands"]
        ]
        return cls(
            frames=len(e),
            exact_with_hands=sum(1 for f in e.values() if f["hands"]),
            adaptive_with_hands=sum(1 for f in a.values() if f["hands"]),
            lost=sum(1 for i in e if e[i]["hands"] and not a[i]["hands"]),
            gained=sum(1 for i in e if a[i]["hands"] and not e[i]["hands"]),
            count_diff=len(diff_frames),
            count_diff_late=len(late),
            max_landmark_diff=max(diffs, default=0.0),
            within_tolerance=sum(1 for d in diffs if d <= LANDMARK_TOLERANCE) / len(diffs) if diffs else 1.0,
        )


def _nearest(hand: dict[str, Any], others: list[dict[str, Any]]) -> float:
    """The largest coordinate difference to the closest hand of the other result."""
    return min(
        max(
            abs(p - q)
            for point, other_point in zip(hand["landmarks"], other["landmarks"], strict=True)
            for p, q in zip(point, other_point, strict=True)
        )
        for other in others
    )


def is_one_hand(exact: dict[str, Any]) -> bool:
    with_hands = [f for f in exact["frames"] if f["hands"]]
    return bool(with_hands) and sum(1 for f in with_hands if len(f["hands"]) == 1) >= ONE_HAND_SHARE * len(with_hands)


def cpu_run(path: Path, options: ProcessOptions, models: ModelCache, rounds: int) -> tuple[dict[str, Any], float]:
    """The result and the least CPU seconds of `rounds` runs (the runs are deterministic)."""
    best = float("inf")
    result: dict[str, Any] = {}
    for _ in range(rounds):
        started = time.process_time()
        result = process_video(path, options, models=models)
        best = min(best, time.process_time() - started)
    return result, best


def decode_cpu(path: Path, rounds: int) -> float:
    """Least CPU seconds of decoding every frame to the RGB picture the engine hands MediaPipe: the
    part of a frame's cost that no detection mode changes."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        with VideoFile(path) as video:
            for frame in video.frames():
                frame.rgb()
        best = min(best, time.process_time() - started)
    return best


@dataclass
class ClipRow:
    name: str
    exact_ms: float  # CPU per frame
    adaptive_ms: dict[int, float]  # by scan_frames
    compared: dict[int, Compared]
    one_hand: bool
    decode_ms: float = 0.0  # CPU per frame of decoding alone

    def inference_ratio(self, scan: int) -> float:
        """Adaptive over exact CPU per frame with decoding taken out of both."""
        return (self.adaptive_ms[scan] - self.decode_ms) / (self.exact_ms - self.decode_ms)


def run(
    clips: Sequence[Path], interval_ms: int, scan_frames: Sequence[int], rounds: int, models: ModelCache | None = None
) -> list[ClipRow]:
    """Every clip in exact mode, then in adaptive mode with each scan_frames value (none: nothing run)."""
    if not scan_frames:
        return []
    models = models or ModelCache()
    rows = []
    for path in clips:
        exact_options = ProcessOptions()
        process_video(path, exact_options.with_range(0, 200), models=models)  # warm the model cache
        log(f"{path.name}: exact")
        exact, exact_cpu = cpu_run(path, exact_options, models, rounds)
        frames = len(exact["frames"])
        adaptive_ms, compared = {}, {}
        for scan in scan_frames:
            log(f"{path.name}: adaptive, interval {interval_ms} ms, scan every {scan} frame(s)")
            options = ProcessOptions(
                detection="adaptive", detection_interval_ms=interval_ms, detection_scan_frames=scan
            )
            adaptive, cpu = cpu_run(path, options, models, rounds)
            adaptive_ms[scan] = cpu * 1000 / frames
            compared[scan] = Compared.of(exact, adaptive, interval_ms)
        decode_ms = decode_cpu(path, rounds) * 1000 / frames
        rows.append(ClipRow(path.name, exact_cpu * 1000 / frames, adaptive_ms, compared, is_one_hand(exact), decode_ms))
    return rows


def print_rows(rows: Sequence[ClipRow], interval_ms: int) -> None:
    """The per-clip table, between blank lines (nothing when nothing was compared)."""
    if not rows:
        return
    print()
    header = (
        f"{'clip':<36} {'scan':>4} {'frames':>6} {'decode':>6} {'exact ms':>8} {'adapt ms':>8} {'ratio':>6} "
        f"{'infer':>6} {'hands e/a':>10} "
        f"{'lost':>4} {'gain':>4} {'cnt diff':>8} {'late':>4} {'max lm':>7} {'<=0.005':>7}"
    )
    print(
        f"exact against adaptive (detection_interval_ms={interval_ms}); CPU ms per frame, least of the rounds; "
        "ratio: adaptive/exact, infer: the same with decoding taken out of both"
    )
    print_header(header)
    for row in rows:
        for scan, c in row.compared.items():
            print(
                f"{row.name + (' (1 hand)' if row.one_hand else ''):<36} {scan:>4} {c.frames:>6} {row.decode_ms:>6.2f} "
                f"{row.exact_ms:>8.2f} {row.adaptive_ms[scan]:>8.2f} {row.adaptive_ms[scan] / row.exact_ms:>6.2f} "
                f"{row.inference_ratio(scan):>6.2f} "
                f"{f'{c.exact_with_hands}/{c.adaptive_with_hands}':>10} {c.lost:>4} {c.gained:>4} {c.count_diff:>8} "
                f"{c.count_diff_late:>4} {c.max_landmark_diff:>7.4f} {c.within_tolerance:>7.1%}"
            )


def summary(rows: Sequence[ClipRow], scan: int) -> dict[str, Any]:
    """The RESULT keys for one scan_frames setting (the option's default, 1, in bench/worker.py)."""
    one = [row for row in rows if row.one_hand]
    frames = {row.name: row.compared[scan].frames for row in rows}
    ratio = sum(row.adaptive_ms[scan] * frames[row.name] for row in one) / sum(
        row.exact_ms * frames[row.name] for row in one
    )
    every = sum(row.adaptive_ms[scan] * frames[row.name] for row in rows) / sum(
        row.exact_ms * frames[row.name] for row in rows
    )
    inference = sum((row.adaptive_ms[scan] - row.decode_ms) * frames[row.name] for row in one) / sum(
        (row.exact_ms - row.decode_ms) * frames[row.name] for row in one
    )
    return {
        "adaptive_cpu_ratio": round(ratio, 3),
        "adaptive_inference_cpu_ratio": round(inference, 3),
        "adaptive_cpu_ratio_all": round(every, 3),
        "adaptive_lost_frames": sum(row.compared[scan].lost for row in rows),
        "adaptive_gained_frames": sum(row.compared[scan].gained for row in rows),
        "adaptive_count_diff_frames": sum(row.compared[scan].count_diff for row in rows),
        "adaptive_count_diff_late": sum(row.compared[scan].count_diff_late for row in rows),
        "adaptive_max_landmark_diff": round(max(row.compared[scan].max_landmark_diff for row in rows), 4),
        "adaptive_one_hand_max_landmark_diff": round(
            max((r.compared[scan].max_landmark_diff for r in one), default=0), 4
        ),
    }


def result_keys(rows: Sequence[ClipRow], scans: Sequence[int]) -> dict[str, Any]:
    """summary() of every scan_frames value; the first one's keys bare, the others' with _scanN."""
    keys: dict[str, Any] = {}
    for k, scan in enumerate(scans if rows else []):
        keys.update({f"{key}{'' if k == 0 else f'_scan{scan}'}": v for key, v in summary(rows, scan).items()})
    return keys


def failures(rows: Sequence[ClipRow], scans: Sequence[int]) -> list[str]:
    """Frames with hands lost with the first scan_frames value (the others are there to be measured)."""
    if not rows or not scans:
        return []
    return [
        f"{row.name}: adaptive mode lost {row.compared[scans[0]].lost} frames with hands (scan every {scans[0]})"
        for row in rows
        if row.compared[scans[0]].lost
    ]


def shared_clips() -> list[Path]:
    clips = [data_dir() / clip for clip in CLIPS]
    missing = [str(clip) for clip in clips if not clip.is_file()]
    if missing:
        raise SystemExit(
            f"missing shared clips {', '.join(missing)} (set HANDPIPE_TEST_DATA to the shared/data folder)"
        )
    return clips


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode per clip; the least CPU is kept")
    parser.add_argument("--interval-ms", type=int, default=ProcessOptions().detection_interval_ms)
    parser.add_argument("--scan-frames", default="1,3", help="detection_scan_frames values to compare")
    args = parser.parse_args(argv)
    scans = [int(value) for value in args.scan_frames.split(",")]
    rows = run(shared_clips(), args.interval_ms, scans, max(1, args.rounds))
    print_rows(rows, args.interval_ms)
    print()
    print_result({"interval_ms": args.interval_ms, **result_keys(rows, scans)})
    return exit_status(failures(rows, scans))


if __name__ == "__main__":
    sys.exit(main())
