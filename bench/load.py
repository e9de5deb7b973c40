"""Load test of the REST API and its database: N concurrent clients send a fixed count of requests of a realistic
mix to a local stack (started in its own process) or an --api-url; prints req/s, latencies and DB connections."""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import secrets
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# bench/ is sys.path[0] when this file is run as a script.
from common import SAMPLE_CLIP, result_line
from common import log as common_log

from handpipe.client import ApiError, Client

SAMPLE = SAMPLE_CLIP
CLIP_FRAMES = 15  # the sample's first frames: a real clip whose one job runs in about a second

# kind -> share of the requests
MIX: dict[str, float] = {
    "list_videos": 0.30,
    "register_video": 0.15,
    "get_video": 0.25,
    "trigger_job": 0.10,
    "get_job": 0.20,
}
EXPECTED_STATUS: dict[str, set[int]] = {
    "list_videos": {200},
    "register_video": {201},
    "get_video": {200},
    "trigger_job": {200, 202},  # 202 creates the job (only during setup), 200 is the idempotent replay
    "get_job": {200},
}
SHOW_ERRORS = 10
USAGE = """
The mix, per request: list videos (each client walks the pages with next_token), register a video (POST /videos
with size_bytes), get a video, trigger a job on the uploaded clip (POST /videos/{id}/jobs, always with the same
client_token: the job is created once during setup, and every timed trigger is answered 200 with it, so the
workers are not flooded), get the job. Ends with one `RESULT key=value ...` line; exits 1 if any request failed or
got an unexpected status, after printing the first ones. See bench/README.md, "Load".
"""


def log(message: str) -> None:
    common_log(message, tag="load")


# --------------------------------------------------------------------------------------------- HTTP


