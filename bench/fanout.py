"""Fan-out benchmark: one long video through the local stack (real API, SQS pollers, worker processes),
with 1 worker and with N, from submit to SUCCEEDED.

    .venv/bin/python bench/fanout.py [--seconds 120] [--segment-s 20] [--workers N] [--video PATH]
                                     [--model full|lite] [--num-hands 2] [--rounds 1]

The portrait clip is looped to --seconds and written once with cv2.VideoWriter (mp4v) into a temporary
directory. For each worker count, a fresh `handpipe.local.stack.LocalStack` (moto, SQLite, the Chalice routes
over HTTP, the queue pollers, N spawned worker processes) is started and warmed up with N short jobs (so
every worker process has imported mediapipe), then the long video is submitted through
`handpipe.client.Client` (register, upload, job) and polled until it has SUCCEEDED. The job is split
into --segment-s segments (plus the app's tracker warm-up before each later one), the video's frame index
read from its moov by the orchestrator (mp4v: at the end of the file), as deployed.

Reports, per worker count: wall time from submit to SUCCEEDED (upload, probe, planning, segments, the
finish), the time from the last part's write to SUCCEEDED (server side: its S3 LastModified to the job's
finished_at), the time after SUCCEEDED until every artifact is written (the merged result, insights,
exports, pictures: off the job's path), the bytes the segments read over the object's size, the warm-up
share of the frames decoded, the CPU the stack used, and the cores other users took meanwhile; then the
speed-up, the pure-CPU calibration of bench/worker.py (the speed-up this machine gives N processes right
now) and efficiency = speed-up / calibration speed-up. The two results must hold the same frames with the same
hand counts (`lost_frames=0`), otherwise the exit status is 1.

Progress on stderr; a table and one `RESULT key=value ...` line on stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
from common import (
    cell,
    data_dir,
    exit_status,
    log,
    machine_busy_s,
    print_header,
    print_result,
    tree_cpu_s,
    write_looped,
)

# bench/ is sys.path[0] when this file is run as a script, so its sibling imports as `worker` (in the
# spawned calibration processes too, which inherit sys.path).
from worker import DEFAULT_VIDEO, calibrate, compare_frames

from chalicelib.shared.contracts import ContractError, ProcessOptions, results_prefix
from handpipe.api_types import Job
from handpipe.client import Client
from handpipe.local.aws import aws_clients
from handpipe.local.stack import LocalStack

POLL_S = 0.25
WARMUP_JOB_TIMEOUT_S = 300
JOB_TIMEOUT_S = 3600


# ------------------------------------------------------------------------------------ accounting


# ------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    workers: int
    wall_s: float  # submit (register + upload + job) to SUCCEEDED seen
    upload_s: float  # register + upload + create the job
    first_frame_s: float | None  # submit to the first frames reported done (probe, planning, download)
    segments_done_s: float | None  # submit to all segments recorded as done
    run_ms: int | None  # the job's own started_at -> finished_at (server side)
    cpu_s: float | None  # this process (API, moto, pollers, merge) and the worker processes
    machine_s: float | None  # CPU the whole machine used meanwhile
    job: Mapping[str, Any]
    result: dict[str, Any]
    warmup_s: float
    last_part_to_succeeded_s: float | None = None  # the last part's S3 write to the job's finished_at (server side)
    artifacts_s: float | None = None  # SUCCEEDED seen to every artifact written (merged result ... pictures), polled
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return len(self.result["frames"])

    @property
    def with_hands(self) -> int:
        return int(self.result["summary"]["frames_with_hands"])

    @property
    def segments(self) -> int:
        return int(self.job["progress"]["segments_total"] or 0)

    @property
    def merge_s(self) -> float | None:
        """All segments seen done to SUCCEEDED seen (to within the polling interval; the job SUCCEEDS in
        the event that records its last segment, so this is mostly 0 now: see last_part_to_succeeded_s)."""
        return None if self.segments_done_s is None else self.wall_s - self.segments_done_s

    @property
    def warmup_share(self) -> float:
        """Of the frames the segments decoded, those not reported: the warm-ups (from the keyframe before
        each) and each segment's one frame past its end."""
        stats = self.result["stats"]
        return 1 - stats["frames_processed"] / stats["frames_decoded"] if stats["frames_decoded"] else 0.0

    @property
    def others_cores(self) -> float | None:
        if self.cpu_s is None or self.machine_s is None or self.wall_s <= 0:
            return None
        return max(0.0, self.machine_s - self.cpu_s) / self.wall_s


