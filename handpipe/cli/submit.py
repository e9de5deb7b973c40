"""`handpipe submit`: one video, several, or folders of them, uploaded and each given a job. A batch
shares a tag (so `handpipe jobs --tag T` finds it), shows one progress bar over all its bytes and ends
with a table of what became of each file; the exit status is 1 if any file did not make it."""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from .api import print_json, remove_video, submit_and_report
from .errors import CliError, command
from .options import add_api_args, add_json_arg, add_process_options, client, process_options
from .report import ProgressBar, table
from .transfer import upload_video

# What a folder's files must end in to be taken as videos (a file named on the command line is sent
# whatever its name, and the API judges it).
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".3gp", ".ts", ".mts", ".m2ts", ".wmv", ".flv"}
)


def add_commands(commands: Any) -> None:
    submit = command(
        commands,
        "submit",
        "upload videos (files or folders) and start a job on each",
        "Register each video with the API, upload it (streamed from disk) and start a job with the processing "
        "options given. Every option is checked before anything is uploaded. Several files or a folder (its "
        "video files, not its subfolders) make a batch: one progress bar, one tag shared by its jobs (made up "
        "and printed unless --tag names one), and a table of file, video, job and status at the end. The exit "
        "status is 1 if any video could not be sent (or, with --wait, did not succeed).",
        [
            "handpipe submit clip.mp4 --wait --sample-fps 10",
            "handpipe submit clip.mp4 --num-hands 1 --annotated-video",
            "handpipe submit recordings/ --tag day1 --wait",
            "handpipe submit a.mp4 b.mov --json | jq -r '.[].job_id'",
        ],
    )
    submit.add_argument("paths", nargs="+", metavar="VIDEO", help="video files, or folders of them")
    submit.add_argument("--wait", action="store_true", help="wait for the jobs; for one video, print its summary")
    submit.add_argument(
        "--timeout", type=float, default=3600, metavar="S", help="with --wait: give up waiting after S seconds"
    )
    submit.add_argument("--out", help="with --wait and one video: where to save the full result")
    submit.add_argument("--tag", help="tag the jobs with this (a batch gets one made up when left out)")
    submit.add_argument("--title", help="one video: its title (default: the file's name)")
    submit.add_argument(
        "--webhook-url", help="have the API POST each job's end to this URL (signed: X-Handpipe-Signature)"
    )
    add_json_arg(submit)
    add_api_args(submit)
    add_process_options(submit)
    submit.set_defaults(run=cmd_submit)


def collect_videos(paths: list[str]) -> list[Path]:
    """The files the arguments name, checked (exists, not empty) before anything is sent."""
    from ..client import InvalidFile, check_file

    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not inside:
                raise CliError(f"{path} holds no video files (looked for {', '.join(sorted(VIDEO_SUFFIXES))})", 2)
            found += inside
        else:
            found.append(path)
    try:
        for path in found:
            check_file(path)
    except InvalidFile as error:
        raise CliError(str(error), 2) from None
    unique: dict[Path, Path] = {}  # a file named twice (or also through its folder) is sent once, as first named
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _check_webhook(url: str | None) -> None:
    if url is not None and not url.startswith(("https://", "http://")):
        raise CliError(f"--webhook-url {url!r} is not a URL: give one like https://example.com/hooks/handpipe", 2)


def new_tag() -> str:
    return time.strftime("batch-%Y%m%d-%H%M%S-", time.localtime()) + secrets.token_hex(2)


def cmd_submit(args: argparse.Namespace) -> int:
    files = collect_videos(args.paths)
    options = process_options(args)
    _check_webhook(args.webhook_url)
    if len(files) > 1 and (args.out or args.title):
        raise CliError("--out and --title go with one video; a batch's results are fetched with `handpipe result`", 2)
    if args.out and not args.wait:
        raise CliError("--out goes with --wait (without it, fetch the result later with `handpipe result JOB`)", 2)
    api = client(args)
    if len(files) == 1 and not args.json:
        return submit_and_report(
            api,
            files[0],
            options,
            wait=args.wait,
            out=args.out,
            tag=args.tag,
            title=args.title,
            webhook_url=args.webhook_url,
            timeout_s=args.timeout,
        )
    tag = args.tag or (new_tag() if len(files) > 1 else None)
    rows = Batch(api, options, tag, args.webhook_url, sys.stderr if args.json else sys.stdout).run(
        files, args.title, args.wait, args.timeout
    )
    if args.json:
        print_json([asdict(row) for row in rows])
    else:
        print(table(["FILE", "VIDEO", "JOB", "STATUS", "NOTE"], [list(asdict(r).values()) for r in rows]))
        if tag:
            print(f"tag {tag}: list these jobs with `handpipe jobs --tag {tag}`")
    return 0 if all(row.ok(args.wait) for row in rows) else 1


@dataclass
class Row:
    file: str
    video_id: str | None = None
    job_id: str | None = None
    status: str = "NOT SENT"
    error: str | None = None

    def ok(self, waited: bool) -> bool:
        return self.error is None and (self.status == "SUCCEEDED" or not waited)


class Batch:
    """Several files sent one after another under one progress bar, then (with wait) waited for."""

    def __init__(self, api: Any, options: dict[str, Any], tag: str | None, webhook_url: str | None, say: TextIO):
        self.api = api
        self.options = options
        self.tag = tag
        self.webhook_url = webhook_url
        self.say = say

    def run(self, files: list[Path], title: str | None, wait: bool, timeout_s: float) -> list[Row]:
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes)
        print(
            f"submitting {len(files)} video(s), {total / 1e6:.1f} MB" + (f", tag {self.tag}" if self.tag else ""),
            file=self.say,
        )
        bar = ProgressBar("uploading")
        rows = []
        sent = 0
        try:
            for number, (path, size) in enumerate(zip(files, sizes, strict=True), start=1):
                bar.label = f"uploading {number}/{len(files)}"
                base = sent
                rows.append(self._send(path, title, lambda done, _, base=base: bar.update(base + done, total, "bytes")))
                sent += size
                bar.update(sent, total, "bytes")
        finally:
            bar.close()
        if wait:
            self._wait(rows, timeout_s)
        return rows

    def _send(self, path: Path, title: str | None, progress: Any) -> Row:
        from ..client import HandpipeError

        row = Row(file=str(path))
        video = None
        try:
            video = self.api.register_video(path, title)
            row.video_id = video["id"]
            upload_video(self.api, video, path, progress=progress)
        except HandpipeError as error:
            row.error = f"not sent: {error}"
            if video is not None:
                row.error += remove_video(self.api, video["id"])
            return row
        try:
            job = self.api.create_job(video["id"], self.options, tag=self.tag, webhook_url=self.webhook_url)
        except HandpipeError as error:
            row.status, row.error = "UPLOADED", f"no job: {error}"
            return row
        row.job_id, row.status = job["id"], job["status"]
        return row

    def _wait(self, rows: list[Row], timeout_s: float) -> None:
        from ..client import HandpipeError, HandpipeTimeout

        deadline = time.monotonic() + timeout_s
        for row in rows:
            if row.job_id is None:
                continue
            try:
                job = self.api.wait_for_job(row.job_id, timeout_s=max(0.0, deadline - time.monotonic()), poll_s=0.5)
            except HandpipeTimeout as error:
                row.error = str(error)
                continue
            except HandpipeError as error:
                row.error = f"while waiting: {error}"
                continue
            row.status = job["status"]
            if job.get("error"):
                row.error = f"{job['error']['message']} ({job['error']['code']})"
            print(f"{row.job_id} {row.status}  {row.file}", file=self.say)
