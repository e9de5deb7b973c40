"""Benchmark of the worker engine against the loop users write today, on the same input and options.

    .venv/bin/python bench/worker.py [--frames 900] [--video PATH] [--model full|lite] [--num-hands 2]
                                     [--sample-fps F] [--processes N] [--rounds 1]

Contenders, all in one run:
  naive      cv2.VideoCapture.read -> cvtColor BGR2RGB -> mediapipe.Image -> detect_for_video, one process
  engine     handpipe_worker.engine.process_video, one process
  engine xN  process_video on N equal time ranges in a spawn pool, merged with chalicelib.shared.results.merge_parts
plus a pure-Python CPU calibration (1 process vs N at once) to tell what speed-up the machine can give, and
the cold-start cost (import mediapipe + create the landmarker) measured in a fresh interpreter.

Then exact against adaptive detection on the shared clips (bench/adaptive.py): CPU per frame, frames with
hands, frames whose hand count differs, landmark differences.

Prints progress to stderr, tables and one `RESULT key=value ...` line to stdout. Exits 1 if the engine
finds fewer frames with hands than the naive loop, if the N-process run loses frames the single pass
found, or if adaptive detection (first --adaptive-scan-frames value) loses any. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adaptive
import cv2
from common import data_dir, exit_status, log, print_header, print_result, timed, write_looped
from handpipe_worker.engine import probe, process_video
from handpipe_worker.models import ModelCache, assemble_bundled

from chalicelib.shared.contracts import ContractError, ProcessOptions
from chalicelib.shared.results import merge_parts

DEFAULT_VIDEO = "videos/one_hand_wave_portrait.mp4"
WARMUP_FRAMES = 10
SEGMENT_WARMUP_MS = 1000
CALIBRATION_LOOPS = 12_000_000  # about a second of pure Python on one core
CALIBRATION_ROUNDS = 3  # 1 process then N at once, this many times; the median speed-up is reported
PROGRESS_EVERY = 150


# --------------------------------------------------------------------------------------------- input


# --------------------------------------------------------------------------------------------- naive


def _first_in_slot(sample_fps: float | None) -> Callable[[float], bool]:
    """The sampling rule a careful user would write: keep the first frame of each 1/sample_fps slot."""
    last: list[int | None] = [None]

    def keep(timestamp_ms: float) -> bool:
        if sample_fps is None:
            return True
        slot = math.floor(timestamp_ms * sample_fps / 1000.0 + 1e-9)
        kept = slot != last[0]
        last[0] = slot
        return kept

    return keep


def naive_loop(path: Path, options: ProcessOptions, model_data: bytes, max_frames: int | None = None) -> dict[int, int]:
    """The loop of the MediaPipe tutorials. Returns hands found per processed frame index."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    landmarker = vision.HandLandmarker.create_from_options(
        vision.HandLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=model_data),
            running_mode=vision.RunningMode.VIDEO,
            num_hands=options.num_hands,
            min_hand_detection_confidence=options.min_detection_confidence,
            min_hand_presence_confidence=options.min_presence_confidence,
            min_tracking_confidence=options.min_tracking_confidence,
        )
    )
    keep = _first_in_slot(options.sample_fps)
    capture = cv2.VideoCapture(str(path))
    hands: dict[int, int] = {}
    index = -1
    last_ms = -1
    try:
        while max_frames is None or index + 1 < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            index += 1
            timestamp = capture.get(cv2.CAP_PROP_POS_MSEC)
            if not keep(timestamp):
                continue
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
            last_ms = max(int(timestamp), last_ms + 1)  # detect_for_video needs strictly increasing times
            result = landmarker.detect_for_video(image, last_ms)
            hands[index] = len(result.hand_landmarks)
            if max_frames is None and len(hands) % PROGRESS_EVERY == 0:
                log(f"  naive: {len(hands)} frames")
    finally:
        capture.release()
        landmarker.close()
    return hands


# ------------------------------------------------------------------------------------ pool workers

_WORKER_MODELS: ModelCache | None = None


def _init_worker(path: str, options: dict[str, Any], warm_end_ms: int, barrier: Any) -> None:
    """Import mediapipe, build the model bundle and run a few frames, then wait for the others, so the
    timed part of the N-process run holds no start-up cost."""
    global _WORKER_MODELS
    _WORKER_MODELS = ModelCache()
    process_video(path, ProcessOptions(**options).with_range(0, warm_end_ms), models=_WORKER_MODELS)
    barrier.wait()