def _wait_all(client: Client, job_ids: Sequence[str], timeout_s: float) -> list[Job]:
    return [client.wait(job_id, poll_s=POLL_S, timeout_s=timeout_s) for job_id in job_ids]


def run_stack(
    workers: int, video: Path, warm_video: Path, options: dict[str, Any], segment_ms: int, workdir: Path
) -> Run:
    tag = f"fanout{workers}"
    log(f"{workers} worker(s): starting a local stack (segments of {segment_ms / 1000:g} s)")
    with LocalStack(
        port=0,
        data_dir=workdir / tag,
        workers=workers,
        bucket=f"{tag}-bench",
        prefix=tag,
        segment_ms=segment_ms,
        quiet=True,
    ) as stack:
        assert stack.info is not None and stack.worker_pool is not None
        client = Client(stack.info.api_url, api_key=stack.info.api_key, timeout_s=120)

        # As many short jobs at once as there are workers, so each worker process imports mediapipe and
        # builds its model before the timed job (cold start is reported by bench/worker.py on its own).
        started = time.perf_counter()
        warm = [client.submit(warm_video, options, title=f"warm-up {k}")["id"] for k in range(workers)]
        for job in _wait_all(client, warm, WARMUP_JOB_TIMEOUT_S):
            if job["status"] != "SUCCEEDED":
                raise SystemExit(f"warm-up job {job['id']} ended {job['status']}: {job.get('error')}")
        warmup_s = time.perf_counter() - started
        stack.drain(timeout_s=60)
        log(f"  warm in {warmup_s:.1f} s; worker processes {stack.worker_pool.worker_pids()}")

        log(f"  submitting {video.name} ({video.stat().st_size / 1e6:.1f} MB)")
        busy, cpu = machine_busy_s(), tree_cpu_s()
        t0 = time.perf_counter()
        job_id = client.submit(video, options, title=video.stem)["id"]
        upload_s = time.perf_counter() - t0
        first_frame_s = segments_done_s = None
        last_log = 0.0
        while True:
            job = client.get_job(job_id)
            now = time.perf_counter() - t0
            progress = job["progress"]
            if first_frame_s is None and (progress.get("frames_done") or 0) > 0:
                first_frame_s = now
            total = progress.get("segments_total")
            if segments_done_s is None and total and progress.get("segments_done") == total:
                segments_done_s = now
            if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            if now - last_log >= 10:
                last_log = now
                log(
                    f"  {now:6.1f} s {job['status']}: frames {progress.get('frames_done')}/"
                    f"{progress.get('frames_total')}, segments {progress.get('segments_done')}/{total}"
                )
            if now > JOB_TIMEOUT_S:
                raise SystemExit(f"job {job_id} still {job['status']} after {JOB_TIMEOUT_S} s")
            time.sleep(POLL_S)
        wall_s = time.perf_counter() - t0
        cpu_after, busy_after = tree_cpu_s(), machine_busy_s()
        if job["status"] != "SUCCEEDED":
            raise SystemExit(f"job {job_id} ended {job['status']}: {job.get('error')}")
        log(f"  SUCCEEDED in {wall_s:.1f} s; waiting for its artifacts, then downloading the result")
        artifacts_s = _wait_artifacts(client, job_id) - t0 - wall_s
        result = client.download_result(job_id)
        last_part = _last_part_to_succeeded_s(stack, job)
        stack.drain(timeout_s=60)
    return Run(
        workers=workers,
        wall_s=wall_s,
        upload_s=upload_s,
        first_frame_s=first_frame_s,
        segments_done_s=segments_done_s,
        run_ms=(job.get("timings") or {}).get("run_ms"),
        cpu_s=None if cpu is None or cpu_after is None else cpu_after - cpu,
        machine_s=None if busy is None or busy_after is None else busy_after - busy,
        job=job,
        result=result,
        warmup_s=warmup_s,
        last_part_to_succeeded_s=last_part,
        artifacts_s=artifacts_s,
    )


