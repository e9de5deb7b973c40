"""What the bench scripts share, so each one measures the same way: where the repository, the sample clip
and the shared footage are, progress lines, the one `RESULT key=value ...` line, the FAIL lines and exit
status, wall/CPU accounting (this process, its process tree, the whole machine), and looping a clip.

The scripts run as `python bench/NAME.py`, so bench/ is sys.path[0] and they import this as `common`."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CLIP = REPO / "handpipe" / "samples" / "one_hand_wave_portrait.mp4"
DATA_HINT = "set HANDPIPE_TEST_DATA to the shared/data folder"


def log(message: str, tag: str | None = "bench") -> None:
    """A progress line on stderr (stdout is for the table and the RESULT line); `tag` None: the bare message."""
    line = message if tag is None else f"[{tag} {time.strftime('%H:%M:%S')}] {message}"
    print(line, file=sys.stderr, flush=True)


def data_dir() -> Path:
    """The shared footage (videos/, ...): $HANDPIPE_TEST_DATA, else shared/data beside the repository."""
    return Path(os.environ.get("HANDPIPE_TEST_DATA", REPO.parent / "shared" / "data"))


def result_line(result: Mapping[str, Any], render: Callable[[Any], str] = str) -> str:
    return "RESULT " + " ".join(f"{key}={render(value)}" for key, value in result.items())


def print_result(result: Mapping[str, Any], render: Callable[[Any], str] = str) -> None:
    """The one machine-readable line every bench script ends with (bench/README.md collects them)."""
    print(result_line(result, render), flush=True)


def print_header(header: str) -> None:
    """A table's header line and the rule under it."""
    print(header)
    print("-" * len(header))


def cell(value: float | None, spec: str = ".1f") -> str:
    """A table cell: the number in `spec`, or "-" when it was not measured."""
    return "-" if value is None else format(value, spec)


def exit_status(failures: Iterable[str]) -> int:
    """Print each failure as a FAIL line on stderr; 1 if there was any, else 0."""
    failed = list(failures)
    for failure in failed:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failed else 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ----------------------------------------------------------------------------------------- timing


def machine_busy_s() -> float | None:
    """CPU seconds all processes on the machine have used since boot (Linux /proc/stat), steal included."""
    try:
        fields_ = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields_[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float, float | None]:
    """The value, wall s, this process's CPU s (all threads) and the machine's CPU s while fn ran."""
    busy, wall, cpu = machine_busy_s(), time.perf_counter(), time.process_time()
    value = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = machine_busy_s()
    return value, wall, cpu, None if busy is None or after is None else after - busy


def _proc_stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of one process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_ = text.rsplit(")", 1)[1].split()
    # after the command: state ppid ... utime (14th field of the file) stime (15th)
    return int(fields_[1]), (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s() -> float | None:
    """CPU seconds this process and all its live descendants (e.g. a stack's worker processes) have used."""
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    stats = {pid: stat for pid in pids if (stat := _proc_stat(pid)) is not None}
    children: dict[int, list[int]] = {}
    for pid_text, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(int(pid_text))
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        stat = stats.get(str(pid))
        if stat is not None:
            total += stat[1]
        todo.extend(children.get(pid, []))
    return total


# ------------------------------------------------------------------------------------------ input


def write_looped(source: Path, target: Path, frames: int) -> tuple[float, int, int]:
    """Re-encode `source` (looped as often as needed) into exactly `frames` mp4v frames at its own fps."""
    import cv2
    import numpy as np

    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise SystemExit(f"cannot open {source}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    images: list[np.ndarray] = []
    while len(images) < frames:
        ok, image = capture.read()
        if not ok:
            break
        images.append(image)
    capture.release()
    if not images:
        raise SystemExit(f"{source} holds no decodable frame")
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {target} with the mp4v codec")
    for i in range(frames):
        writer.write(images[i % len(images)])
    writer.release()
    return fps, width, height
