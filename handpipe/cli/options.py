"""Arguments several commands share (processing options, the API to talk to, the local stack's
settings) and the client built from them, kept in one place so every command spells them the same."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_API_URL = "http://127.0.0.1:8000"
SAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "samples" / "one_hand_wave_portrait.mp4"

_PROCESS_OPTIONS = [
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


def add_process_options(parser: argparse.ArgumentParser) -> None:
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


def process_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {name: getattr(args, name) for name in _PROCESS_OPTIONS if getattr(args, name) is not None}
    uri = options.get("model_uri")
    if uri and not uri.startswith("s3://") and Path(uri).expanduser().is_file():
        # the local stack's workers run in other processes, possibly from another directory
        options["model_uri"] = str(Path(uri).expanduser().resolve())
    return options


def add_api_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--api-url", default=None, help=f"the API (default $HANDPIPE_API_URL or {DEFAULT_API_URL})")
    sub.add_argument(
        "--api-key", default=os.environ.get("HANDPIPE_API_KEY"), help="API key (default $HANDPIPE_API_KEY)"
    )


def add_stack_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--db-url", help="sqlite:///path.db (default .handpipe/handpipe.db) or mysql+pymysql://user:pw@host/db"
    )
    sub.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    sub.add_argument("--data-dir", default=".handpipe", help="where the local stack keeps its database")
    sub.add_argument(
        "--segment-ms", type=int, help="split jobs into segments this long (default 20000; 0: never split)"
    )


def client(args: argparse.Namespace) -> Any:
    from ..client import Client

    return Client(args.api_url, api_key=args.api_key)
