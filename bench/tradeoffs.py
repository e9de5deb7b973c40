"""Speed against accuracy of the job options, on real footage, with the engine in one process.

    .venv/bin/python bench/tradeoffs.py [--videos NAME ...] [--rounds 2]

For each clip and each of these option sets:

    full        model=full, every frame, num_hands=2 (the defaults; the reference)
    lite        model=lite
    full_s10    sample_fps=10
    full_s5     sample_fps=5
    full_h1     num_hands=1
    lite_h1     model=lite, num_hands=1

it runs `handpipe_worker.engine.process_video` over the whole clip and reports frames per wall second
(best of --rounds), CPU milliseconds per processed frame (same round), the share of processed frames
with a hand, and how far the landmarks move from the reference's on the frames both processed: hands
are paired frame by frame (the pairing with the least total distance), and a pair's shift is the mean
image-plane (x, y) distance of its 21 landmarks, in normalized image units (1.0 = the frame's width or
height). `shift mean` averages that over all pairs, `shift max` is the largest pair. `n diff` counts
common frames where the number of hands differs from the reference.

Also: the decode work alone per clip (grab + retrieve + cvtColor, CPU ms per frame) as a share of the
full model's CPU per frame, and the thumb clip re-encoded with mp4v at 720p and at 1080p, to show what
resolution changes (decode grows with pixels; inference hardly does, MediaPipe resizes its inputs).

Columns: fps = processed frames per wall second; x real = video seconds per wall second; CPU ms/f = CPU
per processed frame (all threads); CPU s/vs = CPU seconds per second of video (what a Lambda bills, at
about one core); w/ hands = processed frames with a hand (share of processed frames); others = cores the
rest of the machine used meanwhile.

Progress on stderr; tables and one `RESULT key=value ...` line on stdout (keys CLIP_CONFIG_fps, _cpu_ms,
_hands, _shift_mean, _shift_max; CLIP_decode_ms; mp4v_720p_/mp4v_1080p_decode_ms and _cpu_ms).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

# bench/ is sys.path[0] when this file is run as a script.
from common import cell, data_dir, log, machine_busy_s, print_header, print_result
from handpipe_worker.engine import probe, process_video
from handpipe_worker.models import ModelCache

from chalicelib.shared.contracts import ProcessOptions

CLIPS = {
    "portrait": "videos/one_hand_wave_portrait.mp4",
    "thumb": "videos/thumb_up_landscape_720p.mp4",
}
CONFIGS: dict[str, dict[str, Any]] = {
    "full": {"model": "full"},
    "lite": {"model": "lite"},
    "full_s10": {"model": "full", "sample_fps": 10},
    "full_s5": {"model": "full", "sample_fps": 5},
    "full_h1": {"model": "full", "num_hands": 1},
    "lite_h1": {"model": "lite", "num_hands": 1},
}
REFERENCE = "full"


@dataclass
class Measure:
    clip: str
    config: str
    frames: int
    with_hands: int
    wall_s: float
    cpu_s: float
    decode_s: float
    inference_s: float
    others_cores: float | None
    result: dict[str, Any]
    duration_s: float = 0.0
    compared_frames: int = 0
    hand_count_differs: int = 0
    pairs: int = 0
    shift_mean: float | None = None
    shift_max: float | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / self.frames

    @property
    def realtime(self) -> float:
        """Seconds of video per wall second."""
        return self.duration_s / self.wall_s

    @property
    def cpu_per_video_s(self) -> float:
        return self.cpu_s / self.duration_s

    @property
    def hands_share(self) -> float:
        return self.with_hands / self.frames if self.frames else 0.0


def hand_shift(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Mean image-plane distance of two hands' 21 landmarks, normalized units."""
    return sum(math.dist(p[:2], q[:2]) for p, q in zip(a["landmarks"], b["landmarks"], strict=True)) / len(
        a["landmarks"]
    )


