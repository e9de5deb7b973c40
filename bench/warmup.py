"""Warm-up benchmark: how short a tracker warm-up before each segment still merges into the single pass,
on the shared clips. Sets HANDPIPE_WARMUP_MS (chalicelib/config.py) on evidence, not on a guess.

    .venv/bin/python bench/warmup.py [--warmups 0,100,200,300,500,1000,2000] [--segment-ms 1000]
                                     [--tolerance 0.01] [--videos NAME ...]

Each clip is processed once whole, then, for every warm-up tried, cut into --segment-ms segments that the
engine processes as the workers do (each with the video's frame index and the warm-up before it, the first
without), merged with chalicelib.shared.results.merge_parts and compared with the whole pass frame by
frame: frames lost or gained, frames whose hand count differs, and the largest landmark shift of a hand
against its twin in the whole pass (normalized units). A warm-up "merges to the single pass" on a clip
when no frame differs in hands and no shift exceeds --tolerance (tests/integration/test_frame_exact.py's
0.01); `> tol` counts the hands beyond it; `identical` counts the segment boundaries after which every
landmark is bit for bit the same.
The warm-up's share is the frames fed to the tracker but not reported, over all frames the segments fed.

A table on stdout, then `RESULT min_warmup_ms=... ...`: the shortest warm-up tried at which every clip
merges, and every longer one tried does too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import data_dir, log, print_header, print_result
from handpipe_worker.engine import process_video
from handpipe_worker.models import ModelCache
from handpipe_worker.video import FrameIndex, VideoFile
from worker import compare_frames

from chalicelib.shared.contracts import ProcessOptions
from chalicelib.shared.results import merge_parts

CLIPS = (
    "one_hand_wave_portrait.mp4",
    "one_hand_landscape.mp4",
    "thumb_up_landscape_720p.mp4",
    "asl_again_two_hands.mkv",
    "asl_thanks_two_hands.mkv",
    "no_hands_road.mp4",
)


def landmark_shift(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(
        abs(p - q) for u, v in zip(a["landmarks"], b["landmarks"], strict=True) for p, q in zip(u, v, strict=True)
    )


def shifts(single: dict[str, Any], merged: dict[str, Any]) -> list[float]:
    """Each merged hand's shift from its nearest twin in the same frame of the single pass."""
    whole = {f["index"]: f["hands"] for f in single["frames"]}
    found = []
    for frame in merged["frames"]:
        twins = whole.get(frame["index"]) or []
        for hand in frame["hands"]:
            if twins:
                found.append(min(landmark_shift(hand, twin) for twin in twins))
    return found


def split_pass(
    path: Path, index: FrameIndex, segment_ms: int, warmup_ms: int, models: ModelCache
) -> tuple[dict[str, Any], int, int]:
    """The clip as the workers process it: the merge, and the frames fed in all and in warm-ups."""
    duration = index.duration_ms
    starts = list(range(0, int(duration), segment_ms))
    parts = []
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else None
        options = ProcessOptions(start_ms=start or None, end_ms=end)
        parts.append(
            process_video(path, options, models=models, warmup_ms=warmup_ms if start else 0, frame_index=index)
        )
    merged = merge_parts(parts)
    fed = sum(p["stats"]["frames_processed"] for p in parts)
    warm = 0
    for number, start in enumerate(starts[1:], 1):
        low = index.first_at_or_after(max(0.0, start - warmup_ms))
        warm += parts[number]["range"]["first_index"] - low
    return merged, fed + warm, warm


def identical_boundaries(single: dict[str, Any], merged: dict[str, Any], index: FrameIndex, segment_ms: int) -> int:
    """Segment boundaries after which the merged frames equal the single pass's exactly until the next."""
    whole = {f["index"]: f["hands"] for f in single["frames"]}
    ours = {f["index"]: f["hands"] for f in merged["frames"]}
    starts = list(range(segment_ms, int(index.duration_ms), segment_ms))
    count = 0
    for number, start in enumerate(starts):
        low = index.first_at_or_after(start)
        high = index.first_at_or_after(starts[number + 1]) if number + 1 < len(starts) else index.frame_count
        if all(ours.get(i) == whole.get(i) for i in range(low, high)):
            count += 1
    return count


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmups", default="0,100,200,300,500,1000,2000", help="warm-ups to try, ms")
    parser.add_argument("--segment-ms", type=int, default=1000, help="segment length for the split passes")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest landmark shift that still merges")
    parser.add_argument("--videos", nargs="*", default=list(CLIPS), help="clip names under <data>/videos")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warmups = [int(w) for w in args.warmups.split(",")]
    models = ModelCache()
    header = (
        f"{'clip':<30} {'warm-up ms':>10} {'cuts':>5} {'lost':>5} {'gained':>6} {'n diff':>6} "
        f"{'shift max':>9} {'> tol':>9} {'identical':>9} {'warm share':>10} {'merges':>6}"
    )
    rows: list[tuple[str, int, bool, float]] = []
    lines: list[str] = []
    for name in args.videos:
        path = data_dir() / "videos" / name
        log(f"{name}: single pass")
        with VideoFile(path) as video:
            index = video.build_index()
        single = process_video(path, ProcessOptions(), models=models)
        for warmup in warmups:
            log(f"{name}: segments of {args.segment_ms} ms, warm-up {warmup} ms")
            merged, fed, warm = split_pass(path, index, args.segment_ms, warmup, models)
            diff = compare_frames(single, merged)
            every = shifts(single, merged)
            shift = max(every, default=0.0)
            beyond = sum(1 for value in every if value > args.tolerance)
            same = identical_boundaries(single, merged, index, args.segment_ms)
            cuts = len(range(args.segment_ms, int(index.duration_ms), args.segment_ms))
            ok = diff["lost_frames"] == diff["gained_frames"] == diff["hand_count_differs"] == 0
            ok = ok and diff["extra_frames"] == 0 and shift <= args.tolerance
            rows.append((name, warmup, ok, warm / fed if fed else 0.0))
            lines.append(
                f"{name:<30} {warmup:>10} {cuts:>5} {diff['lost_frames']:>5} {diff['gained_frames']:>6} "
                f"{diff['hand_count_differs']:>6} {shift:>9.4f} {beyond:>4}/{len(every):<4} {same:>4}/{cuts:<4} "
                f"{warm / fed if fed else 0:>10.3f} "
                f"{'yes' if ok else 'no':>6}"
            )
    print_header(header)
    print("\n".join(lines))
    result: dict[str, Any] = {"segment_ms": args.segment_ms, "tolerance": args.tolerance}
    merges_at = {w: all(ok for _, warm, ok, _ in rows if warm == w) for w in warmups}
    shortest = next((w for w in sorted(warmups) if all(merges_at[v] for v in warmups if v >= w)), None)
    result["min_warmup_ms"] = shortest
    for name in args.videos:
        clip = Path(name).stem
        fine = [w for w in sorted(warmups) if all(ok for n, v, ok, _ in rows if n == name and v >= w)]
        result[f"{clip}_min_warmup_ms"] = fine[0] if fine else None
    for warmup in warmups:
        result[f"merges_{warmup}"] = int(merges_at[warmup])
    print()
    print(f"shortest warm-up that merges on every clip (and every longer one tried does): {shortest} ms")
    print_result(result)
    return 0 if shortest is not None else 1


if __name__ == "__main__":
    sys.exit(main())
