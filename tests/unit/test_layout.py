"""The layout holds: chalicelib/shared/ (which the worker image copies whole) imports only itself, the
standard library and boto3/botocore, and no module of ours imports, even inside a function, a module that
imports it back."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "chalicelib" / "shared"
ALLOWED_THIRD_PARTY = {"boto3", "botocore"}
# (top-level package name, the folder it lives in)
PACKAGES = {
    "chalicelib": ROOT / "chalicelib",
    "handpipe": ROOT / "handpipe",
    "handpipe_worker": ROOT / "worker_image" / "handpipe_worker",
}


def module_name(path: Path) -> str:
    for package, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return path.stem  # app.py


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module `path` imports (at the top or inside a function), as absolute dotted names."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from chalicelib.shared import exports` names a module too
                yield node.lineno, f"{module}.{alias.name}"


def our_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in PACKAGES.values():
        files += sorted(folder.rglob("*.py"))
    return files


def test_shared_imports_only_shared_the_standard_library_and_boto() -> None:
    files = sorted(SHARED.rglob("*.py"))
    assert files, "chalicelib/shared/ has no modules"
    wrong = []
    for path in files:
        for line, module in imports(path):
            top = module.split(".")[0]
            if module == "chalicelib.shared" or module.startswith("chalicelib.shared."):
                continue
            if top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top == "__future__":
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == [], "chalicelib/shared/ must import only shared/, the standard library and boto3:\n" + "\n".join(
        wrong
    )


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in our_files()}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for _, module in imports(path):
            # the nearest of our modules the import names (`a.b.c` may be a name c in module a.b)
            while module and module not in files:
                module = module.rpartition(".")[0]
            if module and module != name and not name.startswith(module + "."):
                graph[name].add(module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


# handpipe/deploy/ imports CliError from handpipe/cli/, which imports deploy: issue 14's laptop part
# moves CliError to where both import it; drop this entry when that lands.
def test_no_import_cycles_in_our_code() -> None:
    graph = import_graph()
    assert {"app", "chalicelib.web.insight_routes", "chalicelib.shared.contracts"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_worker_image_copies_shared_whole() -> None:
    dockerfile = (ROOT / "worker_image" / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY chalicelib/shared/ ${LAMBDA_TASK_ROOT}/chalicelib/shared/" in dockerfile
    copied = [line for line in dockerfile.splitlines() if line.startswith("COPY chalicelib/")]
    assert all("chalicelib/shared/" in line or line.startswith("COPY chalicelib/__init__.py") for line in copied), (
        copied
    )


def test_the_state_machine_matches_the_active_and_finished_statuses() -> None:
    """Active jobs can still fail, finished ones move nowhere, and the strings are the stored ones."""
    from chalicelib.shared.states import (
        ACTIVE_JOB_STATUSES,
        FINISHED_JOB_STATUSES,
        JOB_TRANSITIONS,
        JobStatus,
        job_may_move,
    )

    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert all(job_may_move(status, JobStatus.FAILED) for status in ACTIVE_JOB_STATUSES)
    assert all(JOB_TRANSITIONS[status] == frozenset() for status in FINISHED_JOB_STATUSES)
    assert not job_may_move(JobStatus.SUCCEEDED, JobStatus.IN_PROGRESS)
    assert [str(s) for s in JobStatus] == ["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "CANCELLED"]
    assert all(job_may_move(status, JobStatus.CANCELLED) for status in ACTIVE_JOB_STATUSES)
    assert JobStatus.QUEUED == "QUEUED" and f"{JobStatus.FAILED}" == "FAILED"
