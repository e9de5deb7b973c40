"""Probe benchmark: the orchestrator's container index (chalicelib.service.container_probe) against the
worker's probe (handpipe_worker.handler.Worker.probe: every packet demuxed through ranged reads), on the
same object in moto S3 on loopback, in one process, so the ratio is this run's.

    .venv/bin/python bench/probe.py [--seconds 120] [--rounds 3]

The portrait clip is looped to --seconds with OpenCV's mp4v (its moov after the mdat, the harder case for
the index) and uploaded once. Each round probes it both ways from scratch (the stored frame index deleted
first); the fastest round of each counts. Bytes are what each read from S3. The worker's cold start is
not in its figure (bench/worker.py reports it): a worker probe costs that on top, on a fresh worker.
Prints a table and `RESULT index_s=... worker_probe_s=... speedup=... index_bytes=... worker_bytes=...`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import data_dir, log, print_result, write_looped
from handpipe_worker.handler import Worker, WorkerSettings

from chalicelib.service.container_probe import probe_container
from chalicelib.shared.contracts import ProbeRequest, frame_index_key
from chalicelib.shared.storage import ObjectStore
from handpipe.local.aws import MotoServer, aws_clients

VIDEO = "videos/one_hand_wave_portrait.mp4"
VIDEO_ID = "vid_" + "0" * 32


class CountingS3:
    """The S3 client, counting the bytes of every GET's body (both probes read through ranged GETs)."""

    def __init__(self, client: object) -> None:
        self._client = client
        self.bytes = 0

    def get_object(self, **kwargs: object) -> dict[str, object]:
        answer: dict[str, object] = self._client.get_object(**kwargs)  # type: ignore[attr-defined]
        length = answer.get("ContentLength")
        self.bytes += int(length) if isinstance(length, int) else 0
        return answer

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="handpipe-probe-") as folder, MotoServer() as moto:
        path = Path(folder) / "looped.mp4"
        fps, width, height = write_looped(data_dir() / VIDEO, path, round(args.seconds * 30))
        s3, _ = aws_clients(moto.endpoint_url)
        s3.create_bucket(Bucket="probe-bench")
        s3.upload_file(str(path), "probe-bench", "videos/looped.mp4")
        size = path.stat().st_size
        log(f"{path.name}: {width}x{height}, {args.seconds:g} s, {size / 1e6:.1f} MB in moto")
        counting = CountingS3(s3)
        store = ObjectStore(counting, "probe-bench")
        etag = s3.head_object(Bucket="probe-bench", Key="videos/looped.mp4")["ETag"].strip('"')
        worker = Worker(counting, None, WorkerSettings(events_queue_url="unused", visibility_s=0))
        request = ProbeRequest(
            job_id="job_" + "0" * 32, video_id=VIDEO_ID, bucket="probe-bench", video_key="videos/looped.mp4"
        )
        timings: dict[str, list[tuple[float, int]]] = {"index": [], "worker": []}
        for _ in range(args.rounds):
            for kind in ("index", "worker"):
                s3.delete_object(Bucket="probe-bench", Key=frame_index_key(VIDEO_ID, etag))
                counting.bytes = 0
                started = time.perf_counter()
                found = (
                    probe_container(store, VIDEO_ID, "videos/looped.mp4") if kind == "index" else worker.probe(request)
                )
                timings[kind].append((time.perf_counter() - started, counting.bytes))
                assert found is not None and found["frame_count"] == round(args.seconds * 30), found
    (index_s, index_bytes), (worker_s, worker_bytes) = min(timings["index"]), min(timings["worker"])
    print(f"{'probe':<34} {'s':>8} {'MB read':>9} {'of object':>10}")
    for label, seconds, read in (
        ("orchestrator (container index)", index_s, index_bytes),
        ("worker (demux, warm)", worker_s, worker_bytes),
    ):
        print(f"{label:<34} {seconds:>8.3f} {read / 1e6:>9.2f} {read / size:>10.3f}")
    print_result(
        {
            "seconds": args.seconds,
            "object_mb": round(size / 1e6, 1),
            "index_s": round(index_s, 4),
            "worker_probe_s": round(worker_s, 4),
            "speedup": round(worker_s / index_s, 1),
            "index_bytes": index_bytes,
            "worker_bytes": worker_bytes,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