def pair_hands(ref: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[float]:
    """Shifts of the pairing of ref's and other's hands with the least total shift (at most 4 hands)."""
    if not ref or not other:
        return []
    small, large = (ref, other) if len(ref) <= len(other) else (other, ref)
    best: list[float] | None = None
    for chosen in itertools.permutations(large, len(small)):
        shifts = [hand_shift(a, b) for a, b in zip(small, chosen, strict=True)]
        if best is None or sum(shifts) < sum(best):
            best = shifts
    return best or []


def compare(reference: Measure, measure: Measure) -> None:
    ref = {f["index"]: f["hands"] for f in reference.result["frames"]}
    shifts: list[float] = []
    for frame in measure.result["frames"]:
        if frame["index"] not in ref:
            continue
        measure.compared_frames += 1
        ref_hands = ref[frame["index"]]
        measure.hand_count_differs += len(ref_hands) != len(frame["hands"])
        shifts.extend(pair_hands(ref_hands, frame["hands"]))
    measure.pairs = len(shifts)
    if shifts:
        measure.shift_mean = sum(shifts) / len(shifts)
        measure.shift_max = max(shifts)


def run(clip: str, config: str, path: Path, models: ModelCache, rounds: int) -> Measure:
    options = ProcessOptions.from_dict(CONFIGS[config])
    best: Measure | None = None
    for _ in range(rounds):
        busy, wall, cpu = machine_busy_s(), time.perf_counter(), time.process_time()
        result = process_video(path, options, models=models)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        after = machine_busy_s()
        others = None if busy is None or after is None else max(0.0, after - busy - cpu) / wall
        stats = result["stats"]
        measure = Measure(
            clip,
            config,
            len(result["frames"]),
            result["summary"]["frames_with_hands"],
            wall,
            cpu,
            stats["decode_s"],
            stats["inference_s"],
            others,
            result,
            duration_s=(result["video"]["duration_ms"] or 0) / 1000,
        )
        if best is None or measure.wall_s < best.wall_s:
            best = measure
    assert best is not None
    log(f"  {clip} {config}: {best.frames} frames, {best.fps:.1f} fps, {best.cpu_ms:.1f} CPU ms/frame")
    return best


def print_table(measures: Sequence[Measure]) -> None:
    header = (
        f"{'clip':<9} {'config':<9} {'frames':>6} {'fps':>6} {'vs full':>7} {'x real':>6} {'CPU ms/f':>8} "
        f"{'CPU s/vs':>8} {'w/ hands':>11} {'compared':>8} {'n diff':>6} {'shift mean':>10} {'shift max':>9} "
        f"{'others':>6}"
    )
    print_header(header)
    reference = {m.clip: m for m in measures if m.config == REFERENCE}
    for m in measures:
        hands = f"{m.with_hands} ({100 * m.hands_share:.0f}%)"
        print(
            f"{m.clip:<9} {m.config:<9} {m.frames:>6} {m.fps:>6.1f} {m.fps / reference[m.clip].fps:>6.2f}x "
            f"{m.realtime:>6.2f} {m.cpu_ms:>8.1f} {m.cpu_per_video_s:>8.2f} {hands:>11} {m.compared_frames:>8} "
            f"{m.hand_count_differs:>6} {cell(m.shift_mean, '.4f'):>10} {cell(m.shift_max, '.4f'):>9} "
            f"{cell(m.others_cores, '.2f'):>6}"
        )


# ------------------------------------------------------------------------------- decode and resolution


def decode_cost(path: Path, rounds: int) -> tuple[int, float]:
    """(frames, CPU ms per frame) of the engine's decode work alone: grab + retrieve + cvtColor to RGB,
    every frame, all decoder threads counted; best of `rounds`."""
    best = math.inf
    frames = 0
    for _ in range(rounds):
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        frames = 0
        cpu = time.process_time()
        while capture.grab():
            ok, image = capture.retrieve()
            if ok:
                cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                frames += 1
        best = min(best, time.process_time() - cpu)
        capture.release()
    return frames, 1000 * best / max(1, frames)


def write_scaled(source: Path, target: Path, size: tuple[int, int]) -> None:
    """Re-encode every frame of `source`, resized to `size`, with mp4v (the only encoder OpenCV's
    wheels carry), at the source's fps."""
    capture = cv2.VideoCapture(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    while True:
        ok, image = capture.read()
        if not ok:
            break
        writer.write(cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))
    writer.release()
    capture.release()


@dataclass
class Resolution:
    label: str
    decode_ms: float
    engine: Measure


def resolution_cost(source: Path, models: ModelCache, rounds: int, workdir: Path) -> list[Resolution]:
    """The same clip re-encoded with mp4v at 720p and at 1080p: decode and whole-engine CPU per frame."""
    rows = []
    for label, size in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
        target = workdir / f"{source.stem}_{label}.mp4"
        write_scaled(source, target, size)
        _, decode_ms = decode_cost(target, rounds)
        rows.append(Resolution(label, decode_ms, run(f"mp4v {label}", REFERENCE, target, models, rounds)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:  # noqa: C901 - a bench's sequence of trials, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", nargs="+", choices=sorted(CLIPS), default=list(CLIPS))
    parser.add_argument("--rounds", type=int, default=2, help="runs per option set; the fastest is kept")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    log(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    models = ModelCache()
    paths = {clip: data_dir() / CLIPS[clip] for clip in args.videos}
    for path in paths.values():
        if not path.is_file():
            parser.error(f"{path} does not exist (set HANDPIPE_TEST_DATA to the shared/data folder)")
    log("warming up both models")
    first = next(iter(paths.values()))
    for model in ("full", "lite"):
        process_video(first, ProcessOptions(model=model).with_range(0, 500), models=models)

    measures: list[Measure] = []
    decode: dict[str, tuple[int, float]] = {}
    for clip, path in paths.items():
        info = probe(path)
        log(f"{clip}: {path.name} {info.width}x{info.height} {info.fps:g} fps {info.frame_count} frames {info.codec}")
        clip_measures = [run(clip, config, path, models, args.rounds) for config in CONFIGS]
        reference = clip_measures[0]
        for measure in clip_measures:
            compare(reference, measure)
        measures.extend(clip_measures)
        decode[clip] = decode_cost(path, args.rounds)
        log(f"  {clip} decode alone: {decode[clip][1]:.2f} CPU ms/frame")

    resolution: list[Resolution] = []
    if "thumb" in paths:
        log("the thumb clip re-encoded at 720p and 1080p (mp4v): decode and engine cost")
        with tempfile.TemporaryDirectory(prefix="handpipe-tradeoffs-") as tmp:
            resolution = resolution_cost(paths["thumb"], models, args.rounds, Path(tmp))

    print()
    print(f"engine, 1 process, best of {args.rounds} round(s) per row; os.cpu_count()={os.cpu_count()}")
    print()
    print_table(measures)
    print()
    references = {m.clip: m for m in measures if m.config == REFERENCE}
    print("decode alone (grab + retrieve + cvtColor, every frame, CPU ms per frame) against the full model's")
    for clip, (frames, ms) in decode.items():
        info = references[clip].result["video"]
        print(
            f"  {clip:<9} {info['width']}x{info['height']} {info['codec']:<5} {frames} frames: {ms:.2f} ms, "
            f"{100 * ms / references[clip].cpu_ms:.1f}% of {references[clip].cpu_ms:.1f} ms"
        )
    if resolution:
        low, high = resolution
        print("the thumb clip re-encoded with mp4v at 720p and 1080p (model full, num_hands=2)")
        for row in resolution:
            print(
                f"  {row.label:<6} decode {row.decode_ms:.2f} CPU ms/frame, "
                f"engine {row.engine.cpu_ms:.1f} CPU ms/frame ({row.engine.fps:.1f} fps, "
                f"{row.engine.with_hands} frames with hands)"
            )
        print(
            f"  1080p / 720p: decode {high.decode_ms / low.decode_ms:.2f}x, "
            f"engine {high.engine.cpu_ms / low.engine.cpu_ms:.2f}x"
        )
    print()
    result: dict[str, Any] = {"rounds": args.rounds}
    for m in measures:
        key = f"{m.clip}_{m.config}"
        result[f"{key}_fps"] = round(m.fps, 2)
        result[f"{key}_cpu_ms"] = round(m.cpu_ms, 1)
        result[f"{key}_hands"] = round(m.hands_share, 3)
        result[f"{key}_shift_mean"] = None if m.shift_mean is None else round(m.shift_mean, 5)
        result[f"{key}_shift_max"] = None if m.shift_max is None else round(m.shift_max, 5)
    for clip, (_, ms) in decode.items():
        result[f"{clip}_decode_ms"] = round(ms, 2)
    for row in resolution:
        result[f"mp4v_{row.label}_decode_ms"] = round(row.decode_ms, 2)
        result[f"mp4v_{row.label}_cpu_ms"] = round(row.engine.cpu_ms, 1)
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
