"""Arguments several commands share (processing options, the API to talk to, the local stack's
settings, --json) and the checks and client built from them, kept in one place so every command spells
them the same and checks them before it touches the network."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
import urllib.parse
from pathlib import Path
from typing import Any

from .errors import CliError

DEFAULT_API_URL = "http://127.0.0.1:8000"
SAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "samples" / "one_hand_wave_portrait.mp4"
OUTPUT_DIR = Path(".handpipe")  # where a command writes what the user did not say where to put

# Help for the processing options handpipe has; an option ProcessOptions gains later gets a flag anyway
# (from its field), with a plainer help text.
_OPTION_HELP: dict[str, str] = {
    "num_hands": "hands to look for, 1-4 (default 2)",
    "min_detection_confidence": "0-1 (default 0.5)",
    "min_presence_confidence": "0-1 (default 0.5)",
    "min_tracking_confidence": "0-1 (default 0.5)",
    "model": "full (default) or lite: faster, a little less exact",
    "model_uri": "your own hand_landmarker.task or gesture_recognizer.task (path, or s3:// for jobs)",
    "sample_fps": "process at most this many frames a second (default: all)",
    "start_ms": "start of the time range to process",
    "end_ms": "end of the time range to process",
    "annotated_video": "also render the video with the landmarks drawn (default: no)",
    "detection": "exact (default): the palm detector on every frame; adaptive: track the hands found and look "
    "for new ones only every --detection-interval-ms (faster; docs/performance.md)",
    "detection_interval_ms": "adaptive: look for new hands at least this often (default 300)",
    "detection_scan_frames": "adaptive, no hand in view: look at every Nth frame (default 1)",
}
# Options whose values are a fixed set: the name of the tuple in chalicelib.shared.contracts that lists it.
_CHOICES = {"model": "MODELS", "detection": "DETECTION_MODES"}
_JOB_ONLY = {"annotated_video"}  # options `handpipe process` (the engine alone) has no use for


def _option_fields(jobs: bool) -> list[tuple[str, type, Any]]:
    """(name, type, default) of each ProcessOptions field, the type without its `| None`."""
    from chalicelib.shared.contracts import ProcessOptions

    hints = typing.get_type_hints(ProcessOptions)
    found = []
    for field in dataclasses.fields(ProcessOptions):
        if not jobs and field.name in _JOB_ONLY:
            continue
        kind = hints[field.name]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        found.append((field.name, kind, field.default))
    return found


def add_process_options(parser: argparse.ArgumentParser, jobs: bool = True) -> None:
    """A flag for every processing option (`--num-hands` for num_hands, ...), made from ProcessOptions'
    fields; left out, an option is not sent and the API's default holds."""
    from chalicelib.shared import contracts

    group = parser.add_argument_group("processing options")
    for name, kind, default in _option_fields(jobs):
        flag = "--" + name.replace("_", "-")
        text = _OPTION_HELP.get(name) or f"the job option {name} (default {default})"
        choices = getattr(contracts, _CHOICES.get(name, ""), None)
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif choices:
            group.add_argument(flag, dest=name, choices=choices, help=text)
        else:
            metavar = {int: "N", float: "X"}.get(kind, "VALUE")
            group.add_argument(flag, dest=name, type=kind, metavar=metavar, help=text)


def process_options(args: argparse.Namespace, jobs: bool = True) -> dict[str, Any]:
    """The options given, checked as the API will check them (so a bad one fails before any upload)."""
    from chalicelib.shared.contracts import ContractError, ProcessOptions

    options = {
        name: getattr(args, name) for name, _, _ in _option_fields(jobs) if getattr(args, name, None) is not None
    }
    uri = options.get("model_uri")
    if uri and not uri.startswith("s3://"):
        model = Path(uri).expanduser()
        if not model.is_file():
            raise CliError(f"--model-uri {uri}: no such file (give a .task file's path, or an s3:// URI)", 2)
        # the local stack's workers run in other processes, possibly from another directory
        options["model_uri"] = str(model.resolve())
    try:
        ProcessOptions.from_dict(options)
    except ContractError as error:
        raise CliError(f"invalid options: {_as_flags(str(error))}", 2) from None
    return options


def _as_flags(message: str) -> str:
    """ProcessOptions names options as the API does (num_hands); the user typed flags (--num-hands)."""
    names = sorted((name for name, _, _ in _option_fields(True)), key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    return pattern.sub(lambda found: "--" + found[1].replace("_", "-"), message)


def add_api_args(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("the API")
    group.add_argument(
        "--api-url", default=None, help=f"the API's address (default $HANDPIPE_API_URL, else {DEFAULT_API_URL})"
    )
    group.add_argument("--api-key", default=None, help="the API key (default $HANDPIPE_API_KEY)")


def add_json_arg(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="print the API's answer as JSON, and nothing else, on stdout")


def add_stack_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--db-url", help="sqlite:///path.db (default .handpipe/handpipe.db) or mysql+pymysql://user:pw@host/db"
    )
    sub.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    sub.add_argument("--data-dir", default=".handpipe", help="where the local stack keeps its database")
    sub.add_argument(
        "--segment-ms", type=int, help="split jobs into segments this long (default 20000; 0: never split)"
    )


def normalize_api_url(text: str) -> str:
    """An http(s) URL from what the user typed: `127.0.0.1:8000` and `localhost:8000` get http://, a
    bare host name https:// (API Gateway listens only there); anything else is a usage error."""
    value = text.strip()
    if "://" not in value:
        host = value.split("/")[0].split(":")[0].lower()
        local = host in ("localhost", "0.0.0.0", "::1") or host.startswith("127.")
        value = ("http://" if local else "https://") + value
    parsed = urllib.parse.urlsplit(value)
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parsed = parsed._replace(netloc="")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CliError(f"--api-url {text!r} is not an http(s) address: give one like {DEFAULT_API_URL}", 2)
    return value.rstrip("/")


def resolve_api_args(args: argparse.Namespace) -> None:
    """--api-url and --api-key, else their variables; the URL checked (no network yet)."""
    args.api_url_given = args.api_url is not None
    args.api_url = normalize_api_url(args.api_url or os.environ.get("HANDPIPE_API_URL") or DEFAULT_API_URL)
    args.api_key = args.api_key or os.environ.get("HANDPIPE_API_KEY") or None


def client(args: argparse.Namespace, key_required: bool = True) -> Any:
    """The client for the API the arguments name; a missing key is a usage error before any request."""
    from ..client import Client

    if key_required and not args.api_key:
        raise CliError(
            "no API key: pass --api-key KEY or set HANDPIPE_API_KEY "
            "(the local stack's is the one `handpipe up` printed, kept in .handpipe/api_key)",
            2,
        )
    return Client(args.api_url, api_key=args.api_key)


def upper(text: str) -> str:
    """Statuses are taken in any case (`--status failed`)."""
    return text.strip().upper()


def output_path(given: str | None, kind: str, name: str) -> Path:
    """Where to write a file: where the user said, or .handpipe/KIND/NAME (the caller prints it)."""
    return Path(given) if given else OUTPUT_DIR / kind / name
