"""The `handpipe` command: run the engine on a file, run the local stack, run the demo, and talk to
the API (local or deployed)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import ProgressBar, format_summary

DEFAULT_API_URL = "http://127.0.0.1:8000"
SAMPLE_VIDEO = Path(__file__).resolve().parent / "samples" / "one_hand_wave_portrait.mp4"


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 1 (2 for usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _add_process_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("processing options")
    group.add_argument("--num-hands", type=int, help="hands to look for, 1-4 (default 2)")
    group.add_argument("--min-detection-confidence", type=float, help="0-1 (default 0.5)")
    group.add_argument("--min-presence-confidence", type=float, help="0-1 (default 0.5)")
    group.add_argument("--min-tracking-confidence", type=float, help="0-1 (default 0.5)")
    group.add_argument("--model", choices=["full", "lite"], help="full (default) or lite: faster, a little less exact")
    group.add_argument(
        "--model-uri", help="your own hand_landmarker.task or gesture_recognizer.task (path, or s3:// for jobs)"
    )
    group.add_argument("--sample-fps", type=float, help="process at most this many frames a second (default: all)")
    group.add_argument("--start-ms", type=int, help="start of the time range to process")
    group.add_argument("--end-ms", type=int, help="end of the time range to process")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = [
        "num_hands",
        "min_detection_confidence",
        "min_presence_confidence",
        "min_tracking_confidence",
        "model",
        "model_uri",
        "sample_fps",
        "start_ms",
        "end_ms",
    ]
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    uri = options.get("model_uri")
    if uri and not uri.startswith("s3://") and Path(uri).expanduser().is_file():
        # the local stack's workers run in other processes, possibly from another directory
        options["model_uri"] = str(Path(uri).expanduser().resolve())
    return options


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    return Client(args.api_url, api_key=args.api_key)


# ------------------------------------------------------------------------------------ process


def cmd_process(args: argparse.Namespace) -> int:
    from handpipe_worker.engine import VideoDecodeError, process_video
    from handpipe_worker.models import ModelError

    from chalicelib.shared.contracts import ContractError, ProcessOptions
    from chalicelib.shared.results import to_gzip

    video = Path(args.video)
    try:
        options = ProcessOptions.from_dict(_options(args))
    except ContractError as error:
        raise CliError(f"invalid options: {error}", 2) from None
    out = Path(args.out) if args.out else Path(video.stem + ".hands.json")
    bar = ProgressBar(f"{video.name}")
    try:
        result = process_video(video, options, progress=bar.update)
    except VideoDecodeError as error:
        raise CliError(f"cannot process {video}: {error.reason}") from None
    except ModelError as error:
        raise CliError(str(error)) from None
    finally:
        bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".gz":
        out.write_bytes(to_gzip(result))
    else:
        out.write_text(json.dumps(result))
    if not result["decode"]["complete"]:
        print(f"warning: {result['decode']['error']}", file=sys.stderr)
    from chalicelib.shared.insights import analyze

    print(format_summary(result["summary"], result["video"], result["stats"], str(out), analyze(result)))
    return 0


# ------------------------------------------------------------------------------------ database


def cmd_db(args: argparse.Namespace) -> int:
    from chalicelib.adapters.database import Database, redacted_url
    from chalicelib.adapters.migrations import LATEST_VERSION, current_version, upgrade

    url = args.db_url or os.environ.get("HANDPIPE_DB_URL") or f"sqlite:///{Path('.handpipe/handpipe.db').resolve()}"
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        database = Database.from_url(url)
    except ValueError as error:
        raise CliError(str(error), 2) from None
    shown = redacted_url(url)
    if args.db_command == "upgrade":
        applied = upgrade(database)
        print(f"{shown}: applied migrations {applied}" if applied else f"{shown}: already at version {LATEST_VERSION}")
    else:
        version = current_version(database)
        state = "up to date" if version == LATEST_VERSION else "run `handpipe db upgrade`"
        print(f"{shown}: schema version {version} of {LATEST_VERSION} ({state})")
    return 0


# ------------------------------------------------------------------------------------ local stack


def _start_stack(args: argparse.Namespace, port: int, moto_port: int = 0, quiet: bool = False) -> Any:
    from .stack import LocalStack

    try:
        stack = LocalStack(
            port=port,
            moto_port=moto_port,
            db_url=args.db_url,
            workers=args.workers,
            data_dir=args.data_dir,
            quiet=quiet and not args.verbose,
            segment_ms=args.segment_ms,
        )
    except ValueError as error:  # HANDPIPE_API_KEYS that parse_api_keys refuses
        raise CliError(f"HANDPIPE_API_KEYS: {error}") from None
    try:
        stack.start()
    except OSError as error:
        raise CliError(f"cannot start the local stack on port {port}: {error}; pick another with --port") from None
    return stack


def cmd_up(args: argparse.Namespace) -> int:
    from chalicelib.adapters.database import redacted_url

    stack = _start_stack(args, args.port, args.moto_port)
    info = stack.info
    print(f"handpipe API      {info.api_url}")
    print(f"S3 and SQS (moto) {info.aws_endpoint_url}  bucket {info.bucket}")
    print(f"database          {redacted_url(info.db_url)}")
    print(f"workers           {info.workers} process(es)")
    print(f"kept in           {Path(args.data_dir).resolve()}  ({stack.restored} stored object(s) put back)")
    if stack.resumed is not None and any(vars(stack.resumed).values()):
        print(f"resumed jobs      {stack.resumed}")
    print(f"API key           {info.api_key}   (send it as x-api-key)")
    owners = sorted(set(stack.api_keys.values()))
    if len(stack.api_keys) > 1:
        print(
            f"                  and {len(stack.api_keys) - 1} more from HANDPIPE_API_KEYS; owners {', '.join(owners)}"
        )
    print(f"try:  export HANDPIPE_API_KEY={info.api_key}")
    print(f"      handpipe demo --api-url {info.api_url}    (Ctrl-C stops the stack)", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    print("stopping...", file=sys.stderr)
    stack.stop()
    return 0


def _api_answers(url: str) -> bool:
    from .client import Client

    try:
        Client(url, timeout_s=2).health()
        return True
    except Exception:
        return False


def cmd_demo(args: argparse.Namespace) -> int:
    video = Path(args.video) if args.video else SAMPLE_VIDEO
    if not video.is_file():
        raise CliError(f"{video} does not exist")
    stack = None
    if args.api_url_given or _api_answers(args.api_url):
        api_url = args.api_url
        print(f"using the handpipe API at {api_url}")
    else:
        print("starting a local stack (moto S3/SQS, SQLite, chalice local, worker processes)...")
        stack = _start_stack(args, 0, quiet=True)
        api_url = stack.info.api_url
        args.api_key = stack.info.api_key
        print(f"local stack up: API at {api_url}")
    try:
        from .client import Client

        client = Client(api_url, api_key=args.api_key)
        # a stack started for the demo stops when it ends, so there is no viewer to point to then
        return _submit_and_report(client, video, _options(args), wait=True, out=args.out, viewer=stack is None)
    finally:
        if stack is not None:
            stack.stop()


def _submit_and_report(
    client: Any, video: Path, options: dict[str, Any], wait: bool, out: str | None, viewer: bool = True
) -> int:
    from .client import ApiError

    try:
        registered = client.register_video(video)
        print(f"registered {video.name} as video {registered['id']}; uploading {video.stat().st_size / 1e6:.1f} MB")
        client.upload(registered, video)
        job = client.create_job(registered["id"], options)
    except ApiError as error:
        raise CliError(f"the API refused: {error.message}") from None
    print(f"job {job['id']} {job['status']}")
    if not wait:
        return 0
    bar = ProgressBar("processing")

    def show(state: dict[str, Any]) -> None:
        progress = state["progress"]
        bar.update(progress["frames_done"], progress["frames_total"])

    try:
        job = client.wait(job["id"], on_progress=show, poll_s=0.5)
    finally:
        bar.close()
    return _report_job(client, job, out, viewer)


def _report_job(client: Any, job: dict[str, Any], out: str | None, viewer: bool = True) -> int:
    if job["status"] == "FAILED":
        error = job.get("error") or {}
        print(f"job {job['id']} FAILED: {error.get('message')} ({error.get('code')})", file=sys.stderr)
        return 1
    result = client.result(job["id"])
    summary = dict(result["summary"])
    stats = summary.pop("stats", None)
    path = Path(out or f"{job['id']}.json")
    path.write_text(json.dumps(client.download_result(job["id"])))
    where = f"{path} (full landmarks; in S3 at {result['result']['key']})"
    print(f"job {job['id']} SUCCEEDED")
    print(format_summary(summary, result["video"], stats, where, client.insights(job["id"])))
    if viewer:
        print(f"viewer     {client.api_url}/jobs/{job['id']}/viewer (in a browser; it asks for your API key)")
    return 0


# ------------------------------------------------------------------------------------ API clients


def cmd_videos(args: argparse.Namespace) -> int:
    client = _client(args)
    rows = list(client.list_videos(status=args.status))
    if not rows:
        print("no videos")
    for video in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(video["created_at"] / 1000))
        print(f"{video['id']}  {video['status']:<10}  {created}  {video['title']}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    video = Path(args.video)
    if not video.is_file():
        raise CliError(f"{video} does not exist")
    return _submit_and_report(_client(args), video, _options(args), wait=args.wait, out=args.out)


def cmd_upload(args: argparse.Namespace) -> int:
    video = Path(args.file)
    if not video.is_file():
        raise CliError(f"{video} does not exist")
    uploaded = _client(args).upload_again(args.video_id, video)
    print(f"{uploaded['id']}  uploaded {video} ({uploaded['size_bytes']} bytes); start a job on it with the API")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    job = _client(args).get_job(args.job)
    progress = job["progress"]
    percent = "" if progress["percent"] is None else f" {progress['percent']:.0f}%"
    print(f"{job['id']}  {job['status']}{percent}  video {job['video_id']}")
    if job.get("error"):
        print(f"error: {job['error']['message']}")
    if args.json:
        print(json.dumps(job, indent=2))
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.get_job(args.job)
    if job["status"] != "SUCCEEDED":
        raise CliError(f"job {args.job} is {job['status']}; results exist once it has SUCCEEDED")
    status = _report_job(client, job, args.out)
    if args.pictures:
        saved = client.download_pictures(args.job, Path(args.pictures), wait_s=60)
        if not saved:
            raise CliError(f"job {args.job} has no pictures yet: a worker draws them just after the job; try again")
        for path in saved:
            print(f"picture    {path}")
    return status


def cmd_export(args: argparse.Namespace) -> int:
    from .client import ApiError

    out = Path(args.out or f"{args.job}.{args.format}")
    try:
        saved = _client(args).download_export(args.job, out, args.format)
    except ApiError as error:
        raise CliError(f"the API refused: {error.message}") from None
    print(f"{out}: {saved['rows']} rows (one per hand per frame), {len(saved['columns'])} columns, {args.format}")
    return 0


# ------------------------------------------------------------------------------------ wiring


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handpipe", description="Hand landmarks from video with MediaPipe.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the stack does")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def api_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--api-url", default=None, help=f"the API (default $HANDPIPE_API_URL or {DEFAULT_API_URL})")
        sub.add_argument(
            "--api-key", default=os.environ.get("HANDPIPE_API_KEY"), help="API key (default $HANDPIPE_API_KEY)"
        )

    def stack_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--db-url", help="sqlite:///path.db (default .handpipe/handpipe.db) or mysql+pymysql://user:pw@host/db"
        )
        sub.add_argument("--workers", type=int, help="worker processes (default: one per core)")
        sub.add_argument("--data-dir", default=".handpipe", help="where the local stack keeps its database")
        sub.add_argument(
            "--segment-ms", type=int, help="split jobs into segments this long (default 20000; 0: never split)"
        )

    process = commands.add_parser("process", help="run the engine on a local video file")
    process.add_argument("video")
    process.add_argument("--out", help="result file (.json, or .json.gz); default VIDEO.hands.json")
    _add_process_options(process)
    process.set_defaults(run=cmd_process)

    db = commands.add_parser("db", help="database schema")
    db.add_argument("db_command", choices=["upgrade", "status"])
    db.add_argument("--db-url", help="default $HANDPIPE_DB_URL or sqlite:///.handpipe/handpipe.db")
    db.set_defaults(run=cmd_db)

    up = commands.add_parser("up", help="run the whole stack on this machine")
    up.add_argument("--port", type=int, default=8000, help="the API's port (default 8000)")
    up.add_argument(
        "--moto-port",
        type=int,
        default=4566,
        help="S3 and SQS port (default 4566, as the 'local' Chalice stage expects)",
    )
    stack_args(up)
    up.set_defaults(run=cmd_up)

    demo = commands.add_parser("demo", help="process a video end to end through the API")
    demo.add_argument("video", nargs="?", help="default: a sample clip shipped with handpipe")
    demo.add_argument("--out", help="where to save the full result (default JOB.json)")
    api_args(demo)
    stack_args(demo)
    _add_process_options(demo)
    demo.set_defaults(run=cmd_demo)

    videos = commands.add_parser("videos", help="list videos")
    videos.add_argument("--status")
    api_args(videos)
    videos.set_defaults(run=cmd_videos)

    submit = commands.add_parser("submit", help="upload a video and start a job")
    submit.add_argument("video")
    submit.add_argument("--wait", action="store_true", help="wait for the job and print its summary")
    submit.add_argument("--out", help="with --wait: where to save the full result")
    api_args(submit)
    _add_process_options(submit)
    submit.set_defaults(run=cmd_submit)

    upload = commands.add_parser(
        "upload", help="upload a registered video's file again (its upload URL expired, or the file is gone)"
    )
    upload.add_argument("video_id")
    upload.add_argument("file", help="the same file: the URL is signed for its size and type")
    api_args(upload)
    upload.set_defaults(run=cmd_upload)

    status = commands.add_parser("status", help="a job's state and progress")
    status.add_argument("job")
    status.add_argument("--json", action="store_true", help="print the whole job")
    api_args(status)
    status.set_defaults(run=cmd_status)

    result = commands.add_parser("result", help="download a job's result and print its summary")
    result.add_argument("job")
    result.add_argument("--out", help="where to save it (default JOB.json)")
    result.add_argument("--pictures", metavar="DIR", help="also save the job's contact sheet, timeline (and video)")
    api_args(result)
    result.set_defaults(run=cmd_result)

    export = commands.add_parser("export", help="save a job's landmarks as a table: one row per hand per frame")
    export.add_argument("job")
    export.add_argument(
        "--format", choices=["csv", "jsonl", "parquet"], default="csv", help="csv (default), jsonl or parquet"
    )
    export.add_argument("--out", help="default JOB.FORMAT; a name ending in .gz keeps csv or jsonl compressed")
    api_args(export)
    export.set_defaults(run=cmd_export)
    from .deploy import add_commands

    add_commands(commands)
    return parser


def quiet_native_logs() -> None:
    """MediaPipe's C++ side writes INFO and WARNING lines straight to file descriptor 2, which
    nobody can act on. Send descriptor 2 to /dev/null and keep Python's stderr on the real one."""
    sys.stderr.flush()
    real_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(real_stderr, "w", buffering=1)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose and args.command in ("process", "demo") and argv is None:
        quiet_native_logs()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if hasattr(args, "api_url"):
        args.api_url_given = args.api_url is not None
        args.api_url = args.api_url or os.environ.get("HANDPIPE_API_URL") or DEFAULT_API_URL
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except CliError as error:
        print(f"handpipe: {error}", file=sys.stderr)
        return error.status
    except ConnectionError as error:
        print(f"handpipe: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from .client import ApiError

        if isinstance(error, ApiError):
            print(f"handpipe: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
