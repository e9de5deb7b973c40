"""What deploy talks to, injected so the tests can use moto and recording stand-ins: the boto3 clients of one
account and region, and a runner for the chalice command and synchronous Lambda invocations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import Problem


@dataclass(frozen=True)
class InvokeResult:
    function_error: str | None  # Lambda's FunctionError ("Unhandled") or None
    payload: Any


class Runner(Protocol):
    """What deploy runs outside boto3: the chalice command and a synchronous Lambda invocation."""

    def chalice(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None: ...

    def invoke(self, function_name: str, payload: Mapping[str, Any]) -> InvokeResult: ...


class ProcessRunner:
    """Runs chalice as a subprocess (its output goes to the terminal) and invokes with a boto3 Lambda client."""

    def __init__(self, lambda_client: Any, chalice_command: Sequence[str] | None = None) -> None:
        self._lambda = lambda_client
        self._command = list(chalice_command) if chalice_command else None

    def _chalice_command(self) -> list[str]:
        if self._command:
            return self._command
        # Prefer the chalice of this interpreter's environment (.venv), which has the project's pins.
        beside = Path(sys.executable).with_name("chalice")
        found = str(beside) if beside.exists() else shutil.which("chalice")
        if not found:
            raise Problem("the chalice command is not installed", "run ./setup.sh, which installs it into .venv")
        return [found]

    def chalice(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        command = [*self._chalice_command(), *args]
        completed = subprocess.run(command, cwd=cwd, env={**os.environ, **env}, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"`chalice {' '.join(args)}` exited with status {completed.returncode}")

    def invoke(self, function_name: str, payload: Mapping[str, Any]) -> InvokeResult:
        response = self._lambda.invoke(
            FunctionName=function_name,
            InvocationType="RequestResponse",
            Payload=json.dumps(payload).encode(),
        )
        raw = response["Payload"].read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        return InvokeResult(function_error=response.get("FunctionError"), payload=body)


@dataclass
class AwsClients:
    """The boto3 clients deploy and destroy use, for one account and region."""

    cloudformation: Any
    ecr: Any
    ec2: Any
    s3: Any
    sts: Any
    secretsmanager: Any
    apigateway: Any
    region: str
    profile: str | None = None  # passed on to the chalice subprocess, which must act as the same identity

    @classmethod
    def from_session(cls, session: Any, endpoint_url: str | None = None) -> AwsClients:
        region = session.region_name
        if not region:
            raise Problem("no AWS region is configured", "pass --region, or set AWS_REGION / AWS_DEFAULT_REGION")

        def client(name: str) -> Any:
            return session.client(name, endpoint_url=endpoint_url) if endpoint_url else session.client(name)

        return cls(
            cloudformation=client("cloudformation"),
            ecr=client("ecr"),
            ec2=client("ec2"),
            s3=client("s3"),
            sts=client("sts"),
            secretsmanager=client("secretsmanager"),
            apigateway=client("apigateway"),
            region=region,
            profile=session.profile_name if session.profile_name != "default" else None,
        )

    def environment(self) -> dict[str, str]:
        """What a subprocess (chalice) needs in its environment to work in the same account and region."""
        env = {"AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        if self.profile:
            env["AWS_PROFILE"] = self.profile
        return env
