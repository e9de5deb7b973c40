"""./setup.sh's handling of what pip prints: the resolver's complaint about the packages mediapipe declares
and we leave out on purpose, and the notices about absent local index folders, each summed up in one line;
any other error shown as pip wrote it, with pip's exit status. pip is stood in for by a script that prints
what a real run printed (the ERROR block below is verbatim) and exits as told."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.paths import REPO

RESOLVER = """\
ERROR: pip's dependency resolver does not currently take into account all the packages that are installed. \
This behaviour is the source of the following dependency conflicts.
mediapipe 0.10.21 requires jax, which is not installed.
mediapipe 0.10.21 requires jaxlib, which is not installed.
mediapipe 0.10.21 requires opencv-contrib-python, which is not installed.
mediapipe 0.10.21 requires sentencepiece, which is not installed.
mediapipe 0.10.21 requires sounddevice>=0.4.4, which is not installed.
"""
LOCATION = "WARNING: Location 'file:///opt/pypi-more/simple/{}/' is ignored: it is neither a file nor a directory.\n"
TOOLS = ("awk", "bash", "cat", "dirname", "grep", "id", "mktemp", "rm")


def _run(tmp_path: Path, pip_stderr: str, status: int) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "project"
    (project / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / "setup.sh", project / "setup.sh")
    (tmp_path / "pip-stderr").write_text(pip_stderr)
    fake = project / ".venv" / "bin" / "python"
    fake.write_text(f"#!/bin/bash\ncat {tmp_path / 'pip-stderr'} >&2\nexit {status}\n")
    fake.chmod(0o755)
    # Only the tools the script uses: no apt-get, so its chromium step never installs anything here.
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    return subprocess.run(
        ["bash", str(project / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tools), "HOME": str(tmp_path)},
        cwd=tmp_path,
    )


def test_a_successful_install_sums_up_the_expected_notices_in_one_line_each(tmp_path: Path) -> None:
    done = _run(tmp_path, LOCATION.format("pip") + RESOLVER + LOCATION.format("mediapipe"), 0)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert not [line for line in lines if "ERROR" in line or "requires jax" in line or "Location" in line], lines
    [mediapipe] = [line for line in lines if "mediapipe lacks jax" in line]
    assert "on purpose" in mediapipe
    [ignored] = [line for line in lines if "local index folders" in line]
    assert "(8 notices not shown)" in ignored  # two per pip step, four steps
    assert lines[-1] == "handpipe setup: ready (.venv/bin/handpipe)"


def test_a_real_conflict_is_shown_whole(tmp_path: Path) -> None:
    conflict = RESOLVER + "pandas 2.3.3 requires numpy>=1.26.0, but you have numpy 1.21.0 which is incompatible.\n"
    done = _run(tmp_path, conflict, 0)
    assert done.returncode == 0
    assert done.stderr.count("ERROR: pip's dependency resolver") == 4, done.stderr
    assert "pandas 2.3.3 requires numpy>=1.26.0" in done.stderr and "requires jax" in done.stderr


def test_a_failing_install_keeps_its_error_and_its_status(tmp_path: Path) -> None:
    error = "ERROR: Could not find a version that satisfies the requirement mediapipe==0.10.21 (from versions: none)\n"
    done = _run(tmp_path, LOCATION.format("mediapipe") + error + RESOLVER, 1)
    assert done.returncode == 1
    assert error.strip() in done.stderr and "requires jax" in done.stderr  # a failed step hides nothing of pip's
    assert "ready" not in done.stderr
