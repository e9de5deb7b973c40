"""The commands that read videos and results from a running API, local or deployed: videos, upload,
status, result, export and health, and the upload-wait-summarize sequence `submit` and `handpipe demo` share."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..transport import ApiError, HandpipeError
from .errors import CliError, command
from .options import add_api_args, add_json_arg, client, output_path, upper
from .report import ProgressBar, format_summary, table, when
from .transfer import upload_video

VIDEO_STATUSES = ("REGISTERED", "UPLOADED", "PROCESSING", "PROCESSED", "FAILED", "DELETING")


def add_commands(commands: Any) -> None:
    videos = command(
        commands,
        "videos",
        "list your videos, each with its latest job",
        "Your videos, newest first, as a table: id, status, when registered, the latest job's id and status, "
        "and the title.",
        ["handpipe videos", "handpipe videos --status failed", "handpipe videos --json | jq '.[].id'"],
    )
    videos.add_argument("--status", type=upper, choices=VIDEO_STATUSES, help="only videos in this status (any case)")
    videos.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    add_json_arg(videos)
    add_api_args(videos)
    videos.set_defaults(run=cmd_videos)

    upload = command(
        commands,
        "upload",
        "upload a registered video's file again, or resume an interrupted upload in parts",
        "Ask for a fresh upload URL for a registered video whose file is not in the bucket, and upload the file "
        "to it. The URL is signed for the size registered, so it must be the same file. A big file's upload in "
        "parts that was interrupted resumes: only the parts S3 does not hold yet are sent.",
        ["handpipe upload vid_0123... clip.mp4"],
    )
    upload.add_argument("video_id")
    upload.add_argument("file", help="the same file: the URL is signed for its size and type")
    add_api_args(upload)
    upload.set_defaults(run=cmd_upload)

    status = command(
        commands,
        "status",
        "a job's state and progress",
        "One line with the job's status, progress and video (and its error, if it failed); --json prints the "
        "whole job.",
        ["handpipe status job_0123...", "handpipe status job_0123... --json | jq .progress"],
    )
    status.add_argument("job")
    add_json_arg(status)
    add_api_args(status)
    status.set_defaults(run=cmd_status)

    result = command(
        commands,
        "result",
        "download a job's result and print its summary",
        "Save a finished job's full result (landmarks of every frame, docs/results-format.md) and print its "
        "summary; without --out it goes to .handpipe/results/JOB.json.",
        ["handpipe result job_0123...", "handpipe result job_0123... --out hands.json --pictures pictures/"],
    )
    result.add_argument("job")
    result.add_argument("--out", help="where to save it (default .handpipe/results/JOB.json)")
    result.add_argument("--pictures", metavar="DIR", help="also save the job's contact sheet, timeline (and video)")
    add_json_arg(result)
    add_api_args(result)
    result.set_defaults(run=cmd_result)

    export = command(
        commands,
        "export",
        "save a job's landmarks as a table: one row per hand per frame",
        "Save a finished job's landmarks as CSV, JSON Lines or Parquet, one row per hand per frame (columns in "
        "the README); without --out it goes to .handpipe/exports/JOB.FORMAT.",
        ["handpipe export job_0123... --out hands.csv", "handpipe export job_0123... --format parquet"],
    )
    export.add_argument("job")
    export.add_argument(
        "--format",
        type=str.lower,
        choices=["csv", "jsonl", "parquet"],
        default="csv",
        help="csv (default), jsonl or parquet",
    )
    export.add_argument(
        "--out", help="default .handpipe/exports/JOB.FORMAT; a name ending in .gz keeps csv or jsonl compressed"
    )
    add_api_args(export)
    export.set_defaults(run=cmd_export)

    health = command(
        commands,
        "health",
        "whether the API and what it depends on answer",
        "The API's own check of its database, bucket and queues; exit status 1 when any is failing.",
        ["handpipe health", "handpipe health --api-url https://abc.execute-api.eu-west-1.amazonaws.com/api"],
    )
    add_json_arg(health)
    add_api_args(health)
    health.set_defaults(run=cmd_health)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def submit_and_report(
    client: Any,
    video: Path,
    options: dict[str, Any],
    wait: bool,
    out: str | None,
    viewer: bool = True,
    *,
    tag: str | None = None,
    title: str | None = None,
    webhook_url: str | None = None,
    timeout_s: float = 3600,
) -> int:
    """Register, upload (with a progress bar) and start one job; with `wait`, report its end."""
    registered = client.register_video(video, title)
    print(f"registered {video.name} as video {registered['id']}; uploading {video.stat().st_size / 1e6:.1f} MB")
    bar = ProgressBar("uploading")
    try:
        upload_video(client, registered, video, progress=lambda done, total: bar.update(done, total, "bytes"))
    except HandpipeError as error:
        if (registered.get("upload") or {}).get("method") == "multipart":  # the parts S3 holds are kept
            resume = f"handpipe upload {registered['id']} {video}"
            raise CliError(f"{video.name} was not uploaded: {error}; resume it with `{resume}`") from None
        raise CliError(f"{video.name} was not uploaded: {error}{remove_video(client, registered['id'])}") from None
    finally:
        bar.close()
    job = client.create_job(registered["id"], options, tag=tag, webhook_url=webhook_url)
    print(f"job {job['id']} {job['status']}" + (f" (tag {tag})" if tag else ""))
    if not wait:
        print(f"follow it with: handpipe wait {job['id']}")
        return 0
    return report_job(client, wait_with_bar(client, job["id"], timeout_s), out, viewer)


def remove_video(client: Any, video_id: str) -> str:
    """A video whose upload failed is deleted again, so no REGISTERED video without a file stays; says so."""
    try:
        client.delete_video(video_id)
    except HandpipeError as error:
        return f" (and video {video_id} could not be removed: {error})"
    return " (its registration was removed)"


def wait_with_bar(client: Any, job_id: str, timeout_s: float = 3600) -> dict[str, Any]:
    bar = ProgressBar("processing")

    def show(state: dict[str, Any]) -> None:
        progress = state["progress"]
        bar.update(progress["frames_done"], progress["frames_total"])

    try:
        job: dict[str, Any] = client.wait_for_job(job_id, on_progress=show, timeout_s=timeout_s, poll_s=0.5)
    finally:
        bar.close()
    return job


def report_job(client: Any, job: dict[str, Any], out: str | None, viewer: bool = True) -> int:
    """A finished job: its summary and the saved result (exit 0), or why it did not succeed (exit 1)."""
    if job["status"] != "SUCCEEDED":
        error = job.get("error") or {}
        reason = f": {error.get('message')} ({error.get('code')})" if error else ""
        print(f"handpipe: error: job {job['id']} {job['status']}{reason}", file=sys.stderr)
        return 1
    result = client.result(job["id"])
    summary = dict(result["summary"])
    stats = summary.pop("stats", None)
    path = output_path(out, "results", f"{job['id']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(client.download_result(job["id"])))
    where = f"{path} (full landmarks; in S3 at {result['result']['key']})"
    print(f"job {job['id']} SUCCEEDED")
    print(format_summary(summary, result["video"], stats, where, client.insights(job["id"])))
    if viewer:
        print(f"viewer     {client.api_url}/jobs/{job['id']}/viewer (in a browser; it asks for your API key)")
    return 0


def cmd_videos(args: argparse.Namespace) -> int:
    api = client(args)
    rows: list[dict[str, Any]] = []
    for video in api.list_videos(status=args.status, limit=min(args.limit, 100)):
        latest = next(iter(api.list_video_jobs(video["id"], limit=1)), None)
        rows.append({**video, "latest_job": latest and {"id": latest["id"], "status": latest["status"]}})
        if len(rows) >= args.limit:
            break
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no videos" + (f" with status {args.status}" if args.status else ""))
        return 0
    header = ["VIDEO", "STATUS", "REGISTERED", "LATEST JOB", "JOB STATUS", "TITLE"]
    print(
        table(
            header,
            [
                [
                    v["id"],
                    v["status"],
                    when(v["created_at"]),
                    (v["latest_job"] or {}).get("id"),
                    (v["latest_job"] or {}).get("status"),
                    v["title"],
                ]
                for v in rows
            ],
        )
    )
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from ..client import check_file

    video = check_file(args.file)
    api = client(args)
    fresh = _resumable_upload(api, args.video_id) or api.new_upload_url(args.video_id)
    bar = ProgressBar("uploading")
    try:
        upload_video(api, fresh, video, progress=lambda done, total: bar.update(done, total, "bytes"))
    finally:
        bar.close()
    print(f"{fresh['id']}  uploaded {video} ({fresh['size_bytes']} bytes); start a job on it with the API")
    return 0


def _resumable_upload(api: Any, video_id: str) -> dict[str, Any] | None:
    """The video with its unfinished multipart upload, which the uploader resumes (sending only the parts
    S3 does not hold yet); None when the video has none, and a fresh single URL is what it needs."""
    try:
        state = api.upload_state(video_id)
    except ApiError as error:
        if error.status in (404, 409):
            return None
        raise
    upload = {"method": "multipart", **{k: state[k] for k in ("upload_id", "part_size_bytes", "part_count")}}
    return {**api.get_video(video_id), "upload": upload}


def cmd_status(args: argparse.Namespace) -> int:
    job = client(args).get_job(args.job)
    if args.json:
        print_json(job)
        return 0
    progress = job["progress"]
    percent = "" if progress["percent"] is None else f" {progress['percent']:.0f}%"
    print(
        f"{job['id']}  {job['status']}{percent}  video {job['video_id']}"
        + (f"  tag {job['tag']}" if job["tag"] else "")
    )
    if job.get("error"):
        print(f"error: {job['error']['message']} ({job['error']['code']})")
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    api = client(args)
    job = api.get_job(args.job)
    if job["status"] != "SUCCEEDED":
        raise CliError(f"job {args.job} is {job['status']}; results exist once it has SUCCEEDED")
    if args.json:
        result = dict(api.result(args.job))
        path = output_path(args.out, "results", f"{args.job}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(api.download_result(args.job)))
        print_json({**result, "path": str(path)})
        return 0
    status = report_job(api, job, args.out)
    if args.pictures:
        saved = api.download_pictures(args.job, Path(args.pictures), wait_s=60)
        if not saved:
            raise CliError(f"job {args.job} has no pictures yet: a worker draws them just after the job; try again")
        for path in saved:
            print(f"picture    {path}")
    return status


def cmd_export(args: argparse.Namespace) -> int:
    out = output_path(args.out, "exports", f"{args.job}.{args.format}")
    saved = client(args).download_export(args.job, out, args.format)
    print(f"{out}: {saved['rows']} rows (one per hand per frame), {len(saved['columns'])} columns, {args.format}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    api = client(args, key_required=False)
    answer = api.health()
    healthy = answer["status"] == "ok"
    if args.json:
        print_json(answer)
    else:
        print(f"{api.api_url}: {answer['status']}")
        for name, state in answer["checks"].items():
            print(f"  {name:<11} {state}")
    if not healthy:
        failing = ", ".join(name for name, state in answer["checks"].items() if state != "ok")
        print(f"handpipe: error: the API is degraded: {failing} failing (its log says why)", file=sys.stderr)
    return 0 if healthy else 1
