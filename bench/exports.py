"""How long the API takes to turn a job into an export, which bounds HANDPIPE_EXPORT_INLINE_MAX_ROWS: API
Gateway gives a request 29 s. Synthetic hands (random landmarks rounded to 5 decimals, as results are) go
through chalicelib.shared.insights.analyze and each writer; the baseline is the CSV writer at gzip's default level
9, which the exports used before level 6 (exports.GZIP_LEVEL).

    .venv/bin/python bench/exports.py [--rows 30000] [--rounds 3]

Prints seconds and rows per second per step, the ratio of each writer to the baseline, and a RESULT line.
Run it on a quiet machine: the API Lambda at 1,769 MB gets about one such core."""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_result  # noqa: E402

from chalicelib.shared import exports  # noqa: E402
from chalicelib.shared.insights import analyze  # noqa: E402


def synthetic_result(rows: int, seed: int = 7) -> dict[str, Any]:
    """`rows` frames of one hand each, 30 fps, landmarks that wander like a hand does (small steps)."""
    rng = random.Random(seed)
    base = [[rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(-0.1, 0.1)] for _ in range(21)]
    frames = []
    for index in range(rows):
        base = [[v + rng.gauss(0, 0.002) for v in point] for point in base]
        frames.append(
            {
                "index": index,
                "timestamp_ms": round(index * 1000 / 30, 3),
                "hands": [
                    {
                        "handedness": "Right",
                        "score": 0.97,
                        "landmarks": [[round(v, 5) for v in point] for point in base],
                        "world_landmarks": [[round(v / 10, 5) for v in point] for point in base],
                    }
                ],
            }
        )
    return {"frames": frames, "video": {"width": 1280, "height": 720, "filename": "synthetic", "duration_ms": None}}


def best_of(rounds: int, step: Callable[[], Any]) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(rounds):
        started = time.process_time()
        value = step()
        best = min(best, time.process_time() - started)
    return best, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = synthetic_result(args.rows)
    analyze_s, insights = best_of(args.rounds, lambda: analyze(result))
    print(f"{args.rows} rows, CPU seconds, best of {args.rounds}")
    print(f"  analyze (insights)      {analyze_s:6.2f} s  {args.rows / analyze_s:8.0f} rows/s")

    def records() -> Iterable[Mapping[str, Any]]:
        return exports.rows(result, insights, job_id="job", video_id="video")

    # the baseline: the same CSV writer at gzip's default level, as the exports were written before
    chosen, exports.GZIP_LEVEL = exports.GZIP_LEVEL, 9
    try:
        baseline_s, (baseline_data, _) = best_of(args.rounds, lambda: exports.to_csv_gz(records()))
    finally:
        exports.GZIP_LEVEL = chosen
    print(
        f"  csv, gzip 9 (baseline)  {baseline_s:6.2f} s  {args.rows / baseline_s:8.0f} rows/s  "
        f"{len(baseline_data) / 1e6:6.1f} MB"
    )

    def write(fmt: str) -> tuple[bytes, int]:
        return exports.WRITERS[fmt](records())

    ratios: dict[str, float] = {}
    seconds_by_format: dict[str, float] = {}
    for fmt in exports.WRITERS:
        seconds, (data, _) = best_of(args.rounds, functools.partial(write, fmt))
        seconds_by_format[fmt] = seconds
        ratios[fmt] = baseline_s / seconds
        print(
            f"  {fmt:<8} (gzip {exports.GZIP_LEVEL})       {seconds:6.2f} s  {args.rows / seconds:8.0f} rows/s  "
            f"{len(data) / 1e6:6.1f} MB  {ratios[fmt]:.2f}x the baseline"
        )
    inline_s = analyze_s + max(seconds_by_format.values())
    print(f"  analyze + slowest writer: {inline_s:.2f} s for {args.rows} rows (API Gateway allows 29 s a request)")
    speedups = {f"{fmt}_speedup": f"{ratio:.2f}" for fmt, ratio in ratios.items()}
    print_result({**speedups, "rows": args.rows, "inline_s": f"{inline_s:.2f}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
