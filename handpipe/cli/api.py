"""The commands that talk to a running API, local or deployed: videos, submit, upload, status, result
and export, and the upload-wait-summarize sequence `handpipe demo` shares."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .errors import CliError
from .options import add_api_args, add_process_options, client, process_options
from .report import ProgressBar, format_summary


def add_commands(commands: Any) -> None:
    videos = commands.add_parser("videos", help="list videos")
    videos.add_argument("--status")
    add_api_args(videos)
    videos.set_defaults(run=cmd_videos)

    submit = commands.add_parser("submit", help="upload a video and start a job")
    submit.add_argument("video")
    submit.add_argument("--wait", action="store_true", help="wait for the job and print its summary")
    submit.add_argument("--out", help="with --wait: where to save the full result")
    add_api_args(submit)
    add_process_options(submit)
    submit.set_defaults(run=cmd_submit)

    upload = commands.add_parser(
        "upload", help="upload a registered video's file again (its upload URL expired, or the file is gone)"
    )
    upload.add_argument("video_id")
    upload.add_argument("file", help="the same file: the URL is signed for its size and type")
    add_api_args(upload)
    upload.set_defaults(run=cmd_upload)

    status = commands.add_parser("status", help="a job's state and progress")
    status.add_argument("job")
    status.add_argument("--json", action="store_true", help="print the whole job")
    add_api_args(status)
    status.set_defaults(run=cmd_status)

    result = commands.add_parser("result", help="download a job's result and print its summary")
    result.add_argument("job")
    result.add_argument("--out", help="where to save it (default JOB.json)")
    result.add_argument("--pictures", metavar="DIR", help="also save the job's contact sheet, timeline (and video)")
    add_api_args(result)
    result.set_defaults(run=cmd_result)

    export = commands.add_parser("export", help="save a job's landmarks as a table: one row per hand per frame")
    export.add_argument("job")
    export.add_argument(
        "--format", choices=["csv", "jsonl", "parquet"], default="csv", help="csv (default), jsonl or parquet"
    )
    export.add_argument("--out", help="default JOB.FORMAT; a name ending in .gz keeps csv or jsonl compressed")
    add_api_args(export)
    export.set_defaults(run=cmd_export)


def submit_and_report(
    client: Any, video: Path, options: dict[str, Any], wait: bool, out: str | None, viewer: bool = True
) -> int:
    from ..client import ApiError

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


def cmd_videos(args: argparse.Namespace) -> int:
    rows = list(client(args).list_videos(status=args.status))
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
    return submit_and_report(client(args), video, process_options(args), wait=args.wait, out=args.out)


def cmd_upload(args: argparse.Namespace) -> int:
    video = Path(args.file)
    if not video.is_file():
        raise CliError(f"{video} does not exist")
    uploaded = client(args).upload_again(args.video_id, video)
    print(f"{uploaded['id']}  uploaded {video} ({uploaded['size_bytes']} bytes); start a job on it with the API")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    job = client(args).get_job(args.job)
    progress = job["progress"]
    percent = "" if progress["percent"] is None else f" {progress['percent']:.0f}%"
    print(f"{job['id']}  {job['status']}{percent}  video {job['video_id']}")
    if job.get("error"):
        print(f"error: {job['error']['message']}")
    if args.json:
        print(json.dumps(job, indent=2))
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    api = client(args)
    job = api.get_job(args.job)
    if job["status"] != "SUCCEEDED":
        raise CliError(f"job {args.job} is {job['status']}; results exist once it has SUCCEEDED")
    status = _report_job(api, job, args.out)
    if args.pictures:
        saved = api.download_pictures(args.job, Path(args.pictures), wait_s=60)
        if not saved:
            raise CliError(f"job {args.job} has no pictures yet: a worker draws them just after the job; try again")
        for path in saved:
            print(f"picture    {path}")
    return status


def cmd_export(args: argparse.Namespace) -> int:
    from ..client import ApiError

    out = Path(args.out or f"{args.job}.{args.format}")
    try:
        saved = client(args).download_export(args.job, out, args.format)
    except ApiError as error:
        raise CliError(f"the API refused: {error.message}") from None
    print(f"{out}: {saved['rows']} rows (one per hand per frame), {len(saved['columns'])} columns, {args.format}")
    return 0
