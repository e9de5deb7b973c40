"""Cold start of the worker, in fresh interpreters: what importing the video libraries costs next to
mediapipe, and the first frame of a real clip end to end (imports, model bundle, landmarker, decode).

    .venv/bin/python -m bench.coldstart [--rounds 5] [--python /path/to/python]

`--python` may name an interpreter whose environment holds only what the worker image holds. Figures
are medians over the rounds; the ratios are against the baseline (mediapipe + OpenCV) measured in the
same run. Prints a table and one `RESULT key=value ...` line."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence

# bench/ is sys.path[0] when this file is run as a script.
from common import REPO, SAMPLE_CLIP, print_result  # noqa: E402

CLIP = SAMPLE_CLIP

PROBES = {
    "mediapipe+cv2": "import cv2, mediapipe; from mediapipe.tasks.python import vision",
    "mediapipe+cv2+av": "import av, cv2, mediapipe; from mediapipe.tasks.python import vision",
    "av alone": "import av",
}

FIRST_FRAME = """
import time
start = time.perf_counter()
from handpipe_worker.engine import process_video
from chalicelib.shared.contracts import ProcessOptions
imported = time.perf_counter()
result = process_video({clip!r}, ProcessOptions(end_ms=40))
done = time.perf_counter()
import json
print(json.dumps({{"import_s": imported - start, "first_frames_s": done - imported, "frames": len(result["frames"])}}))
"""


def _timed(python: str, code: str) -> float:
    wrapped = f"import time; _t = time.perf_counter()\n{code}\nprint(time.perf_counter() - _t)"
    out = subprocess.run([python, "-c", wrapped], capture_output=True, text=True, check=True, env=_env())
    return float(out.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{REPO / 'worker_image'}", GLOG_minloglevel="2")
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    figures: dict[str, float] = {}
    for name, code in PROBES.items():
        runs = []
        for round_number in range(args.rounds):
            runs.append(_timed(args.python, code))
            print(f"{name}: round {round_number + 1}/{args.rounds} {runs[-1]:.3f} s", file=sys.stderr)
        figures[name] = statistics.median(runs)
    first: list[dict[str, float]] = []
    for round_number in range(args.rounds):
        out = subprocess.run(
            [args.python, "-c", FIRST_FRAME.format(clip=str(CLIP))],
            capture_output=True,
            text=True,
            check=True,
            env=_env(),
        )
        first.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"first frame: round {round_number + 1}/{args.rounds} {first[-1]}", file=sys.stderr)
    import_s = statistics.median(r["import_s"] for r in first)
    first_s = statistics.median(r["first_frames_s"] for r in first)
    base = figures["mediapipe+cv2"]
    print()
    print(f"interpreter {args.python}; medians of {args.rounds} fresh interpreters; os.cpu_count()={os.cpu_count()}")
    print(f"{'what':<22} {'seconds':>8}")
    for name, value in figures.items():
        print(f"{name:<22} {value:8.3f}")
    print(f"{'engine import':<22} {import_s:8.3f}")
    print(f"{'first 2 frames':<22} {first_s:8.3f}  (bundle, landmarker, open, index, decode, 2 detections)")
    result = {
        "import_mediapipe_cv2_s": round(base, 3),
        "import_with_av_s": round(figures["mediapipe+cv2+av"], 3),
        "av_import_ratio": round(figures["mediapipe+cv2+av"] / base, 3) if base else None,
        "import_av_alone_s": round(figures["av alone"], 3),
        "engine_import_s": round(import_s, 3),
        "first_frames_s": round(first_s, 3),
        "cold_start_s": round(import_s + first_s, 3),
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
