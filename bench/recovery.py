"""Recovery-time benchmark: how long a job takes to get over a lost work item and over a worker killed
mid-segment, with the app's own handlers, the sweeper and real worker processes.

    .venv/bin/python bench/recovery.py [--visibility-s 10] [--max-receives 3] [--margin-s 5]
                                       [--sweep-every-s 5] [--video PATH] [--db-url URL]

One process holds moto (S3, SQS) on loopback, the database (a temporary SQLite file, or --db-url) and
the "jobs" and "events" consumers (app.plan_jobs and app.record_events fed by handpipe.local.pollers),
plus a sweeper thread calling services.sweep every --sweep-every-s, as the schedule does every 5 min in
AWS. Workers are separate processes (this file with --worker) running handpipe_worker's Worker, whose
heartbeat holds a running item --visibility-s at a time; the work queue's own visibility is 900 s, as
Lambda requires of a queue feeding a 900 s function. Two trials, one job each (a single segment):

- killed: a worker is SIGKILLed once the job shows progress; a second worker is already waiting.
  `killed_resume_s` is the time from the kill to that worker receiving the item again (at most the
  heartbeat's visibility; without the heartbeat it would be the queue's 900 s), `killed_done_s` to
  the job SUCCEEDED.
- dropped: the job's work item is deleted from the queue before any worker sees it (a lost message, or
  one that died in the dead-letter queue without a word). `dropped_resend_s` is the time from the drop to
  the sweeper sending it again (silence limit = visibility x max receives + margin, plus up to one sweep
  period), `dropped_done_s` to SUCCEEDED.

Also prints what the same arithmetic gives with the deployed defaults (120 s heartbeat visibility, 3
receives, 60 s margin, a sweep every 300 s). Progress on stderr; a table and one `RESULT key=value ...`
line on stdout. Exit status 1 if a job did not end SUCCEEDED.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# bench/ is sys.path[0] when this file is run as a script.
from common import REPO, data_dir, print_result  # noqa: E402

sys.path.insert(0, str(REPO))  # chalicelib and app.py sit at the project root

from chalicelib.shared.contracts import WORK_ITEM  # noqa: E402

JOB_TIMEOUT_S = 900


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ the worker process


def worker_main(endpoint: str, work_url: str, events_url: str, visibility_s: int) -> None:
    """A worker container: receive one item at a time, handle it as the Lambda would, delete it when done."""
    from handpipe_worker.handler import Worker, WorkerSettings

    from handpipe.local.aws import aws_clients, queue_arn
    from handpipe.local.pollers import LambdaContext

    s3, sqs = aws_clients(endpoint)
    settings = WorkerSettings(events_queue_url=events_url, progress_interval_s=0.5, visibility_s=visibility_s)
    worker = Worker(s3, sqs, settings)
    arn = queue_arn(sqs, work_url)
    while True:
        got = sqs.receive_message(QueueUrl=work_url, WaitTimeSeconds=1, AttributeNames=["All"])
        for message in got.get("Messages", []):
            record = {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
            }
            body = json.loads(message["Body"])
            # Render requests (pictures, sent once a job has succeeded) go through here too.
            print(f"received {body.get('type')} {body.get('job_id')}", flush=True)
            if worker.handle_record(record, LambdaContext("bench-worker", 900)):
                sqs.delete_message(QueueUrl=work_url, ReceiptHandle=message["ReceiptHandle"])


class WorkerProcess:
    """One worker process; `received` is set (with the time) each time it takes an item."""

    def __init__(self, endpoint: str, work_url: str, events_url: str, visibility_s: int) -> None:
        environment = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'worker_image'}"}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", endpoint, work_url, events_url, str(visibility_s)],
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.receipts: dict[str, float] = {}  # job id -> when its work item was first taken
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            words = line.split()
            if words[:2] == ["received", WORK_ITEM]:  # a segment's item, not a render request
                self.receipts.setdefault(words[2], time.monotonic())

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# ------------------------------------------------------------------------------------ the app side


class App:
    """moto, the database, the app's consumers and a sweeper, in this process."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from chalicelib.adapters.database import Database
        from chalicelib.adapters.migrations import upgrade
        from chalicelib.config import Settings
        from chalicelib.runtime import Runtime, use_runtime
        from handpipe.local.aws import MotoServer, aws_clients, provision
        from handpipe.local.pollers import QueuePoller

        self.moto = MotoServer()
        self.endpoint = self.moto.start()
        self.s3, self.sqs = aws_clients(self.endpoint)
        self.resources = provision(
            self.s3,
            self.sqs,
            bucket="bench-recovery",
            prefix="recovery",
            max_receives=args.max_receives,
            visibility_timeouts={"work": 900},
        )
        database = Database.from_url(args.db_url or f"sqlite:///{workdir / 'handpipe.db'}")
        upgrade(database)
        os.environ.setdefault("HANDPIPE_QUEUE_PREFIX", "recovery")
        self.settings = Settings(
            bucket=self.resources.bucket,
            jobs_queue_url=self.resources.queue_urls["jobs"],
            work_queue_url=self.resources.queue_urls["work"],
            db_url="unused: the database is injected",
            segment_ms=None,  # one segment, no probe: each trial is about one work item
            work_visibility_s=args.visibility_s,
            work_max_receives=args.max_receives,
            silence_margin_s=args.margin_s,
            auth="none",
        )
        self.runtime = Runtime(self.settings, s3_client=self.s3, sqs_client=self.sqs, database=database)
        use_runtime(self.runtime)
        import app as chalice_app

        urls = self.resources.queue_urls
        self.pollers = [
            QueuePoller(self.sqs, urls["jobs"], chalice_app.plan_jobs, name="jobs", batch_size=1),
            QueuePoller(self.sqs, urls["events"], chalice_app.record_events, name="events", batch_size=10),
        ]
        for poller in self.pollers:
            poller.start()
        self.sweeps: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, args=(args.sweep_every_s,), daemon=True)
        self._sweeper.start()

    def _sweep(self, every_s: float) -> None:
        from chalicelib.service.orchestration import sweep

        rt = self.runtime
        while not self._stop.wait(every_s):
            report = sweep(rt.videos, rt.jobs, rt.store, rt.jobs_queue, rt.work_queue, rt.settings)
            self.sweeps.append((time.monotonic(), report))

    def submit(self, video: Path) -> str:
        from chalicelib.service.jobs import create_job
        from chalicelib.service.videos import register_video

        key = f"incoming/{time.time_ns()}-{video.name}"
        self.s3.upload_file(str(video), self.resources.bucket, key)
        rt = self.runtime
        registered = register_video(rt.videos, rt.store, rt.settings, {"s3_key": key})
        view, _ = create_job(rt.videos, rt.jobs, rt.store, rt.jobs_queue, rt.settings, registered["id"], {})
        return str(view["id"])

    def job(self, job_id: str) -> Any:
        return self.runtime.jobs.get(job_id)

    def wait(self, what: str, check: Any, timeout_s: float = JOB_TIMEOUT_S) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return time.monotonic()
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    def stop(self) -> None:
        from chalicelib.runtime import use_runtime
        from handpipe.local.pollers import stop_all

        self._stop.set()
        stop_all(self.pollers)
        use_runtime(None)
        self.moto.stop()