def _run_segment(task: tuple[str, dict[str, Any], int]) -> tuple[dict[str, Any], int, float, float]:
    path, options, warmup_ms = task
    wall, cpu = time.perf_counter(), time.process_time()
    result = process_video(path, ProcessOptions(**options), models=_WORKER_MODELS, warmup_ms=warmup_ms)
    return result, os.getpid(), time.perf_counter() - wall, time.process_time() - cpu


def _calibration_work(loops: int) -> int:
    """Fixed pure-Python CPU work: no I/O, no native code releasing the GIL, nothing to cache."""
    x = 0
    for i in range(loops):
        x = (x * 31 + i) % 1_000_003
    return x


def calibrate(
    pool: Any, n: int, loops: int = CALIBRATION_LOOPS, rounds: int = CALIBRATION_ROUNDS
) -> tuple[float, float, float]:
    """The speed-up the machine gives right now to N CPU-bound processes: `loops` of pure Python timed
    in 1 process of `pool` (a multiprocessing.Pool of at least N), then in N at once, `rounds` times.
    Returns the median round's (N x t1 / tN, t1, tN). Used by bench/fanout.py too."""
    log(f"calibration: {loops:,} pure-Python loops in 1 process, then in {n} at once ({rounds} rounds)")
    results = []
    for _ in range(rounds):
        cal_1 = timed(lambda: pool.apply(_calibration_work, (loops,)))[1]
        cal_n = timed(lambda: pool.map(_calibration_work, [loops] * n, chunksize=1))[1]
        results.append((n * cal_1 / cal_n, cal_1, cal_n))
        log(f"  1 process {cal_1:.2f} s, {n} at once {cal_n:.2f} s: speed-up {results[-1][0]:.2f}")
    speedup, cal_1, cal_n = sorted(results)[len(results) // 2]
    return speedup, cal_1, cal_n


# ------------------------------------------------------------------------------------- cold start

_COLD_START = """
import json, sys, time
t0 = time.perf_counter()
import mediapipe
from mediapipe.tasks.python import BaseOptions, vision
t1 = time.perf_counter()
from handpipe_worker.models import assemble_bundled
data = assemble_bundled(sys.argv[1]).data
t2 = time.perf_counter()
landmarker = vision.HandLandmarker.create_from_options(vision.HandLandmarkerOptions(
    base_options=BaseOptions(model_asset_buffer=data), running_mode=vision.RunningMode.VIDEO))
t3 = time.perf_counter()
landmarker.close()
print(json.dumps({"import_s": t1 - t0, "bundle_s": t2 - t1, "create_s": t3 - t2, "total_s": t3 - t0}))
"""


def cold_start(model: str) -> dict[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _COLD_START, model], capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        raise SystemExit(f"cold-start probe failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_s"] = time.perf_counter() - started  # with interpreter start-up and exit
    return figures


# ----------------------------------------------------------------------------------------- timing


@dataclass
class Row:
    name: str
    frames: int
    with_hands: int
    wall_s: float
    cpu_s: float
    machine_s: float | None  # CPU seconds the whole machine used meanwhile
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def others_cores(self) -> float | None:
        """Cores' worth of CPU the rest of the machine (other users) took while this contender ran."""
        if self.machine_s is None or self.wall_s <= 0:
            return None
        return max(0.0, self.machine_s - self.cpu_s) / self.wall_s


def segment_ranges(duration_ms: float, processes: int) -> list[tuple[int, int | None]]:
    """N equal [start, end) ranges; the last one is open so no trailing frame can fall outside."""
    bounds = [round(k * duration_ms / processes) for k in range(processes + 1)]
    return [(bounds[k], bounds[k + 1] if k < processes - 1 else None) for k in range(processes)]


def compare_frames(single: dict[str, Any], merged: dict[str, Any]) -> dict[str, int]:
    one = {f["index"]: len(f["hands"]) for f in single["frames"]}
    many = {f["index"]: len(f["hands"]) for f in merged["frames"]}
    missing = sum(1 for i in one if i not in many)
    lost = sum(1 for i, n in one.items() if n and i in many and not many[i])
    return {
        "lost_frames": missing + lost,
        "missing_frames": missing,
        "extra_frames": sum(1 for i in many if i not in one),
        "gained_frames": sum(1 for i, n in many.items() if n and i in one and not one[i]),
        "hand_count_differs": sum(1 for i, n in one.items() if i in many and many[i] != n),
    }


def print_table(rows: Sequence[Row], naive_fps: float) -> None:
    header = (
        f"{'contender':<18} {'frames':>7} {'w/ hands':>9} {'wall s':>8} {'fps':>8} {'vs naive':>9} "
        f"{'cpu s':>8} {'cores':>6} {'others':>7}"
    )
    print_header(header)
    for row in rows:
        ratio = row.fps / naive_fps if naive_fps else 0.0
        others = row.others_cores
        print(
            f"{row.name:<18} {row.frames:>7} {row.with_hands:>9} {row.wall_s:>8.2f} {row.fps:>8.2f} {ratio:>8.2f}x "
            f"{row.cpu_s:>8.2f} {row.cpu_s / row.wall_s:>6.2f} {'-' if others is None else f'{others:.2f}':>7}"
        )


# ------------------------------------------------------------------------------------------- main


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, help=f"input video (default <data>/{DEFAULT_VIDEO})")
    parser.add_argument("--frames", type=int, default=900, help="loop/cut the input to this many frames")
    parser.add_argument("--model", choices=("full", "lite"), default="full")
    parser.add_argument("--sample-fps", type=float, default=None, help="keep at most this many frames a second")
    parser.add_argument(
        "--num-hands",
        type=int,
        default=2,
        help="hands to look for (2, MediaPipe's default, re-runs palm detection every frame while fewer are tracked)",
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="N for the N-process run")
    parser.add_argument(
        "--adaptive-scan-frames",
        default="1,3",
        help="detection_scan_frames values for the exact-against-adaptive comparison on the shared clips ('' skips it)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the three contenders this many times, alternating; keep each one's best",
    )
    args = parser.parse_args(argv)
    if args.frames < 2 * WARMUP_FRAMES:
        parser.error(f"--frames must be at least {2 * WARMUP_FRAMES}")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        args.options = ProcessOptions.from_dict(
            {"model": args.model, "sample_fps": args.sample_fps, "num_hands": args.num_hands}
        )
    except ContractError as exc:
        parser.error(str(exc))
    args.video = args.video or data_dir() / DEFAULT_VIDEO
    if not args.video.is_file():
        parser.error(f"{args.video} does not exist (set HANDPIPE_TEST_DATA to the shared/data folder or pass --video)")
    return args


