"""`handpipe up` and `handpipe demo`: the whole stack on this machine, and one clip through it (or
through an API that already answers) from upload to summary."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .api import submit_and_report
from .errors import CliError
from .options import SAMPLE_VIDEO, add_api_args, add_process_options, add_stack_args, process_options


def add_commands(commands: Any) -> None:
    up = commands.add_parser(
        "up",
        help="run the whole stack on this machine",
        description="Run the whole stack on this machine: moto S3 and SQS, the database, the API and worker\n"
        "processes. The console shows one line per job event; -v adds the request log and the handlers'\n"
        "and MediaPipe's own lines.",
        epilog="examples:\n  handpipe up\n  handpipe up -v --port 8001 --moto-port 4567 --workers 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # SUPPRESS: absent here, `handpipe -v up` keeps the top-level flag's value
    up.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="the request log and every log line"
    )
    up.add_argument("--port", type=int, default=8000, help="the API's port (default 8000)")
    up.add_argument(
        "--moto-port",
        type=int,
        default=4566,
        help="S3 and SQS port (default 4566, as the 'local' Chalice stage expects)",
    )
    add_stack_args(up)
    up.set_defaults(run=cmd_up)

    demo = commands.add_parser(
        "demo",
        help="process a video end to end through the API",
        description="Process a video end to end through the API: upload it, run a job, wait, print the summary.\n"
        "It uses the API at --api-url (or HANDPIPE_API_URL) when one answers there, else starts a local\n"
        "stack for the run and stops it after.",
        epilog="examples:\n  handpipe demo\n  handpipe demo clip.mp4 --api-url http://127.0.0.1:8000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("video", nargs="?", help="default: a sample clip shipped with handpipe")
    demo.add_argument("--out", help="where to save the full result (default JOB.json)")
    add_api_args(demo)
    add_stack_args(demo)
    add_process_options(demo)
    demo.set_defaults(run=cmd_demo)


# The option that sets each of the stack's ports, for the message when one is taken.
_PORT_OPTIONS = {"api": ("the API", "--port"), "moto": ("S3 and SQS (moto)", "--moto-port")}


def _start_stack(
    args: argparse.Namespace, port: int, moto_port: int = 0, quiet: bool = False, job_events: bool = False
) -> Any:
    from ..local.stack import LocalStack, PortInUse

    try:
        stack = LocalStack(
            port=port,
            moto_port=moto_port,
            db_url=args.db_url,
            workers=args.workers,
            data_dir=args.data_dir,
            quiet=quiet and not args.verbose,
            job_events=job_events,
            segment_ms=args.segment_ms,
        )
    except ValueError as error:  # HANDPIPE_API_KEYS that parse_api_keys refuses
        raise CliError(f"HANDPIPE_API_KEYS: {error}") from None
    try:
        stack.start()
    except PortInUse as error:
        what, option = _PORT_OPTIONS[error.service]
        raise CliError(
            f"cannot start the local stack: port {error.port} for {what} is taken; pick another with {option}"
        ) from None
    except OSError as error:
        raise CliError(f"cannot start the local stack: {error}") from None
    return stack


def handpipe_command() -> str:
    """How this shell can run handpipe: `handpipe` when it is on PATH, else the script beside this Python
    (.venv/bin/handpipe, relative to here when under it), else `python -m handpipe.cli`."""
    if shutil.which("handpipe"):
        return "handpipe"
    script = Path(sys.executable).with_name("handpipe")
    if script.is_file() and os.access(script, os.X_OK):
        try:
            return shlex.quote(str(script.relative_to(Path.cwd())))
        except ValueError:
            return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m handpipe.cli"


def cmd_up(args: argparse.Namespace) -> int:
    from chalicelib.adapters.database import redacted_url

    stack = _start_stack(args, args.port, args.moto_port, quiet=True, job_events=True)
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
    print(f"      {handpipe_command()} demo --api-url {info.api_url}    (Ctrl-C stops the stack)")
    print("job events follow, one line each (handpipe up -v: the request log too)", flush=True)
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
    from ..client import Client

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
        from ..client import Client

        client = Client(api_url, api_key=args.api_key)
        # a stack started for the demo stops when it ends, so there is no viewer to point to then
        return submit_and_report(client, video, process_options(args), wait=True, out=args.out, viewer=stack is None)
    finally:
        if stack is not None:
            stack.stop()