# ------------------------------------------------------------------------------------ the trials


def trial_killed(app: App, args: argparse.Namespace) -> dict[str, float]:
    urls = app.resources.queue_urls
    first = WorkerProcess(app.endpoint, urls["work"], urls["events"], args.visibility_s)
    try:
        job_id = app.submit(args.video)
        app.wait("the first worker's progress", lambda: (app.job(job_id).frames_done or 0) > 0)
        second = WorkerProcess(app.endpoint, urls["work"], urls["events"], args.visibility_s)
        try:
            time.sleep(3)  # the second worker is up and polling before the first dies
            first.kill()
            killed = time.monotonic()
            log(f"killed: worker {first.process.pid} killed mid-item")
            resumed = app.wait("the item to come back", lambda: job_id in second.receipts)
            done = app.wait("the job to end", lambda: app.job(job_id).status in ("SUCCEEDED", "FAILED"))
            status = app.job(job_id).status
        finally:
            second.kill()
    finally:
        first.kill()
    if status != "SUCCEEDED":
        raise RuntimeError(f"killed trial: the job ended {status}")
    return {"killed_resume_s": resumed - killed, "killed_done_s": done - killed}


def trial_dropped(app: App, args: argparse.Namespace) -> dict[str, float]:
    urls = app.resources.queue_urls
    job_id = app.submit(args.video)

    def take_item() -> bool:
        got = app.sqs.receive_message(QueueUrl=urls["work"], WaitTimeSeconds=1).get("Messages", [])
        for message in got:
            if json.loads(message["Body"]).get("job_id") == job_id:
                app.sqs.delete_message(QueueUrl=urls["work"], ReceiptHandle=message["ReceiptHandle"])
                return True
            app.sqs.change_message_visibility(
                QueueUrl=urls["work"], ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return False

    dropped = app.wait("the job's work item", take_item, 60)
    log("dropped: the work item was deleted before any worker saw it")
    worker = WorkerProcess(app.endpoint, urls["work"], urls["events"], args.visibility_s)
    try:
        resent = app.wait("the sweeper to send it again", lambda: job_id in worker.receipts)
        done = app.wait("the job to end", lambda: app.job(job_id).status in ("SUCCEEDED", "FAILED"))
    finally:
        worker.kill()
    status = app.job(job_id).status
    if status != "SUCCEEDED":
        raise RuntimeError(f"dropped trial: the job ended {status}")
    return {"dropped_resend_s": resent - dropped, "dropped_done_s": done - dropped}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        endpoint, work_url, events_url, visibility = argv[1:5]
        worker_main(endpoint, work_url, events_url, int(visibility))
        return 0
    data = data_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visibility-s", type=int, default=10, help="the heartbeat's visibility (deployed: 120)")
    parser.add_argument("--max-receives", type=int, default=3)
    parser.add_argument("--margin-s", type=int, default=5, help="the sweeper's silence margin (deployed: 60)")
    parser.add_argument("--sweep-every-s", type=float, default=5.0, help="deployed: 300")
    parser.add_argument("--video", type=Path, default=data / "videos" / "no_hands_road.mp4")
    parser.add_argument("--db-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"no video at {args.video}")
    with tempfile.TemporaryDirectory(prefix="handpipe-recovery-") as workdir:
        app = App(args, Path(workdir))
        try:
            result: dict[str, Any] = {}
            result.update(trial_killed(app, args))
            result.update(trial_dropped(app, args))
        except (RuntimeError, TimeoutError) as error:
            print(f"FAIL: {error}", file=sys.stderr)
            return 1
        finally:
            app.stop()
    silence = app.settings.segment_silence_s
    deployed_silence = 120 * 3 + 60
    print(f"{'trial':<10} {'to resume (s)':>14} {'to SUCCEEDED (s)':>17}  bound")
    print(
        f"{'killed':<10} {result['killed_resume_s']:>14.1f} {result['killed_done_s']:>17.1f}"
        f"  resume <= heartbeat visibility {args.visibility_s} s (the queue alone: 900 s)"
    )
    print(
        f"{'dropped':<10} {result['dropped_resend_s']:>14.1f} {result['dropped_done_s']:>17.1f}"
        f"  resend <= silence {silence} s + one sweep period {args.sweep_every_s:.0f} s"
    )
    print(
        f"deployed defaults: a killed worker's item is back within 120 s; a lost one is sent again within "
        f"{deployed_silence} + 300 = {deployed_silence + 300} s"
    )
    result.update(
        visibility_s=args.visibility_s,
        silence_s=silence,
        sweep_every_s=args.sweep_every_s,
        deployed_killed_bound_s=120,
        deployed_dropped_bound_s=deployed_silence + 300,
    )
    print_result(result, render=lambda v: f"{v:.1f}" if isinstance(v, float) else str(v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