def _wait_artifacts(client: Client, job_id: str) -> float:
    """When (perf_counter) the result route first says every artifact is written."""
    deadline = time.perf_counter() + JOB_TIMEOUT_S
    while not all(client.result(job_id)["artifacts"].values()):
        if time.perf_counter() > deadline:
            raise SystemExit(f"the artifacts of job {job_id} were not written within {JOB_TIMEOUT_S} s")
        time.sleep(POLL_S)
    return time.perf_counter()


def _last_part_to_succeeded_s(stack: LocalStack, job: Mapping[str, Any]) -> float | None:
    """From the last part's write (its S3 LastModified, ms) to the job's finished_at (the database's clock:
    the same machine): the SQS hop of the last event, its recording, the heads read and the transition."""
    assert stack.info is not None
    s3, _ = aws_clients(stack.info.aws_endpoint_url)
    listed = s3.list_objects_v2(Bucket=stack.info.bucket, Prefix=f"{results_prefix(job['video_id'], job['id'])}parts/")
    written = [o["LastModified"].timestamp() for o in listed.get("Contents", []) if o["Key"].endswith(".json.gz")]
    finished = (job.get("timings") or {}).get("finished_at")
    return None if not written or finished is None else finished / 1000 - max(written)


def _ready(barrier: Any) -> None:
    barrier.wait()