def _best(rows: Sequence[Row]) -> Row:
    """The least disturbed round: on a shared machine other users only ever slow a run down."""
    return min(rows, key=lambda row: row.wall_s)


def _least_cpu(rows: Sequence[Row]) -> Row:
    """The round with the least CPU: the same frames through the same code, so the rest is contention."""
    return min(rows, key=lambda row: row.cpu_s)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.processes
    options: ProcessOptions = args.options

    log(f"cold start: import mediapipe + create the landmarker in a fresh interpreter ({args.model})")
    cold = cold_start(args.model)
    log(
        f"  {cold['total_s']:.2f} s (import {cold['import_s']:.2f}, bundle {cold['bundle_s']:.2f}, "
        f"create {cold['create_s']:.2f}; whole process {cold['process_s']:.2f})"
    )

    with tempfile.TemporaryDirectory(prefix="handpipe-bench-") as tmp:
        video = Path(tmp) / f"looped_{args.frames}.mp4"
        log(f"writing {args.frames} frames of {args.video.name} (looped) to {video} with mp4v")
        fps, _, _ = write_looped(args.video, video, args.frames)
        info = probe(video)
        duration_ms = info.duration_ms or args.frames * 1000.0 / fps
        warm_end_ms = max(1, round(WARMUP_FRAMES * 1000.0 / fps))
        log(f"  {info.width}x{info.height} {info.fps:.2f} fps {info.frame_count} frames, {duration_ms / 1000:.1f} s")

        ranges = segment_ranges(duration_ms, n)
        tasks = [
            (str(video), options.with_range(start, end).to_dict(), 0 if k == 0 else SEGMENT_WARMUP_MS)
            for k, (start, end) in enumerate(ranges)
        ]
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(n + 1)
        log(f"starting a spawn pool of {n} and warming each worker up on the first {WARMUP_FRAMES} frames")
        pool_started = time.perf_counter()
        initargs = (str(video), options.to_dict(), warm_end_ms, barrier)
        with ctx.Pool(n, initializer=_init_worker, initargs=initargs) as pool:
            barrier.wait(timeout=600)
            pool_start_s = time.perf_counter() - pool_started
            log(f"  pool ready in {pool_start_s:.2f} s (not timed); ranges {ranges}")

            model_data = assemble_bundled(args.model).data
            models = ModelCache()
            log(f"warming up naive and engine in this process on the first {WARMUP_FRAMES} frames")
            naive_loop(video, options, model_data, max_frames=WARMUP_FRAMES)
            process_video(video, options.with_range(0, warm_end_ms), models=models)

            naive_rows: list[Row] = []
            engine_rows: list[Row] = []
            nproc_rows: list[Row] = []
            for round_ in range(1, args.rounds + 1):
                tag = f" (round {round_}/{args.rounds})" if args.rounds > 1 else ""
                log(f"naive loop, 1 process{tag}")
                naive_hands, wall, cpu, busy = timed(lambda: naive_loop(video, options, model_data))
                with_hands = sum(1 for h in naive_hands.values() if h)
                naive_rows.append(Row("naive (1 proc)", len(naive_hands), with_hands, wall, cpu, busy))
                log(f"  {len(naive_hands)} frames in {wall:.2f} s ({naive_rows[-1].fps:.2f} fps)")

                log(f"engine, 1 process{tag}")

                def progress(done: int, expected: int | None) -> None:
                    if done % PROGRESS_EVERY == 0:
                        log(f"  engine: {done}/{expected} frames")

                single, wall, cpu, busy = timed(lambda: process_video(video, options, models=models, progress=progress))
                stats = single["stats"]
                engine_rows.append(
                    Row(
                        "engine (1 proc)",
                        len(single["frames"]),
                        single["summary"]["frames_with_hands"],
                        wall,
                        cpu,
                        busy,
                        {"decode_s": stats["decode_s"], "inference_s": stats["inference_s"]},
                    )
                )
                log(f"  {len(single['frames'])} frames in {wall:.2f} s ({engine_rows[-1].fps:.2f} fps)")

                log(f"engine, {n} processes{tag}")
                outcomes, wall, _, busy = timed(lambda: pool.map(_run_segment, tasks, chunksize=1))
                merged = merge_parts([o[0] for o in outcomes])
                nproc_rows.append(
                    Row(
                        f"engine ({n} proc)",
                        len(merged["frames"]),
                        merged["summary"]["frames_with_hands"],
                        wall,
                        sum(o[3] for o in outcomes),  # the workers' CPU; this process only waits
                        busy,
                        {
                            "workers": len({o[1] for o in outcomes}),
                            "segment_wall_s": [round(o[2], 2) for o in outcomes],
                            "frames_decoded": [o[0]["stats"]["frames_decoded"] for o in outcomes],
                        },
                    )
                )
                log(f"  {len(merged['frames'])} frames in {wall:.2f} s ({nproc_rows[-1].fps:.2f} fps)")

            calibration_speedup, cal_1, cal_n = calibrate(pool, n)

    scans = [int(v) for v in args.adaptive_scan_frames.split(",") if v.strip()]
    adaptive_rows = (
        adaptive.run(adaptive.shared_clips(), options.detection_interval_ms, scans, args.rounds) if scans else []
    )

    # Detections are compared on the last round's results (every round sees the same frames).
    naive, engine, nproc = _best(naive_rows), _best(engine_rows), _best(nproc_rows)
    diff = compare_frames(single, merged)
    engine_hands = {f["index"]: len(f["hands"]) for f in single["frames"]}
    naive_vs_engine = sum(1 for i, h in naive_hands.items() if engine_hands.get(i) != h) + sum(
        1 for i in engine_hands if i not in naive_hands
    )

    ratio = engine.fps / naive.fps if naive.fps else 0.0
    naive_cpu, engine_cpu = _least_cpu(naive_rows), _least_cpu(engine_rows)
    ratio_cpu = (
        (engine_cpu.frames / engine_cpu.cpu_s) / (naive_cpu.frames / naive_cpu.cpu_s) if engine_cpu.cpu_s else 0.0
    )
    speedup = nproc.fps / engine.fps if engine.fps else 0.0
    efficiency = speedup / calibration_speedup if calibration_speedup else 0.0
    work_efficiency = engine.cpu_s / nproc.cpu_s if nproc.cpu_s else 0.0  # CPU the split costs on top

    print()
    print(
        f"input: {args.video.name} looped to {info.frame_count} frames ({info.width}x{info.height}, "
        f"{info.fps:.0f} fps, mp4v), model={args.model}, num_hands={args.num_hands}, sample_fps={args.sample_fps}, "
        f"processes={n}, os.cpu_count()={os.cpu_count()}"
        + (f", best of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    print()
    print_table([naive, engine, nproc], naive.fps)
    print()
    if args.rounds > 1:
        for rows in (naive_rows, engine_rows, nproc_rows):
            print(f"{rows[0].name} fps by round: {', '.join(f'{row.fps:.2f}' for row in rows)}")
    print(
        f"engine 1 proc: decode {engine.notes['decode_s']:.2f} s, inference {engine.notes['inference_s']:.2f} s; "
        f"frames per CPU second engine/naive {ratio_cpu:.3f} (each one's least-CPU round: "
        f"naive {naive_cpu.cpu_s:.2f} s, engine {engine_cpu.cpu_s:.2f} s)"
    )
    print(
        f"engine {n} proc: {nproc.notes['workers']} workers, segment wall s {nproc.notes['segment_wall_s']}, "
        f"frames decoded per segment {nproc.notes['frames_decoded']}, pool start-up {pool_start_s:.2f} s (not timed)"
    )
    print(
        f"speed-up {n} proc over 1 proc: {speedup:.2f}x; calibration (pure CPU) speed-up: "
        f"{calibration_speedup:.2f}x ({cal_1:.2f} s vs {cal_n:.2f} s); efficiency {efficiency:.2f}; "
        f"work efficiency (1-proc CPU s / {n}-proc CPU s) {work_efficiency:.2f}"
    )
    adaptive.print_rows(adaptive_rows, options.detection_interval_ms)
    print(f"single vs merged frames: {diff}; naive vs engine frames with a different hand count: {naive_vs_engine}")
    print(
        f"cold start (fresh interpreter): import mediapipe {cold['import_s']:.2f} s + model bundle "
        f"{cold['bundle_s']:.2f} s + create landmarker {cold['create_s']:.2f} s = {cold['total_s']:.2f} s"
    )
    busiest = max((row.others_cores or 0.0) for row in (naive, engine, nproc))
    if busiest > 0.25:
        print(
            f"note: other processes used up to {busiest:.2f} cores during the timed runs (column 'others'): "
            "wall-clock figures are disturbed; compare frames per CPU second"
            + ("" if args.rounds > 1 else ", or use --rounds 3")
        )
    print()
    result = {
        "frames": info.frame_count,
        "model": args.model,
        "num_hands": args.num_hands,
        "sample_fps": args.sample_fps,
        "processes": n,
        "rounds": args.rounds,
        "naive_fps": round(naive.fps, 2),
        "engine_fps": round(engine.fps, 2),
        "ratio_1proc": round(ratio, 3),
        "ratio_1proc_cpu": round(ratio_cpu, 3),
        "engine_nproc_fps": round(nproc.fps, 2),
        "speedup": round(speedup, 3),
        "calibration_speedup": round(calibration_speedup, 3),
        "efficiency": round(efficiency, 3),
        "work_efficiency": round(work_efficiency, 3),
        "lost_frames": diff["lost_frames"],
        "naive_frames": naive.frames,
        "engine_frames": engine.frames,
        "nproc_frames": nproc.frames,
        "naive_with_hands": naive.with_hands,
        "engine_with_hands": engine.with_hands,
        "nproc_with_hands": nproc.with_hands,
        "naive_engine_diff_frames": naive_vs_engine,
        "naive_wall_s": round(naive.wall_s, 3),
        "engine_wall_s": round(engine.wall_s, 3),
        "engine_nproc_wall_s": round(nproc.wall_s, 3),
        "naive_cpu_s": round(naive.cpu_s, 3),
        "engine_cpu_s": round(engine.cpu_s, 3),
        "nproc_cpu_s": round(nproc.cpu_s, 3),
        "naive_others_cores": _round(naive.others_cores),
        "engine_others_cores": _round(engine.others_cores),
        "nproc_others_cores": _round(nproc.others_cores),
        "cold_start_s": round(cold["total_s"], 3),
    }
    result.update(adaptive.result_keys(adaptive_rows, scans))
    print_result(result)

    failures = []
    if engine.with_hands < naive.with_hands:
        failures.append(f"the engine found hands in {engine.with_hands} frames, the naive loop in {naive.with_hands}")
    if diff["lost_frames"] > 0:
        failures.append(f"the {n}-process run lost {diff['lost_frames']} frames the single pass found ({diff})")
    failures += adaptive.failures(adaptive_rows, scans)
    return exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
