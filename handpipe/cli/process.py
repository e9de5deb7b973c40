"""`handpipe process`: the engine on a local file, with no stack and no AWS, for trying options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import CliError
from .options import add_process_options, process_options
from .report import ProgressBar, format_summary


def add_commands(commands: Any) -> None:
    process = commands.add_parser("process", help="run the engine on a local video file")
    process.add_argument("video")
    process.add_argument("--out", help="result file (.json, or .json.gz); default VIDEO.hands.json")
    add_process_options(process)
    process.set_defaults(run=cmd_process)


def cmd_process(args: argparse.Namespace) -> int:
    from handpipe_worker.engine import VideoDecodeError, process_video
    from handpipe_worker.models import ModelError

    from chalicelib.shared.contracts import ContractError, ProcessOptions
    from chalicelib.shared.results import to_gzip

    video = Path(args.video)
    try:
        options = ProcessOptions.from_dict(process_options(args))
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