# ----------------------------------------------------------------------------------------- output


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def print_table(runs: Sequence[Run]) -> None:
    header = (
        f"{'workers':>7} {'segments':>8} {'frames':>7} {'w/ hands':>9} {'upload s':>9} {'1st frame s':>11} "
        f"{'last part->OK s':>15} {'wall s':>8} {'artifacts s':>11} {'fps':>7} {'cpu s':>8} {'cores':>6} {'others':>7}"
    )
    print_header(header)
    for run in runs:
        cores = None if run.cpu_s is None else run.cpu_s / run.wall_s
        print(
            f"{run.workers:>7} {run.segments:>8} {run.frames:>7} {run.with_hands:>9} {run.upload_s:>9.1f} "
            f"{cell(run.first_frame_s):>11} {cell(run.last_part_to_succeeded_s, '.2f'):>15} {run.wall_s:>8.1f} "
            f"{cell(run.artifacts_s):>11} {run.frames / run.wall_s:>7.2f} "
            f"{cell(run.cpu_s):>8} {cell(cores, '.2f'):>6} {cell(run.others_cores, '.2f'):>7}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, help=f"clip to loop (default <data>/{DEFAULT_VIDEO})")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the looped input (default 120)")
    parser.add_argument("--segment-s", type=float, default=20.0, help="segment length, seconds (default 20)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="N for the N-worker run (default os.cpu_count())"
    )
    parser.add_argument("--model", choices=("full", "lite"), default="full")
    parser.add_argument("--num-hands", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=1, help="run 1 and N workers this many times, alternating; keep each one's best"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.segment_s <= 0 or args.seconds < args.segment_s:
        parser.error("--segment-s must be positive and at most --seconds")
    try:
        args.options = ProcessOptions.from_dict({"model": args.model, "num_hands": args.num_hands}).to_dict()
    except ContractError as exc:
        parser.error(str(exc))
    args.video = args.video or data_dir() / DEFAULT_VIDEO
    if not args.video.is_file():
        parser.error(f"{args.video} does not exist (set HANDPIPE_TEST_DATA to the shared/data folder or pass --video)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.workers
    segment_ms = round(args.segment_s * 1000)
    log(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    capture = cv2.VideoCapture(str(args.video))
    source_fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    capture.release()
    frames = round(args.seconds * source_fps)

    with tempfile.TemporaryDirectory(prefix="handpipe-fanout-") as tmp:
        workdir = Path(tmp)
        video = workdir / f"looped_{round(args.seconds)}s.mp4"
        log(f"writing {frames} frames of {args.video.name} (looped) to {video} with mp4v")
        fps, width, height = write_looped(args.video, video, frames)
        size_mb = video.stat().st_size / 1e6
        log(f"  {width}x{height} {fps:.2f} fps, {frames / fps:.1f} s, {size_mb:.1f} MB")

        all_runs: dict[int, list[Run]] = {1: [], n: []}
        for round_ in range(args.rounds):
            order = (1, n) if round_ % 2 == 0 else (n, 1)  # alternate, so a load change hurts both alike
            for w in order:
                if args.rounds > 1:
                    log(f"round {round_ + 1}/{args.rounds}")
                all_runs[w].append(run_stack(w, video, args.video, args.options, segment_ms, workdir))
        # The least disturbed round of each: other users' load only ever slows a run down.
        runs = [min(all_runs[w], key=lambda run: run.wall_s) for w in (1, n)]

        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(n + 1)
        # Wait until every pool process has started and imported this module, as bench/worker.py's pool
        # has when it calibrates; otherwise the first timing holds a process start.
        with ctx.Pool(n, initializer=_ready, initargs=(barrier,)) as pool:
            barrier.wait(timeout=300)
            calibration_speedup, cal_1, cal_n = calibrate(pool, n)

    one, many = runs
    diff = compare_frames(one.result, many.result)
    # Every round must give the same detections, not only the two kept.
    drift = [compare_frames(one.result, run.result) for w in (1, n) for run in all_runs[w]]
    drift_lost = sum(d["lost_frames"] + d["hand_count_differs"] + d["extra_frames"] for d in drift)
    same_indices = [f["index"] for f in one.result["frames"]] == [f["index"] for f in many.result["frames"]]
    same_counts = [len(f["hands"]) for f in one.result["frames"]] == [len(f["hands"]) for f in many.result["frames"]]
    speedup = one.wall_s / many.wall_s
    work_efficiency = None if not one.cpu_s or not many.cpu_s else one.cpu_s / many.cpu_s
    efficiency = speedup / calibration_speedup if calibration_speedup else 0.0
    stats = one.result["stats"]
    inference_ms = 1000 * stats["inference_s"] / max(1, stats["frames_processed"])

    print()
    print(
        f"input: {args.video.name} looped to {frames} frames ({width}x{height}, {fps:.0f} fps, "
        f"{frames / fps:.0f} s, mp4v, {size_mb:.1f} MB), segments of {args.segment_s:g} s, "
        f"options {args.options['model']} num_hands={args.options['num_hands']}; os.cpu_count()={os.cpu_count()}"
    )
    print()
    print_table(runs)
    print()
    for run in runs:
        s = run.result["stats"]
        print(
            f"{run.workers} worker(s): job run_ms {run.run_ms} (server side, started -> finished); frames decoded "
            f"{s['frames_decoded']}, inference {s['inference_s']:.1f} s, decode {s['decode_s']:.1f} s "
            f"(summed over segments); warm-up before timing {run.warmup_s:.1f} s (not timed); "
            f"bytes read from S3 {s.get('bytes_read', 0) / 1e6:.1f} MB over {run.segments} segment(s) "
            f"= {s.get('bytes_read', 0) / (size_mb * 1e6):.2f}x the object (ranged reads); warm-up share of "
            f"frames decoded {run.warmup_share:.3f} ({s['frames_decoded'] - s['frames_processed']} of "
            f"{s['frames_decoded']} decoded and not reported)"
        )
    print(
        f"speed-up {n} workers over 1: {speedup:.2f}x; calibration (pure CPU) speed-up: {calibration_speedup:.2f}x "
        f"({cal_1:.2f} s vs {cal_n:.2f} s); efficiency {efficiency:.2f}"
    )
    print(
        f"1 vs {n} workers: {diff}; same frame indices {same_indices}, same hand counts {same_counts}; "
        f"inference per processed frame (1 worker) {inference_ms:.1f} ms"
    )
    if args.rounds > 1:
        for w in (1, n):
            walls = ", ".join(f"{run.wall_s:.1f}" for run in all_runs[w])
            print(f"{w} worker(s) wall s by round: {walls}; differences from the kept 1-worker result: {drift_lost}")
    print(
        f"work efficiency (1-worker CPU s / {n}-worker CPU s): {cell(work_efficiency, '.2f')}; "
        f"inference is timed per detect call, so it grows with contention"
    )
    busiest = max((run.others_cores or 0.0) for run in runs)
    if busiest > 0.25:
        print(
            f"note: other processes used up to {busiest:.2f} cores during the timed runs (column 'others'): "
            "wall-clock figures are disturbed"
        )
    print()
    result = {
        "wall_1": round(one.wall_s, 2),
        "wall_n": round(many.wall_s, 2),
        "speedup": round(speedup, 3),
        "calibration_speedup": round(calibration_speedup, 3),
        "efficiency": round(efficiency, 3),
        "lost_frames": diff["lost_frames"],
        "segments": many.segments,
        "workers": n,
        "frames": many.frames,
        "with_hands_1": one.with_hands,
        "with_hands_n": many.with_hands,
        "hand_count_differs": diff["hand_count_differs"],
        "work_efficiency": None if work_efficiency is None else round(work_efficiency, 3),
        "cpu_s_1": None if one.cpu_s is None else round(one.cpu_s, 1),
        "cpu_s_n": None if many.cpu_s is None else round(many.cpu_s, 1),
        "upload_s_1": round(one.upload_s, 2),
        "upload_s_n": round(many.upload_s, 2),
        "merge_s_1": None if one.merge_s is None else round(one.merge_s, 2),
        "merge_s_n": None if many.merge_s is None else round(many.merge_s, 2),
        "last_part_to_succeeded_s_1": _round(one.last_part_to_succeeded_s, 3),
        "last_part_to_succeeded_s_n": _round(many.last_part_to_succeeded_s, 3),
        "artifacts_s_1": _round(one.artifacts_s, 2),
        "artifacts_s_n": _round(many.artifacts_s, 2),
        "warmup_share_1": round(one.warmup_share, 4),
        "warmup_share_n": round(many.warmup_share, 4),
        "others_cores_1": None if one.others_cores is None else round(one.others_cores, 2),
        "others_cores_n": None if many.others_cores is None else round(many.others_cores, 2),
        "bytes_read_1": one.result["stats"].get("bytes_read"),
        "bytes_read_n": many.result["stats"].get("bytes_read"),
        "bytes_ratio_1": round(one.result["stats"].get("bytes_read", 0) / (size_mb * 1e6), 3),
        "bytes_ratio_n": round(many.result["stats"].get("bytes_read", 0) / (size_mb * 1e6), 3),
        "seconds": round(frames / fps, 1),
        "segment_s": args.segment_s,
        "rounds": args.rounds,
        "model": args.options["model"],
        "num_hands": args.options["num_hands"],
    }
    print_result(result)

    failures = []
    if diff["lost_frames"] or not same_indices or not same_counts:
        failures.append(f"the {n}-worker result differs from the 1-worker result: {diff}")
    if drift_lost:
        failures.append(f"rounds disagree with each other: {drift}")
    return exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
