"""Lambda model: the wall time and the cost of a 10-minute 1080p 30 fps video, computed from per-frame
costs measured here, on this machine, and stated assumptions (every one a command-line option).

    .venv/bin/python bench/lambda_model.py [--frames 150] [--segment-s 8] [--warmup-ms 500]
                                           [--adaptive-ratio R] [--memory-mb 3008] ...

Measured in this run: a 1080p 30 fps H.264 clip is made from the shared thumbs-up clip (scaled up with
PyAV, libx264 at --bitrate-mbps); then, in this process, CPU per frame of decoding it to RGB as the engine
does (handpipe_worker.video) and of the engine's whole pass (decode + inference, handpipe_worker.engine),
best of --rounds; inference = engine - decode. The container index's parse time per frame
(chalicelib.shared.mp4index, the orchestrator's probe) and the worker's cold start in a fresh interpreter
(bench/worker.py's cold_start) are measured too. Adaptive detection (ProcessOptions detection="adaptive",
--detection-interval-ms, --detection-scan-frames) is measured the same way, in the same process on the
same clip, each round running exact then adaptive: adaptive inference = adaptive engine - decode. It only
saves work while one hand is tracked, so the adaptive/exact inference ratio is also measured in the same
run on a shared one-hand clip (--ratio-clip, the portrait wave: one hand in every frame). The 1080p
clip's own measurement is the adaptive figure when that clip is one-hand footage (bench/adaptive.py's
is_one_hand); when it is not (no hands, or two in more than 5 % of the frames with hands), the ratio
clip's ratio applied to the 1080p exact inference is; the output says which, and prints the other as a
sensitivity line. --adaptive-ratio R overrides both measurements (adaptive inference = exact inference
x R, printed as an assumption).

The job's path, as the code runs it: job created -> SQS hop -> plan_jobs reads the container index
(ranged GETs) and sends the work items -> SQS hop -> every worker cold-starts at once (concurrency =
segments) -> decodes its segment plus its warm-up, decode overlapping inference on the second vCPU ->
writes its part -> SQS hop -> record_events reads the parts' heads and marks the job SUCCEEDED (the merged
result, insights and pictures are written after, off the path). A frame's wall time is
max(inference, (inference + decode) / vCPUs) / lambda speed.

Prints the assumptions, the measured figures, both models, what moves them, then
`RESULT exact_wall_s=... exact_cost_per_video_minute=... adaptive_wall_s=... adaptive_cost_per_video_minute=...`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import av
from adaptive import is_one_hand
from common import data_dir, log, print_result
from handpipe_worker.engine import process_video
from handpipe_worker.models import ModelCache
from handpipe_worker.video import VideoFile
from worker import cold_start

from chalicelib.config import Settings
from chalicelib.shared.contracts import ProcessOptions
from chalicelib.shared.mp4index import read_index

SOURCE = "videos/thumb_up_landscape_720p.mp4"
RATIO_CLIP = "videos/one_hand_wave_portrait.mp4"  # one hand in all 180 frames (shared/data/SOURCES.md)
GB_S_PRICE = 0.0000166667  # x86, per GB-second (us-east-1 list price)
REQUEST_PRICE = 0.20 / 1_000_000
DEFAULT_WARMUP_MS = float(next(f.default for f in fields(Settings) if f.name == "warmup_ms"))  # type: ignore[arg-type]


def make_1080p(target: Path, frames: int, bitrate_mbps: float) -> Path:
    """The shared clip scaled to 1920x1080, looped to `frames`, as 30 fps H.264 (a phone's 1080p30)."""
    pictures = []
    with av.open(str(data_dir() / SOURCE)) as source:
        for frame in source.decode(video=0):
            pictures.append(frame.reformat(width=1920, height=1080, format="yuv420p"))
    with av.open(str(target), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.bit_rate = int(bitrate_mbps * 1_000_000)
        stream.codec_context.options = {"preset": "veryfast", "g": "60"}
        for number in range(frames):
            picture = pictures[number % len(pictures)]
            picture.pts = None
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return target


def decode_cpu_ms(path: Path) -> float:
    """CPU per frame (all threads) of decoding every frame to upright RGB, as the engine's decode thread does."""
    started = time.process_time()
    count = 0
    with VideoFile(path) as video:
        for frame in video.frames():
            frame.rgb()
            count += 1
    return (time.process_time() - started) * 1000 / count


def engine_cpu_ms(path: Path, options: ProcessOptions, models: ModelCache) -> tuple[float, dict[str, Any]]:
    """CPU per frame (all threads) of the engine's whole pass, and its result."""
    started = time.process_time()
    result = process_video(path, options, models=models)
    return (time.process_time() - started) * 1000 / len(result["frames"]), result


@dataclass(frozen=True)
class Compared:
    """Exact against adaptive detection on one clip, measured in this process: CPU ms a frame."""

    clip: str
    frames: int
    one_hand_frames: int  # frames on which exact mode found exactly one hand
    one_hand: bool  # bench/adaptive.py's is_one_hand: one-hand footage, where adaptive detection saves work
    decode_ms: float
    exact_ms: float
    adaptive_ms: float

    @property
    def inference_ratio(self) -> float:
        """Adaptive over exact CPU a frame with decoding, which no detection mode changes, taken out of both."""
        return (self.adaptive_ms - self.decode_ms) / (self.exact_ms - self.decode_ms)


def compare(path: Path, adaptive: ProcessOptions, models: ModelCache, rounds: int) -> Compared:
    """Decode alone, then exact and adaptive in turn each round; the least CPU of each is kept."""
    process_video(path, ProcessOptions().with_range(0, 200), models=models)  # the model cache warm
    log(f"{path.name}: decode, exact and adaptive detection, {rounds} round(s)")
    decode = min(decode_cpu_ms(path) for _ in range(rounds))
    exact_ms = adaptive_ms = float("inf")
    exact: dict[str, Any] = {}
    for _ in range(rounds):
        ms, exact = engine_cpu_ms(path, ProcessOptions(), models)
        exact_ms = min(exact_ms, ms)
        adaptive_ms = min(adaptive_ms, engine_cpu_ms(path, adaptive, models)[0])
    return Compared(
        clip=path.name,
        frames=len(exact["frames"]),
        one_hand_frames=sum(1 for frame in exact["frames"] if len(frame["hands"]) == 1),
        one_hand=is_one_hand(exact),
        decode_ms=decode,
        exact_ms=exact_ms,
        adaptive_ms=adaptive_ms,
    )


def index_parse_ms_per_frame(path: Path) -> float:
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        with open(path, "rb") as file:
            found = read_index(file, os.path.getsize(path))
    assert found is not None, "the generated clip's container index should be readable"
    return (time.perf_counter() - started) * 1000 / rounds / len(found.pts)


@dataclass(frozen=True)
class Assumptions:
    video_s: float
    fps: float
    bitrate_mbps: float
    segment_s: float
    warmup_ms: float
    memory_mb: int
    lambda_speed: float  # Lambda's per-core speed relative to this machine
    cold_start_s: float  # wall: sandbox, image and init, before the first frame
    billed_cold_s: float  # of which billed: the init code (imports, model, landmarker), measured here
    s3_mb_s: float  # one worker's ranged-read throughput
    s3_first_byte_s: float
    hop_s: float  # one SQS hop to a polling Lambda
    plan_s: float  # plan_jobs besides reading the index: the DB rows, the work items' batches
    finish_s: float  # record_events: the parts' heads (parallel GETs) and the SUCCEEDED transaction
    part_write_s: float
    sqs_ramp_per_s: float  # 0: all segments start at once
    concurrency: int  # workers at once (WorkerConcurrency, HANDPIPE_MAX_IN_FLIGHT_PER_JOB); 0: one per segment

    @property
    def vcpus(self) -> float:
        return self.memory_mb / 1769

    @property
    def gb(self) -> float:
        return self.memory_mb / 1024


@dataclass(frozen=True)
class Figures:
    inference_ms: float
    decode_ms: float
    index_ms_per_frame: float


def model(a: Assumptions, f: Figures) -> dict[str, float]:
    """Wall time of the job's path and its cost, for one set of per-frame costs."""
    frames = a.video_s * a.fps
    segments = math.ceil(a.video_s / a.segment_s)
    warm_frames = a.warmup_ms / 1000 * a.fps
    per_frame_ms = max(f.inference_ms, (f.inference_ms + f.decode_ms) / a.vcpus) / a.lambda_speed
    segment_frames = a.segment_s * a.fps + warm_frames
    segment_bytes = (a.segment_s + a.warmup_ms / 1000) * a.bitrate_mbps / 8 * 1e6 + 4 * (1 << 20)
    # the reads stream ahead of the decoder: only the first block waits, unless S3 is slower than the frames
    read_s = max(a.s3_first_byte_s, segment_bytes / (a.s3_mb_s * 1e6) - segment_frames * per_frame_ms / 1000)
    segment_s = read_s + segment_frames * per_frame_ms / 1000 + a.part_write_s
    probe_s = 3 * a.s3_first_byte_s + frames * f.index_ms_per_frame / 1000
    workers = min(segments, a.concurrency) if a.concurrency > 0 else segments
    waves = math.ceil(segments / workers)  # a later wave runs on the first wave's warm workers
    ramp_s = max(0.0, workers - 5) / a.sqs_ramp_per_s if a.sqs_ramp_per_s > 0 else 0.0
    wall = a.hop_s + probe_s + a.plan_s + a.hop_s + ramp_s + a.cold_start_s + waves * segment_s + a.hop_s + a.finish_s
    gb_s = (workers * a.billed_cold_s + segments * segment_s) * a.gb
    requests = segments + 1 + segments * (segment_frames / a.fps / 5)  # work items, the render, progress events
    cost = gb_s * GB_S_PRICE + requests * REQUEST_PRICE
    return {
        "segments": segments,
        "workers": workers,
        "waves": waves,
        "per_frame_ms": per_frame_ms,
        "segment_s": segment_s,
        "probe_s": probe_s,
        "ramp_s": ramp_s,
        "wall_s": wall,
        "gb_s": gb_s,
        "cost": cost,
        "cost_per_video_minute": cost / (a.video_s / 60),
        "frames_billed": segments * segment_frames,
        "frames": frames,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--frames", type=int, default=150, help="frames of the generated 1080p clip to measure on")
    add("--rounds", type=int, default=2, help="measurement rounds (the fastest counts)")
    add("--adaptive-ratio", type=float, help="adaptive/exact inference CPU, instead of measuring it (default)")
    add("--detection-interval-ms", type=int, default=ProcessOptions().detection_interval_ms, help="adaptive")
    add("--detection-scan-frames", type=int, default=ProcessOptions().detection_scan_frames, help="adaptive")
    add("--ratio-clip", default=RATIO_CLIP, help="one-hand clip for the ratio when the 1080p clip is not one-hand")
    add("--video-s", type=float, default=600.0)
    add("--fps", type=float, default=30.0)
    add("--bitrate-mbps", type=float, default=8.0, help="the 1080p30 H.264 bitrate (a phone's default)")
    add("--segment-s", type=float, default=8.0)
    add("--warmup-ms", type=float, default=DEFAULT_WARMUP_MS, help="the tracker warm-up (HANDPIPE_WARMUP_MS)")
    add("--concurrency", type=int, default=0, help="workers at once (WorkerConcurrency; default 0: one a segment)")
    add("--memory-mb", type=int, default=3008, help="worker memory: vCPU share = memory / 1769")
    add("--lambda-speed", type=float, default=1.0, help="a Lambda core's speed relative to this machine's")
    add("--cold-start-s", type=float, default=5.0, help="wall time before a new worker's first frame")
    add("--billed-cold-s", type=float, help="billed init per worker (default: measured here)")
    add("--s3-mb-s", type=float, default=80.0, help="one worker's S3 read throughput, MB/s")
    add("--s3-first-byte-s", type=float, default=0.05)
    add("--hop-s", type=float, default=0.5, help="one SQS hop to a polling Lambda")
    add("--plan-s", type=float, default=0.3)
    add("--finish-s", type=float, default=0.3)
    add("--part-write-s", type=float, default=0.1)
    add("--sqs-ramp-per-s", type=float, default=0.0, help="new workers a second (AWS: 300 a minute = 5); 0: all")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, Any]]:
    models = ModelCache()
    measured: dict[str, float] = {}
    notes: dict[str, Any] = {}
    rounds = max(1, args.rounds)
    adaptive = ProcessOptions(
        detection="adaptive",
        detection_interval_ms=args.detection_interval_ms,
        detection_scan_frames=args.detection_scan_frames,
    )
    with tempfile.TemporaryDirectory(prefix="handpipe-lambda-model-") as folder:
        clip = make_1080p(Path(folder) / "1080p.mp4", args.frames, args.bitrate_mbps)
        notes["clip_mb"] = clip.stat().st_size / 1e6
        log(f"1080p clip: {args.frames} frames, {notes['clip_mb']:.1f} MB; measuring decode and the engine")
        if args.adaptive_ratio is None:
            notes["1080p"] = compare(clip, adaptive, models, rounds)
            measured["decode_ms"], measured["engine_ms"] = notes["1080p"].decode_ms, notes["1080p"].exact_ms
            measured["adaptive_engine_ms"] = notes["1080p"].adaptive_ms
        else:  # the ratio is given: exact mode alone
            process_video(clip, ProcessOptions().with_range(0, 200), models=models)  # the model cache warm
            measured["decode_ms"] = min(decode_cpu_ms(clip) for _ in range(rounds))
            measured["engine_ms"] = min(engine_cpu_ms(clip, ProcessOptions(), models)[0] for _ in range(rounds))
        measured["index_ms_per_frame"] = index_parse_ms_per_frame(clip)
    if args.adaptive_ratio is None:
        log(f"the adaptive/exact inference ratio on one-hand footage: {args.ratio_clip}")
        notes["ratio_clip"] = compare(data_dir() / args.ratio_clip, adaptive, models, rounds)
    log("cold start in a fresh interpreter")
    measured["cold_start_s"] = cold_start("full")["total_s"]
    return measured, notes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    measured, notes = measure(args)
    inference = measured["engine_ms"] - measured["decode_ms"]
    detection = f"detection=adaptive, interval {args.detection_interval_ms} ms, scan {args.detection_scan_frames}"
    if args.adaptive_ratio is not None:
        ratio, ratio_source = args.adaptive_ratio, "override"
        adaptive_inference = inference * ratio
        adaptive_source = f"assumed: exact x --adaptive-ratio {ratio}"
    elif not notes["1080p"].one_hand:
        ratio, ratio_source = notes["ratio_clip"].inference_ratio, "ratio_clip"
        adaptive_inference = inference * ratio
        adaptive_source = (
            f"exact x {ratio:.3f}, the inference ratio measured in this run on {args.ratio_clip} ({detection}): "
            f"the 1080p clip is not one-hand footage ({notes['1080p'].one_hand_frames}/{notes['1080p'].frames} "
            "frames one hand)"
        )
    else:
        ratio, ratio_source = notes["1080p"].inference_ratio, "1080p"
        adaptive_inference = measured["adaptive_engine_ms"] - measured["decode_ms"]
        adaptive_source = (
            f"measured on the 1080p clip, {detection}: engine {measured['adaptive_engine_ms']:.1f} CPU ms a frame, "
            f"x {ratio:.3f} of exact; {notes['1080p'].one_hand_frames}/{notes['1080p'].frames} frames one hand"
        )
    billed_cold = args.billed_cold_s if args.billed_cold_s is not None else measured["cold_start_s"]
    a = Assumptions(
        video_s=args.video_s, fps=args.fps, bitrate_mbps=args.bitrate_mbps, segment_s=args.segment_s,
        warmup_ms=args.warmup_ms, memory_mb=args.memory_mb, lambda_speed=args.lambda_speed,
        cold_start_s=args.cold_start_s, billed_cold_s=billed_cold, s3_mb_s=args.s3_mb_s,
        s3_first_byte_s=args.s3_first_byte_s, hop_s=args.hop_s, plan_s=args.plan_s, finish_s=args.finish_s,
        part_write_s=args.part_write_s, sqs_ramp_per_s=args.sqs_ramp_per_s, concurrency=args.concurrency,
    )  # fmt: skip
    exact = model(a, Figures(inference, measured["decode_ms"], measured["index_ms_per_frame"]))
    adaptive = model(a, Figures(adaptive_inference, measured["decode_ms"], measured["index_ms_per_frame"]))
    print(f"measured here ({os.cpu_count()} CPUs; 1080p clip {notes['clip_mb']:.1f} MB, {args.frames} frames):")
    print(f"  decode to RGB      {measured['decode_ms']:.1f} CPU ms a frame")
    print(f"  engine (exact)     {measured['engine_ms']:.1f} CPU ms a frame -> inference {inference:.1f} ms")
    print(f"  adaptive inference {adaptive_inference:.1f} ms a frame ({adaptive_source})")
    for label in ("1080p", "ratio_clip") if "ratio_clip" in notes else ():
        c: Compared = notes[label]
        print(
            f"    {c.clip if label == 'ratio_clip' else '1080p clip':<26} {c.one_hand_frames:>3}/{c.frames} frames one "
            f"hand; decode {c.decode_ms:.1f}, exact {c.exact_ms:.1f}, adaptive {c.adaptive_ms:.1f} CPU ms a frame; "
            f"inference ratio {c.inference_ratio:.3f}"
        )
    print(f"  container index    {measured['index_ms_per_frame'] * 1000:.1f} us a frame to parse")
    print(f"  cold start         {measured['cold_start_s']:.2f} s (imports, bundle, landmarker; billed as init)")
    print("assumptions:")
    for name, value in vars(a).items():
        print(f"  {name:<16} {value}")
    print(f"  vcpus            {a.vcpus:.2f}; price ${GB_S_PRICE}/GB-s, ${REQUEST_PRICE * 1e6:.2f}/million requests")
    for label, row in (("exact", exact), ("adaptive", adaptive)):
        print(
            f"{label:>8}: {row['segments']:.0f} segments x {a.segment_s:g} s on {row['workers']:.0f} workers "
            f"({row['waves']:.0f} wave(s)) at {row['per_frame_ms']:.1f} ms a frame: "
            f"segment {row['segment_s']:.1f} s, probe {row['probe_s']:.2f} s, ramp {row['ramp_s']:.1f} s, "
            f"wall {row['wall_s']:.1f} s; {row['gb_s']:.0f} GB-s = ${row['cost']:.4f} a video, "
            f"${row['cost_per_video_minute']:.5f} a video-minute"
        )
    print("sensitivity (the same measured costs, one assumption changed):")
    for label, change in (
        ("deploy default WorkerConcurrency 20", {"concurrency": 20}),
        ("20 s segments, 20 workers", {"concurrency": 20, "segment_s": 20.0}),
        ("SQS ramp from idle, 5 workers a second", {"sqs_ramp_per_s": 5.0}),
        ("Lambda cores 20 % slower", {"lambda_speed": 1 / 1.2}),
        ("1,769 MB workers (1 vCPU)", {"memory_mb": 1769}),
    ):
        varied = replace(a, **change)  # type: ignore[arg-type]
        e = model(varied, Figures(inference, measured["decode_ms"], measured["index_ms_per_frame"]))
        d = model(varied, Figures(adaptive_inference, measured["decode_ms"], measured["index_ms_per_frame"]))
        print(
            f"  {label:<40} exact {e['wall_s']:5.1f} s ${e['cost_per_video_minute']:.5f}/min; "
            f"adaptive {d['wall_s']:5.1f} s ${d['cost_per_video_minute']:.5f}/min"
        )
    if "ratio_clip" in notes:
        other_ratio = notes["1080p" if ratio_source == "ratio_clip" else "ratio_clip"].inference_ratio
        o = model(a, Figures(inference * other_ratio, measured["decode_ms"], measured["index_ms_per_frame"]))
        other_label = "the 1080p clip's" if ratio_source == "ratio_clip" else f"{Path(args.ratio_clip).stem}'s"
        print(
            f"  {'adaptive at ' + other_label + ' ratio ' + format(other_ratio, '.3f'):<40} "
            f"adaptive {o['wall_s']:5.1f} s ${o['cost_per_video_minute']:.5f}/min"
        )
    print(
        "what carries the figure: the per-frame wall (inference, decode overlapped on the second vCPU, Lambda's "
        "core speed), the segment length (frames per worker, plus the warm-up), the cold start (5 s wall, of "
        "which the init is billed) and that every segment starts at once (concurrency = segments: an SQS event "
        "source that is already scaled out; from idle AWS adds about 5 workers a second, see --sqs-ramp-per-s 5); "
        f"for adaptive, also its inference ratio ({ratio:.3f}, {ratio_source}), which holds for one hand in view "
        "throughout, and once the landmarker of one hand has taken over the seeded hand (at the seed, or later once "
        "it agrees with the landmarker of two): with no hand it saves nothing at --detection-scan-frames 1, with two "
        "it costs a little more"
    )
    print_result(
        {
            "exact_wall_s": round(exact["wall_s"], 2),
            "exact_cost_per_video_minute": round(exact["cost_per_video_minute"], 5),
            "adaptive_wall_s": round(adaptive["wall_s"], 2),
            "adaptive_cost_per_video_minute": round(adaptive["cost_per_video_minute"], 5),
            "segments": exact["segments"],
            "workers": exact["workers"],
            "segment_s": a.segment_s,
            "warmup_ms": a.warmup_ms,
            "inference_ms": round(inference, 2),
            "adaptive_inference_ms": round(adaptive_inference, 2),
            "decode_ms": round(measured["decode_ms"], 2),
            "exact_frame_ms": round(exact["per_frame_ms"], 2),
            "adaptive_frame_ms": round(adaptive["per_frame_ms"], 2),
            "cold_start_s": round(measured["cold_start_s"], 3),
            "probe_s": round(exact["probe_s"], 3),
            "adaptive_measured": int(args.adaptive_ratio is None),
            "adaptive_inference_ratio": round(ratio, 3),
            "adaptive_ratio_from": ratio_source,
            "ratio_clip_inference_ratio": (
                round(notes["ratio_clip"].inference_ratio, 3) if "ratio_clip" in notes else "-"
            ),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
