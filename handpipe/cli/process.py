"""`handpipe process`: the engine on a local file, with no stack and no AWS, for trying options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import CliError, command
from .options import add_process_options, output_path, process_options
from .report import ProgressBar, format_summary


def add_commands(commands: Any) -> None:
    process = command(
        commands,
        "process",
        "run the engine on a local video file (no stack, no AWS)",
        "Run MediaPipe's hand landmarker over a video on this machine, as a worker would, and print what it "
        "found; the full result goes to --out, or to .handpipe/results/NAME.hands.json.",
        [
            "handpipe process clip.mp4",
            "handpipe process clip.mp4 --model lite --sample-fps 10 --out hands.json.gz",
            "handpipe process clip.mp4 --model-uri ~/models/gesture_recognizer.task",
        ],
    )
    process.add_argument("video")
    process.add_argument("--out", help="result file (.json, or .json.gz); default .handpipe/results/NAME.hands.json")
    add_process_options(process, jobs=False)
    process.set_defaults(run=cmd_process)


def cmd_process(args: argparse.Namespace) -> int:
    from handpipe_worker.engine import VideoDecodeError, process_video
    from handpipe_worker.models import ModelError

    from chalicelib.shared.contracts import ContractError, ProcessOptions
    from chalicelib.shared.results import to_gzip

    video = Path(args.video)
    if not video.is_file():
        raise CliError(f"{video} does not exist" if not video.exists() else f"{video} is not a file", 2)
    if video.stat().st_size == 0:
        raise CliError(f"{video.name} is empty (0 bytes)", 2)
    try:
        options = ProcessOptions.from_dict(process_options(args, jobs=False))
    except ContractError as error:
        raise CliError(f"invalid options: {error}", 2) from None
    out = output_path(args.out, "results", video.stem + ".hands.json")
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