class Api:
    """One keep-alive HTTP connection to the API, as a real client (or a browser) holds; not thread-safe."""

    def __init__(self, api_url: str, api_key: str, timeout_s: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(api_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._conn = kind(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, parsed JSON body); a broken connection is closed (the next call reconnects) and raised."""
        headers = {"x-api-key": self.api_key, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, self.base + path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw[:300].decode(errors="replace")
        return response.status, parsed


# --------------------------------------------------------------------------------------------- the stack


def short_clip(source: Path, target: Path, frames: int = CLIP_FRAMES) -> Path:
    """The first `frames` frames of `source`, re-encoded with mp4v."""
    import cv2

    capture = cv2.VideoCapture(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    writer: Any = None
    for _ in range(frames):
        ok, image = capture.read()
        if not ok:
            break
        if writer is None:
            height, width = image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")  # type: ignore[attr-defined]
            writer = cv2.VideoWriter(str(target), fourcc, fps, (width, height))
        writer.write(image)
    capture.release()
    if writer is None:
        raise SystemExit(f"cannot read a frame of {source}")
    writer.release()
    return target


def ensure_mysql_database(db_url: str) -> str:
    """Create the URL's database if it does not exist; returns its name."""
    import pymysql

    parts = urllib.parse.urlsplit(db_url)
    name = urllib.parse.unquote(parts.path.lstrip("/"))
    if not name or "`" in name:
        raise SystemExit(f"--db-url must name a database: mysql+pymysql://user:password@host:port/NAME, not {name!r}")
    conn = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=urllib.parse.unquote(parts.username or "root"),
        password=urllib.parse.unquote(parts.password or ""),
        connect_timeout=5,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return name


def _serve_stack(pipe: Connection, options: dict[str, Any]) -> None:
    """Runs in its own process, so that the API's threads do not share a GIL with the clients'."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from handpipe.local.stack import LocalStack

    stack = LocalStack(port=0, quiet=True, **options)
    try:
        info = stack.start()
        pipe.send({"api_url": info.api_url, "api_key": info.api_key, "db_url": info.db_url})
        pipe.recv()  # until the parent says stop (or goes away)
    except EOFError:
        pass
    except BaseException as error:
        pipe.send({"error": repr(error)})
        raise
    finally:
        stack.stop()


class StackProcess:
    def __init__(self, db_url: str | None, data_dir: Path, workers: int) -> None:
        tag = secrets.token_hex(4)
        self.options = {
            "db_url": db_url,
            "data_dir": str(data_dir),
            "workers": workers,
            "bucket": f"handpipe-load-{tag}",
            "prefix": f"load-{tag}",
        }
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve_stack, args=(child, self.options), name="handpipe-stack")

    def start(self, timeout_s: float = 180) -> dict[str, str]:
        self._process.start()
        if not self._pipe.poll(timeout_s):
            self.stop()
            raise SystemExit(f"the local stack did not start within {timeout_s:.0f} s")
        try:
            info: dict[str, str] = self._pipe.recv()
        except EOFError:
            self.stop()
            raise SystemExit(f"the local stack's process ended at start (exit code {self._process.exitcode})") from None
        if "error" in info:
            raise SystemExit(f"the local stack did not start: {info['error']}")
        return info

    def stop(self) -> None:
        if self._process.is_alive():
            try:
                self._pipe.send("stop")
            except OSError:
                pass
            self._process.join(60)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)


# --------------------------------------------------------------------------------------------- DB sampling


@dataclass
class DbSampler:
    """Samples MariaDB/MySQL connection counts in a thread while the load runs."""

    db_url: str
    database: str
    interval_s: float = 0.02
    threads_connected_peak: int = 0
    threads_connected_before: int = 0
    database_connections_peak: int = 0
    max_used_connections: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _connect(self) -> Any:
        import pymysql

        parts = urllib.parse.urlsplit(self.db_url)
        return pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=urllib.parse.unquote(parts.username or "root"),
            password=urllib.parse.unquote(parts.password or ""),
            connect_timeout=5,
            autocommit=True,
        )

    def _sample(self, cursor: Any) -> None:
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        threads = int(cursor.fetchone()[1]) - 1  # not this sampler's own connection
        # This sampler selects no database, so every connection counted here is the API's (or another client's
        # of the same database).
        cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", (self.database,))
        ours = int(cursor.fetchone()[0])
        self.threads_connected_peak = max(self.threads_connected_peak, threads)
        self.database_connections_peak = max(self.database_connections_peak, ours)
        self.samples += 1

    def start(self) -> None:
        conn = self._connect()
        with conn.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            self.threads_connected_before = int(cursor.fetchone()[1]) - 1

        def run() -> None:
            try:
                with conn.cursor() as cursor:
                    while not self._stop.is_set():
                        self._sample(cursor)
                        self._stop.wait(self.interval_s)
                    self._sample(cursor)
                    cursor.execute("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
                    self.max_used_connections = int(cursor.fetchone()[1])
            finally:
                conn.close()

        self._thread = threading.Thread(target=run, name="db-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


# --------------------------------------------------------------------------------------------- the load


@dataclass
class Shared:
    """What the clients share: the schedule, the ids they read, the results."""

    schedule: list[str]
    video_id: str  # the uploaded clip
    job_id: str  # its job, triggered during setup
    client_token: str
    size_bytes: int
    video_ids: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_slot: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def take(self) -> str | None:
        with self.lock:
            if self.next_slot >= len(self.schedule):
                return None
            kind = self.schedule[self.next_slot]
            self.next_slot += 1
            return kind


def make_schedule(count: int, seed: int) -> list[str]:
    """Exactly `count` request kinds in the MIX's proportions, in a seeded random order."""
    kinds = list(MIX)
    shares = [round(MIX[kind] * count) for kind in kinds]
    shares[0] += count - sum(shares)
    schedule = [kind for kind, share in zip(kinds, shares, strict=True) for _ in range(share)]
    random.Random(seed).shuffle(schedule)
    return schedule


class LoadClient:
    def __init__(self, number: int, api: Api, shared: Shared, seed: int) -> None:
        self.number = number
        self.api = api
        self.shared = shared
        self.random = random.Random(seed * 1000 + number)
        self.next_token: str | None = None  # where this client is in its walk through the video pages
        self.registered = 0

    def request(self, kind: str) -> tuple[int, Any]:
        shared = self.shared
        if kind == "list_videos":
            path = "/videos?limit=20"
            if self.next_token:
                path += "&next_token=" + urllib.parse.quote(self.next_token)
            status, body = self.api.call("GET", path)
            self.next_token = body.get("next_token") if status == 200 and isinstance(body, dict) else None
            return status, body
        if kind == "register_video":
            self.registered += 1
            name = f"load-{self.number}-{self.registered}.mp4"
            body = {"title": name, "filename": name, "content_type": "video/mp4", "size_bytes": shared.size_bytes}
            status, answer = self.api.call("POST", "/videos", body)
            if status == 201 and isinstance(answer, dict):
                with shared.lock:
                    shared.video_ids.append(answer["id"])
            return status, answer
        if kind == "get_video":
            with shared.lock:
                video_id = self.random.choice(shared.video_ids)
            return self.api.call("GET", f"/videos/{video_id}")
        if kind == "trigger_job":
            body = {"options": {"num_hands": 2}, "client_token": shared.client_token}
            return self.api.call("POST", f"/videos/{shared.video_id}/jobs", body)
        if kind == "get_job":
            return self.api.call("GET", f"/jobs/{shared.job_id}")
        raise ValueError(kind)

    def run(self, start: threading.Barrier) -> None:
        shared = self.shared
        try:  # connect and warm up before the clock starts, so that the 50 connects do not queue on the backlog
            self.api.call("GET", "/videos?limit=1")
        except Exception as error:  # noqa: BLE001 - reported like any failed request
            self._error("warm-up", None, repr(error))
        start.wait()
        while (kind := shared.take()) is not None:
            began = time.perf_counter()
            try:
                status, body = self.request(kind)
            except Exception as error:  # noqa: BLE001
                elapsed = time.perf_counter() - began
                self._record(kind, elapsed, 0)
                self._error(kind, None, repr(error))
                continue
            elapsed = time.perf_counter() - began
            self._record(kind, elapsed, status)
            if status not in EXPECTED_STATUS[kind]:
                self._error(kind, status, json.dumps(body)[:300] if not isinstance(body, str) else body)
        self.api.close()

    def _record(self, kind: str, elapsed_s: float, status: int) -> None:
        with self.shared.lock:
            self.shared.latencies[kind].append(elapsed_s)
            self.shared.statuses[(kind, status)] += 1

    def _error(self, kind: str, status: int | None, detail: str) -> None:
        with self.shared.lock:
            self.shared.error_count += 1
            if len(self.shared.errors) < SHOW_ERRORS:
                self.shared.errors.append(f"{kind}: {'no answer' if status is None else f'HTTP {status}'}: {detail}")


def setup(api: Api, clip: Path, run_tag: str) -> Shared:
    """Upload the clip once, trigger its job with the run's client_token and wait for it to finish, so that the
    timed requests find a finished job and the worker is idle while they run."""
    client = Client(f"{'https' if api.https else 'http'}://{api.host}:{api.port}{api.base}", api_key=api.api_key)
    video = client.register_video(clip, title=f"load {run_tag}")
    client.upload(video, clip)
    token = f"load-{run_tag}"
    job = client.create_job(video["id"], {"num_hands": 2}, client_token=token)
    finished = client.wait(job["id"], poll_s=0.2, timeout_s=300)
    if finished["status"] != "SUCCEEDED":
        raise SystemExit(f"the setup job did not succeed: {finished.get('error')}")
    return Shared(
        schedule=[],
        video_id=video["id"],
        job_id=job["id"],
        client_token=token,
        size_bytes=clip.stat().st_size,
        video_ids=[video["id"]],
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of `values`, which must not be empty."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_load(api_url: str, api_key: str, shared: Shared, clients: int, seed: int) -> float:
    """Runs the schedule on `clients` threads; returns the wall-clock seconds from the start barrier to the end."""
    start = threading.Barrier(clients + 1)
    workers = [LoadClient(n, Api(api_url, api_key), shared, seed) for n in range(clients)]
    threads = [threading.Thread(target=w.run, args=(start,), name=f"client-{w.number}") for w in workers]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def report(
    shared: Shared, wall_s: float, clients: int, db_line: str, db_peak: str, out: Callable[[str], None] = print
) -> int:
    total = sum(len(v) for v in shared.latencies.values())
    everything = [x for v in shared.latencies.values() for x in v]
    out(f"requests {total} by {clients} clients in {wall_s:.2f} s: {total / wall_s:.1f} req/s")
    out(f"{'kind':<16}{'count':>7}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}  statuses")
    for kind in [*MIX, "all"]:
        values = everything if kind == "all" else shared.latencies.get(kind, [])
        if not values:
            continue
        statuses = ", ".join(f"{s}x{n}" for (k, s), n in sorted(shared.statuses.items()) if kind in (k, "all"))
        if kind == "all":
            statuses = ""
        out(
            f"{kind:<16}{len(values):>7}{percentile(values, 50) * 1000:>10.1f}{percentile(values, 90) * 1000:>10.1f}"
            f"{percentile(values, 99) * 1000:>10.1f}{max(values) * 1000:>10.1f}  {statuses}"
        )
    out(f"errors {shared.error_count}" + (f" (the first {len(shared.errors)}:)" if shared.errors else ""))
    for line in shared.errors:
        out(f"  {line}")
    if shared.error_count:
        print(f"FAIL: {shared.error_count} request(s) failed or got an unexpected status", file=sys.stderr)
    out(f"db connections at peak: {db_line}")
    p50 = percentile(everything, 50) * 1000 if everything else 0.0
    p99 = percentile(everything, 99) * 1000 if everything else 0.0
    out(
        result_line(
            {
                "requests": total,
                "clients": clients,
                "rps": f"{total / wall_s:.1f}",
                "p50_ms": f"{p50:.1f}",
                "p99_ms": f"{p99:.1f}",
                "errors": shared.error_count,
                "db_connections_peak": db_peak,
            }
        )
    )
    return 1 if shared.error_count else 0


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - a bench's argument handling and report, read top to bottom
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients, one thread each (default 50)")
    parser.add_argument("--requests", type=int, default=2000, help="requests in all, shared out (default 2000)")
    parser.add_argument("--api-url", help="an API already running (default: start a local stack in a process)")
    parser.add_argument("--api-key", help="its key (x-api-key); needed with --api-url")
    parser.add_argument(
        "--db-url",
        help="the local stack's database, mysql+pymysql://root:@127.0.0.1:3306/NAME (created if missing) or "
        "sqlite:///PATH; with --api-url: the API's MySQL database, only to sample its connections",
    )
    parser.add_argument("--workers", type=int, default=1, help="the local stack's worker processes (default 1)")
    parser.add_argument("--clip", type=Path, help=f"video to upload (default: the sample's first {CLIP_FRAMES} frames)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request order and the ids read")
    fair = parser.add_argument_group("--fairness: two owners, one flooding (bench/fairness.py; in-process)")
    fair.add_argument("--fairness", action="store_true", help="run the fairness scenario instead of the HTTP load")
    fair.add_argument("--flood-jobs", type=int, default=40, help="the flooding owner's jobs (default 40)")
    fair.add_argument("--quiet-jobs", type=int, default=3, help="the other owner's jobs, queued after (default 3)")
    fair.add_argument("--segments", type=int, default=30, help="segments per job (default 30)")
    fair.add_argument("--capacity", type=int, default=20, help="worker slots, HANDPIPE_MAX_IN_FLIGHT (default 20)")
    args = parser.parse_args(argv)
    if args.fairness:
        import fairness  # bench/ is sys.path[0] when this file is run as a script

        if min(args.flood_jobs, args.quiet_jobs, args.segments, args.capacity) < 1:
            parser.error("--flood-jobs, --quiet-jobs, --segments and --capacity must be at least 1")
        if args.db_url and args.db_url.startswith(("mysql://", "mysql+pymysql://")):
            ensure_mysql_database(args.db_url)
        return fairness.main(args, log)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be at least 1")
    if args.api_url and not args.api_key:
        parser.error("--api-url needs --api-key")

    mysql = bool(args.db_url) and args.db_url.startswith(("mysql://", "mysql+pymysql://"))
    database = ensure_mysql_database(args.db_url) if mysql else None
    run_tag = secrets.token_hex(4)
    with tempfile.TemporaryDirectory(prefix="handpipe-load-") as tmp:
        clip = args.clip or short_clip(SAMPLE, Path(tmp) / "clip.mp4")
        stack: StackProcess | None = None
        if args.api_url:
            api_url, api_key = args.api_url.rstrip("/"), args.api_key
        else:
            stack = StackProcess(args.db_url, Path(tmp) / "stack", args.workers)
            log(f"starting a local stack ({args.db_url or 'SQLite'}, {args.workers} worker process(es))")
            info = stack.start()
            api_url, api_key = info["api_url"], info["api_key"]
        try:
            log(f"API {api_url}: uploading {clip.name} and running its job once")
            try:
                shared = setup(Api(api_url, api_key), clip, run_tag)
            except (ApiError, ConnectionError, TimeoutError) as error:
                print(f"FAIL: the setup (register, upload, one job) failed: {error}", file=sys.stderr)
                return 1
            shared.schedule = make_schedule(args.requests, args.seed)
            sampler = DbSampler(args.db_url, database) if mysql and database else None
            if sampler is not None:
                sampler.start()
            log(f"{args.requests} requests from {args.clients} clients")
            wall_s = run_load(api_url, api_key, shared, args.clients, args.seed)
            if sampler is not None:
                sampler.stop()
        finally:
            if stack is not None:
                stack.stop()
    if sampler is not None:
        db_peak = str(sampler.database_connections_peak)
        db_line = (
            f"{sampler.database_connections_peak} to database {database} (information_schema.PROCESSLIST, "
            f"{sampler.samples} samples); Threads_connected server-wide {sampler.threads_connected_before} before, "
            f"{sampler.threads_connected_peak} at peak; Max_used_connections (since the server started) "
            f"{sampler.max_used_connections}"
        )
    elif args.api_url:
        db_peak, db_line = "unknown", "unknown (pass --db-url mysql+pymysql://... to sample the API's MySQL database)"
    else:
        db_peak, db_line = "1", "1 (SQLite, one connection per process)"
    return report(shared, wall_s, args.clients, db_line, db_peak)


if __name__ == "__main__":
    sys.exit(main())
