"""The commands that find and follow jobs (jobs, wait, frames) and the two that end things (cancel a
job, delete a video), against a running API."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import sys
from typing import Any

from ..api_types import JOB_STATUSES
from .api import print_json, wait_with_bar
from .errors import CliError, command
from .options import add_api_args, add_json_arg, client, upper
from .report import table, when


def add_commands(commands: Any) -> None:
    jobs = command(
        commands,
        "jobs",
        "find jobs across your videos, by video, status, tag or time",
        "Your jobs across all your videos, newest first (GET /jobs), as a table of job, video, status, progress, "
        "creation time and tag.",
        [
            "handpipe jobs",
            "handpipe jobs --tag day1",
            "handpipe jobs --status failed --since 2026-01-31",
            "handpipe jobs --video vid_0123... --json | jq -r '.[].id'",
        ],
    )
    jobs.add_argument("--video", metavar="VIDEO_ID", help="only this video's jobs")
    jobs.add_argument("--status", type=upper, choices=JOB_STATUSES, help="only jobs in this status (any case)")
    jobs.add_argument("--tag", help="only jobs with this tag (a `submit` batch's)")
    jobs.add_argument(
        "--since", type=_moment, metavar="WHEN", help="only jobs created after this: ISO-8601 date/time or epoch ms"
    )
    jobs.add_argument("--limit", type=_positive, default=20, help="at most this many (default 20)")
    add_json_arg(jobs)
    add_api_args(jobs)
    jobs.set_defaults(run=cmd_jobs)

    wait = command(
        commands,
        "wait",
        "wait for a job to end",
        "Follow a job with a progress bar (on stderr) until it has SUCCEEDED, FAILED or been CANCELLED. The exit "
        "status is 0 when it SUCCEEDED, 1 otherwise, and 1 with a message when --timeout passes first (the job "
        "goes on).",
        ["handpipe wait job_0123...", "handpipe wait job_0123... --timeout 600 --json | jq .summary"],
    )
    wait.add_argument("job")
    wait.add_argument("--timeout", type=float, default=3600, metavar="S", help="give up after S seconds (default 3600)")
    add_json_arg(wait)
    add_api_args(wait)
    wait.set_defaults(run=cmd_wait)

    frames = command(
        commands,
        "frames",
        "a finished job's frames by time: the hands in each",
        "The frames of a finished job in [--start-ms, --end-ms), in time order: index, timestamp and each hand "
        "found (handedness and score); --json gives every landmark.",
        ["handpipe frames job_0123... --start-ms 1000 --end-ms 2000", "handpipe frames job_0123... --json --limit 5"],
    )
    frames.add_argument("job")
    frames.add_argument("--start-ms", "--start", dest="start_ms", type=_ms, metavar="MS", help="from this time")
    frames.add_argument("--end-ms", "--end", dest="end_ms", type=_ms, metavar="MS", help="up to (not including) this")
    frames.add_argument("--limit", type=_positive, help="at most this many frames (default: all in the range)")
    add_json_arg(frames)
    add_api_args(frames)
    frames.set_defaults(run=cmd_frames)

    cancel = command(
        commands,
        "cancel",
        "stop a queued or running job",
        "Cancel a job: no further segment starts, running ones stop at their next progress check, and the job "
        "ends CANCELLED. A job that has already ended cannot be cancelled (the error names its status).",
        ["handpipe cancel job_0123..."],
    )
    cancel.add_argument("job")
    add_json_arg(cancel)
    add_api_args(cancel)
    cancel.set_defaults(run=cmd_cancel)

    delete = command(
        commands,
        "delete",
        "delete a video with its file and every result",
        "Delete a video: its uploaded file, every job's results, and its rows. Refused while one of its jobs is "
        "queued or running (cancel it first).",
        ["handpipe delete vid_0123..."],
    )
    delete.add_argument("video")
    add_json_arg(delete)
    add_api_args(delete)
    delete.set_defaults(run=cmd_delete)

    secret = command(
        commands,
        "webhook-secret",
        "the secret that signs your webhook events, or a new one",
        "Print the secret whose HMAC-SHA256 of each webhook event's raw body is its X-Handpipe-Signature "
        "(handpipe.client.verify_webhook checks it); --rotate makes a new one, used for every event from now on.",
        ["handpipe webhook-secret", "handpipe webhook-secret --rotate --json | jq -r .secret"],
    )
    secret.add_argument("--rotate", action="store_true", help="make a new secret (the old one stops signing)")
    add_json_arg(secret)
    add_api_args(secret)
    secret.set_defaults(run=cmd_webhook_secret)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be milliseconds (a whole number), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _moment(text: str) -> str:
    """ISO-8601 (a date, or a date and time) or epoch milliseconds, as GET /jobs takes created_after."""
    if text.isdigit():
        return text
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO-8601 date/time (2026-01-31, 2026-01-31T09:00:00Z) nor epoch milliseconds"
        ) from None
    return text


def _progress(job: dict[str, Any]) -> str:
    percent = job["progress"]["percent"]
    return "-" if percent is None else f"{percent:.0f}%"


def cmd_jobs(args: argparse.Namespace) -> int:
    found = list(
        client(args).list_jobs(
            status=args.status, tag=args.tag, video_id=args.video, created_after=args.since, limit=args.limit
        )
    )
    if args.json:
        print_json(found)
        return 0
    if not found:
        print("no jobs" + ("" if not (args.status or args.tag or args.video or args.since) else " match"))
        return 0
    rows = [
        [j["id"], j["video_id"], j["status"], _progress(j), when(j["timings"]["created_at"]), j["tag"]] for j in found
    ]
    print(table(["JOB", "VIDEO", "STATUS", "PROGRESS", "CREATED", "TAG"], rows))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    job = wait_with_bar(client(args), args.job, args.timeout)
    if args.json:
        print_json(job)
    else:
        print(f"job {job['id']} {job['status']}")
    if job["status"] == "SUCCEEDED":
        return 0
    error = job.get("error")
    reason = f": {error['message']} ({error['code']})" if error else ""
    print(f"handpipe: error: job {job['id']} ended {job['status']}{reason}", file=sys.stderr)
    return 1


def cmd_frames(args: argparse.Namespace) -> int:
    if args.start_ms is not None and args.end_ms is not None and args.end_ms <= args.start_ms:
        raise CliError(f"--end-ms ({args.end_ms}) must be after --start-ms ({args.start_ms})", 2)
    page_size = min(args.limit or 500, 1000)
    frames = client(args).frames(args.job, args.start_ms, args.end_ms, page_size=page_size)
    found = list(itertools.islice(frames, args.limit) if args.limit else frames)
    if args.json:
        print_json(found)
        return 0
    if not found:
        print("no frames in that range")
        return 0
    rows = [
        [
            f["index"],
            f"{f['timestamp_ms']:.1f}",
            ", ".join(f"{h['handedness']} {h['score']:.2f}" for h in f["hands"]) or "-",
        ]
        for f in found
    ]
    print(table(["FRAME", "TIME MS", "HANDS"], rows))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = client(args).cancel_job(args.job)
    if args.json:
        print_json(job)
    else:
        print(f"job {job['id']} {job['status']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    deleted = client(args).delete_video(args.video)
    if args.json:
        print_json(deleted)
    else:
        print(f"deleted video {deleted['deleted']} ({deleted['objects_removed']} stored object(s) removed)")
    return 0


def cmd_webhook_secret(args: argparse.Namespace) -> int:
    api = client(args)
    secret = api.rotate_webhook_secret() if args.rotate else api.webhook_secret()
    if args.json:
        print_json(secret)
    else:
        print(f"secret     {secret['secret']}")
        print(f"version    {secret['version']}" + (" (new)" if args.rotate else ""))
        print(f"header     {secret['header']}: {secret['algorithm']}")
    return 0
